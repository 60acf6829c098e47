"""Personas and helpers for the ops admin tests: `ops` and `support` staff in their migration-made groups."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import sentry_sdk
from django.contrib.auth.models import Group, User
from django.utils import timezone
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from connections.models import Connection, ConnectionStatus, Patient, Provider
from loopsync.sentry import init_sentry

PASSWORD = "correct-horse-battery-staple"


def make_staff(username: str, group: str) -> User:
    user = User.objects.create_user(username, password=PASSWORD, is_staff=True)
    user.groups.add(Group.objects.get(name=group))
    return user


@pytest.fixture
def ops_user(db: None) -> User:
    return make_staff("olivia-ops", "ops")


@pytest.fixture
def support_user(db: None) -> User:
    return make_staff("sam-support", "support")


def make_connection(
    n: int,
    *,
    provider: str = Provider.JUNCTION,
    status: str = ConnectionStatus.ACTIVE,
    last_sync_at: datetime | None = None,
    last_success_at: datetime | None = None,
    failure_streak: int = 0,
    last_error: str = "",
    junction_user_id: str | None = None,
    created_at: datetime | None = None,
) -> Connection:
    patient = Patient.objects.create(junction_user_id=junction_user_id or f"user-{n:06d}")
    connection = Connection.objects.create(
        patient=patient,
        provider=provider,
        status=status,
        last_sync_at=last_sync_at,
        # A fixture's cursor time is its last successful sync, unless the test says otherwise.
        last_success_at=last_success_at or last_sync_at,
        failure_streak=failure_streak,
        last_error=last_error,
    )
    Connection.objects.filter(pk=connection.pk).update(
        created_at=created_at or timezone.now() - timedelta(days=30)
    )
    connection.refresh_from_db()
    return connection


class CapturingTransport(Transport):
    """A Sentry transport that keeps envelopes in memory instead of sending them."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)

    def items(self) -> list[dict[str, Any]]:
        return [item.payload.json for env in self.envelopes for item in env.items if item.payload.json]

    def events(self) -> list[dict[str, Any]]:
        # Error and message events; not check-ins, nor the session aggregates a traced request sends.
        return [
            i
            for i in self.items()
            if i.get("type") in (None, "event") and "event_id" in i and "check_in_id" not in i
        ]

    def transactions(self) -> list[dict[str, Any]]:
        return [i for i in self.items() if i.get("type") == "transaction"]

    def check_ins(self) -> list[dict[str, Any]]:
        return [i for i in self.items() if i.get("type") == "check_in"]

    def serialized(self) -> str:
        return "\n".join(env.serialize().decode("utf-8", "replace") for env in self.envelopes)


def _capturing_sentry(traces_sample_rate: float) -> Iterator[CapturingTransport]:
    transport = CapturingTransport()
    init_sentry(
        "https://public@sentry.invalid/1",
        environment="test",
        transport=transport,
        traces_sample_rate=traces_sample_rate,
    )
    try:
        yield transport
    finally:
        sentry_sdk.flush()
        sentry_sdk.init(default_integrations=False, auto_enabling_integrations=False)  # no DSN: sends nothing


@pytest.fixture
def sentry_capture() -> Iterator[CapturingTransport]:
    yield from _capturing_sentry(0.0)


@pytest.fixture
def sentry_tracing() -> Iterator[CapturingTransport]:
    """As `sentry_capture`, with every request traced (performance transactions and their spans)."""
    yield from _capturing_sentry(1.0)
