from __future__ import annotations

from typing import Any

import orjson
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from connections.jobruns import run_summary
from connections.models import JobRun
from loopsync.jobs import JOB_OPTIONS, all_jobs


class Command(BaseCommand):
    help = "Run one scheduled job now, by name (see `run_job --help` for the names)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", choices=sorted(all_jobs()), help="the job's schedule name")
        parser.add_argument(
            "--sandbox", action="store_true", help="run against the in-process provider sandbox"
        )
        parser.add_argument("--sandbox-users", type=int, default=20)
        parser.add_argument("--json", action="store_true", help="print the job's summary as one JSON object")
        parser.add_argument(
            "--full", action="store_true", help="aggregate-wearable-data: rebuild every patient"
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="cleanup-wearable-data: report what would go, remove nothing",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        job_options = {key: True for key in ("full", "dry_run") if options[key]}
        for key in job_options:
            if key not in JOB_OPTIONS.get(options["name"], ()):
                raise CommandError(f"--{key.replace('_', '-')} does not apply to {options['name']}")
        sandbox = None
        if options["sandbox"]:
            from sandbox.server import SandboxServer

            sandbox = SandboxServer(port=0, users=options["sandbox_users"]).start()
        try:
            summary = all_jobs()[options["name"]](sandbox, **job_options)
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from None
        finally:
            if sandbox is not None:
                sandbox.stop()
        report_lines = summary.pop("report_lines", [])
        if options["json"]:
            self.stdout.write(orjson.dumps(summary, default=str).decode())
        else:
            if summary.get("job_run_id"):
                # The same line every job logs and prints (connections.jobruns.JobSummary), then the details.
                run = JobRun.objects.get(pk=summary["job_run_id"])
                self.stdout.write(run_summary(run).line())
            for key, value in summary.items():
                if key not in ("users", "removals"):
                    self.stdout.write(f"{key}: {value}")
            for line in report_lines:
                self.stdout.write(line)
        if summary.get("users_failed"):
            raise CommandError(f"{summary['users_failed']} users failed")
