from __future__ import annotations

import sys
from typing import Any

import orjson
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from connections.config import JunctionSyncConfig
from connections.engine import JobResult, UserSyncSummary, run_sync_job
from connections.models import SyncTrigger
from connections.providers.junction.provider import JunctionProvider
from loopsync.env import parse_int, split_list


class Command(BaseCommand):
    help = "Run the Junction wearable sync (wearable-sync-daily) now."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--sandbox",
            action="store_true",
            help="start the provider sandbox in-process, register its users and sync from it",
        )
        parser.add_argument(
            "--sandbox-users", type=int, default=20, help="users the sandbox serves (default 20)"
        )
        parser.add_argument("--seed", type=int, default=42, help="sandbox data seed (default 42)")
        parser.add_argument(
            "--users",
            default=None,
            help="comma-separated Junction user ids (overrides JUNCTION_SYNC_USER_IDS)",
        )
        parser.add_argument(
            "--lookback-days", default=None, help="days to fetch (overrides JUNCTION_SYNC_LOOKBACK_DAYS)"
        )
        parser.add_argument("--concurrency", type=int, default=1, help="users synced in parallel (default 1)")
        parser.add_argument("--force", action="store_true", help="parse and store even unchanged days")
        parser.add_argument(
            "--json", action="store_true", help="print the result as one JSON object on stdout"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        config: JunctionSyncConfig = settings.JUNCTION_SYNC
        try:
            if options["users"] is not None:
                config = config.replace(user_ids=tuple(split_list(options["users"])))
            if options["lookback_days"] is not None:
                config = config.replace(
                    lookback_days=parse_int("--lookback-days", options["lookback_days"], minimum=1)
                )
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from None

        sandbox = None
        if options["sandbox"]:
            from sandbox.server import SandboxServer

            sandbox = SandboxServer(port=0, users=options["sandbox_users"], seed=options["seed"]).start()
            config = JunctionProvider.sandbox_config(sandbox, config)
            if not options["json"]:
                self.stdout.write(
                    f"sandbox serving {len(sandbox.junction.user_ids)} users at {sandbox.junction_url}"
                )
        show_progress = not options["json"] and sys.stderr.isatty()
        try:
            result = run_sync_job(
                JunctionProvider.job,
                configs={JunctionProvider.key: config},
                trigger=SyncTrigger.COMMAND,
                concurrency=max(1, options["concurrency"]),
                force=options["force"],
                progress=self._progress if show_progress else None,
            )
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from None
        finally:
            if sandbox is not None:
                sandbox.stop()
        if options["json"]:
            self.stdout.write(orjson.dumps(result.as_dict()).decode())
        else:
            self._print_summary(result)
        if not result.ok:
            raise CommandError(f"{result.users_failed} of {len(result.users)} users failed")

    def _progress(self, done: int, total: int, summary: UserSyncSummary) -> None:
        sys.stderr.write(
            f"\r[{done}/{total}] {summary.user_id[:12]:<12} {summary.status:<8} "
            f"{summary.records_stored:>8} stored"
        )
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def _print_summary(self, result: JobResult) -> None:
        from connections.jobruns import run_summary
        from connections.models import JobRun

        data = result.as_dict()
        # The same line every job logs and prints (connections.jobruns.JobSummary), then the per-user table.
        self.stdout.write("\n" + run_summary(JobRun.objects.get(pk=result.job_run_id)).line())
        self.stdout.write(
            f"{'user':<38} {'status':<8} {'fetched':>9} {'stored':>9} {'skipped':>8} {'tries':>5}"
        )
        for user in result.users:
            self.stdout.write(
                f"{user.user_id:<38} {user.status:<8} {user.records_fetched:>9} "
                f"{user.records_stored:>9} {user.records_skipped:>8} {user.attempts:>5}"
            )
        self.stdout.write(
            f"records: {data['records_fetched']} fetched, {data['records_stored']} stored, "
            f"{data['records_skipped']} skipped"
        )
        if result.errors:
            self.stdout.write(self.style.WARNING(f"errors ({len(result.errors)}):"))
            for error in result.errors:
                self.stdout.write(f"  {error}")
        else:
            self.stdout.write(self.style.SUCCESS("errors: none"))
