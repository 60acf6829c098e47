from __future__ import annotations

from typing import Any

import orjson
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from loopsync.jobs import JOBS


class Command(BaseCommand):
    help = "Run one scheduled job now, by name: " + ", ".join(JOBS)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", choices=sorted(JOBS), help="the job's schedule name")
        parser.add_argument(
            "--sandbox", action="store_true", help="run against the in-process provider sandbox"
        )
        parser.add_argument("--sandbox-users", type=int, default=20)
        parser.add_argument("--json", action="store_true", help="print the job's summary as one JSON object")

    def handle(self, *args: Any, **options: Any) -> None:
        sandbox = None
        if options["sandbox"]:
            from sandbox.server import SandboxServer

            sandbox = SandboxServer(port=0, users=options["sandbox_users"]).start()
        try:
            summary = JOBS[options["name"]](sandbox)
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from None
        finally:
            if sandbox is not None:
                sandbox.stop()
        if options["json"]:
            self.stdout.write(orjson.dumps(summary, default=str).decode())
        else:
            for key, value in summary.items():
                if key != "users":
                    self.stdout.write(f"{key}: {value}")
        if summary.get("users_failed"):
            raise CommandError(f"{summary['users_failed']} users failed")
