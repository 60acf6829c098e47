"""`manage.py webhook_demo`: data arriving by webhook, then the daily pull reconciling (storing nothing new).

The sandbox announces new Junction users (`provider.connection.created`), then sends, hour by hour, the signed
`daily.data.*` events of what their devices uploaded since the start of the pull's lookback; our receiver runs
on a loopback port in this process (processing inline, as one django-q2 worker would). Then the daily pull runs
over the same users: its fingerprints and natural keys find nothing new.
"""

from __future__ import annotations

import socketserver
import threading
from datetime import UTC, datetime, timedelta
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.core.wsgi import get_wsgi_application
from django.db.models import Sum
from django.test import override_settings
from django_q.conf import Conf

from connections.engine import run_sync_job
from connections.models import Connection, SyncTrigger, WebhookEvent, WebhookStatus
from connections.providers.junction.provider import JunctionProvider
from sandbox import SandboxServer
from sandbox.webhooks import DEFAULT_JUNCTION_SECRET, WebhookEmitter, WebhookFeed


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        pass


class Command(BaseCommand):
    help = "Show data arriving by webhook from the sandbox, then the daily pull storing nothing new."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--users", type=int, default=3, help="new sandbox Junction users announced by webhook"
        )
        parser.add_argument("--first-user", type=int, default=21, help="sandbox index of the first of them")
        parser.add_argument("--lookback-days", type=int, default=1)

    def handle(self, *args: Any, **options: Any) -> None:
        first, users, lookback = options["first_user"], options["users"], options["lookback_days"]
        with SandboxServer(port=0, users=first + users - 1) as sandbox:
            app = get_wsgi_application()
            server = make_server(
                "127.0.0.1", 0, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
            )
            threading.Thread(target=server.serve_forever, daemon=True).start()
            receiver = f"http://127.0.0.1:{server.server_port}/webhooks/junction"
            config = JunctionProvider.sandbox_config(sandbox, settings.JUNCTION_SYNC).replace(
                user_ids=(), lookback_days=lookback
            )
            user_ids = [u.user_id for u in sandbox.junction.users[first - 1 :]]
            emitter = WebhookEmitter(junction_url=receiver, retry_scale=0.001)
            sandbox.webhooks = emitter
            synchronous = Conf.SYNC
            try:
                # Each delivery's task runs in-process right after its inbox row commits, as a worker would.
                Conf.SYNC = True
                with override_settings(JUNCTION_WEBHOOK_SECRET=DEFAULT_JUNCTION_SECRET, JUNCTION_SYNC=config):
                    self._run(sandbox, emitter, user_ids, config, lookback)
            finally:
                Conf.SYNC = synchronous
                emitter.close()
                server.shutdown()

    def _run(
        self, sandbox: SandboxServer, emitter: WebhookEmitter, user_ids: list[str], config: Any, lookback: int
    ) -> None:
        out = self.stdout
        feed = WebhookFeed(sandbox, emitter, junction_users=user_ids, whoop_users=[])
        feed.connect_junction_users()
        connections = list(
            Connection.objects.filter(
                provider="junction", patient__junction_user_id__in=user_ids
            ).values_list("pk", flat=True)
        )
        out.write(f"webhooks: {len(connections)} Junction users connected by provider.connection.created")
        now = datetime.now(UTC)
        # From a day before the UTC day the pull's lookback reaches (a night's sleep summary becomes available
        # the evening before its calendar date in the Americas' east), so the pull has nothing left to find.
        start = datetime.combine((now - timedelta(days=lookback + 1)).date(), datetime.min.time(), tzinfo=UTC)
        step, sent = timedelta(hours=1), 0
        moment = start
        # Up to the real now, re-read each hour: what arrived while the earlier hours were delivered comes too.
        while (now := datetime.now(UTC)) - moment > timedelta(minutes=1):
            until = min(moment + step, now)
            sent += len(feed.tick(until, since=moment))
            moment = until
        sent += len(feed.tick(now, since=moment))
        events = WebhookEvent.objects.filter(external_user_id__in=user_ids)
        pushed = events.aggregate(n=Sum("records_stored"))["n"] or 0
        by_status = {s: events.filter(status=s).count() for s in WebhookStatus.values}
        out.write(
            f"webhooks: {sent} signed deliveries since {start:%Y-%m-%d %H:%M} UTC, inbox {by_status}; "
            f"{pushed} readings arrived by push"
        )
        result = run_sync_job(
            JunctionProvider.job,
            configs={"junction": config},
            trigger=SyncTrigger.COMMAND,
            connection_ids=connections,
        )
        out.write(
            f"reconciliation: the daily pull over the same users stored {result.records_stored} new readings "
            f"({result.users_synced}/{len(result.users)} users synced)"
        )
