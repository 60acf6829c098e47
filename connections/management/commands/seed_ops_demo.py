"""`manage.py seed_ops_demo`: the demo superuser, and one connection in each state the admin shows (failing,
stale, revoked, inactive), so `make look` shows every state. Idempotent: run again, it resets the same rows.
With SANDBOX_URL (`make look`) it also connects the demo's WHOOP/Dexcom/Libre sandbox accounts again to that
sandbox, which does not know the tokens `make demo`'s sandbox issued."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.utils import timezone

from connections.models import (
    Connection,
    ConnectionStatus,
    Patient,
    Provider,
    SyncEvent,
    SyncEventKind,
    SyncStatus,
    SyncTrigger,
)
from connections.tokens import MUST_RECONNECT

DEMO_USERNAME = "admin"
DEMO_PASSWORD = "loopsync-demo"  # noqa: S105 - a local demo login, printed by design; refused outside DEBUG

# (patient's external id, provider, state). Direct providers without credentials: the scheduled jobs select
# only connections with credentials and `make demo` only the sandbox's accounts, so these never fail a demo
# run (a Junction one would: that job syncs every active Junction connection), and a Force resync of the failing
# one fails again, as it would for a patient whose grant is gone.
STATES = (
    ("demo-failing-7c1e", Provider.DEXCOM, "failing"),
    ("demo-stale-3b9a", Provider.WHOOP, "stale"),
    ("demo-revoked-5d2f", Provider.WHOOP, "revoked"),
    ("demo-inactive-8e4c", Provider.LIBRE, "inactive"),
)


class Command(BaseCommand):
    help = (
        "Create the demo superuser and one connection per health state (failing, stale, revoked, inactive)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--base-url", default="http://127.0.0.1:8000", help="printed with the login")

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.SANDBOX_ENABLED:
            raise CommandError("seed_ops_demo is for local demos: set DEBUG=true (or SANDBOX_ENABLED=true)")
        password = os.environ.get("DEMO_ADMIN_PASSWORD") or DEMO_PASSWORD
        now = timezone.now()
        with transaction.atomic():
            user, _ = User.objects.get_or_create(username=DEMO_USERNAME)
            user.is_staff = user.is_superuser = user.is_active = True
            user.set_password(password)
            user.save()
            for external_id, provider, state in STATES:
                self._seed(external_id, provider, state, now)
        self.stdout.write(f"demo states: {', '.join(state for _, _, state in STATES)} (one connection each)")
        if settings.SANDBOX_URL:
            from connections.sandbox_setup import SandboxAt, reconnect_known_sandbox_users

            count = reconnect_known_sandbox_users(SandboxAt(settings.SANDBOX_URL), settings.DIRECT_PROVIDERS)
            self.stdout.write(f"sandbox connections reconnected to {settings.SANDBOX_URL}: {count}")
        self.stdout.write(
            f"admin: {options['base_url'].rstrip('/')}/admin/  user {DEMO_USERNAME}  password {password}"
        )

    def _seed(self, external_id: str, provider: str, state: str, now: Any) -> None:
        patient, _ = Patient.objects.get_or_create(junction_user_id=external_id)
        values: dict[str, Any] = {
            "status": ConnectionStatus.ACTIVE,
            "status_reason": "",
            "failure_streak": 0,
            "last_error": "",
            "last_success_at": now - timedelta(hours=2),
            "last_attempt_at": now - timedelta(hours=2),
            "last_sync_at": now - timedelta(hours=2),
            "latest_reading_at": now - timedelta(hours=3),
        }
        error = ""
        if state == "failing":
            error = "attempt 3: dexcom: GET /v3/users/self/egvs answered 503"
            values.update(failure_streak=3, last_error=error, last_success_at=now - timedelta(days=2))
        elif state == "stale":
            values.update(last_success_at=now - timedelta(days=3), last_attempt_at=now - timedelta(days=3))
        elif state == "revoked":
            reason = f"whoop: POST /oauth/oauth2/token answered 400 invalid_grant; {MUST_RECONNECT}"
            values.update(status=ConnectionStatus.INACTIVE, status_reason=reason, last_error=reason)
            error = reason
        elif state == "inactive":
            values.update(status=ConnectionStatus.INACTIVE, status_reason="patient left the study")
        connection, _ = Connection.objects.update_or_create(
            patient=patient, provider=provider, defaults=values
        )
        # The audit trail the state would have left, written once.
        if error and not SyncEvent.objects.filter(connection=connection, kind=SyncEventKind.SYNC).exists():
            SyncEvent.objects.create(
                connection=connection,
                patient=patient,
                provider=provider,
                trigger=SyncTrigger.SCHEDULE,
                status=SyncStatus.FAILED,
                started_at=now - timedelta(minutes=5),
                finished_at=now - timedelta(minutes=4),
                attempts=3,
                error=error,
            )
        if (
            state == "inactive"
            and not SyncEvent.objects.filter(connection=connection, kind=SyncEventKind.DEACTIVATED).exists()
        ):
            SyncEvent.objects.create(
                connection=connection,
                patient=patient,
                provider=provider,
                trigger=SyncTrigger.ADMIN,
                status=SyncStatus.SUCCESS,
                kind=SyncEventKind.DEACTIVATED,
                started_at=now - timedelta(days=1),
                finished_at=now - timedelta(days=1),
                actor=DEMO_USERNAME,
                note="patient left the study",
            )
