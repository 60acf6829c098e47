"""The webhook inbox in the ops admin (status filter, scrubbed errors, Replay button and bulk replay with the
Force resync permission and an audit row, never the body) and its retention in the weekly cleanup."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from connections.inbox import MAX_ATTEMPTS, sweep
from connections.models import (
    Connection,
    Patient,
    Provider,
    SyncEvent,
    SyncEventKind,
    WebhookEvent,
    WebhookStatus,
)
from readings.models import WearableReading
from readings.retention import run_cleanup
from sandbox import SandboxServer
from tests.ops_fixtures import PASSWORD

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_time")]


def client_for(user: User) -> Client:
    client = Client()
    assert client.login(username=user.username, password=PASSWORD)
    return client


@pytest.fixture
def failed_event(clean_sandbox: SandboxServer, frozen_time: datetime) -> WebhookEvent:
    """A steps delivery whose processing failed (say, the database was restarted under it)."""
    user = clean_sandbox.junction.users[1]
    patient = Patient.objects.create(junction_user_id=user.user_id, time_zone=user.time_zone)
    connection = Connection.objects.create(patient=patient, provider=Provider.JUNCTION)
    event_type, data = next(
        (t, d)
        for t, d in clean_sandbox.junction.arrivals(
            user.user_id, frozen_time - timedelta(hours=3), frozen_time
        )
        if t == "daily.data.steps.created"
    )
    body = orjson.dumps({"event_type": event_type, "data": data, "user_id": user.user_id}).decode()
    return WebhookEvent.objects.create(
        provider=Provider.JUNCTION,
        delivery_id="msg_failed_1",
        event_type=event_type,
        external_user_id=user.user_id,
        body=body,
        status=WebhookStatus.FAILED,
        sent_at=frozen_time,
        received_at=frozen_time,
        attempts=MAX_ATTEMPTS,
        error="OperationalError: token=abc123 at https://x.test/?access_token=secret",
        connection=connection,
    )


def replay_url(event: WebhookEvent) -> str:
    return reverse("admin:connections_webhookevent_replay", args=[event.pk])


def test_the_inbox_lists_by_status_with_the_scrubbed_error_and_never_the_body(
    ops_user: User, failed_event: WebhookEvent
) -> None:
    client = client_for(ops_user)
    listing = client.get(reverse("admin:connections_webhookevent_changelist") + "?status__exact=failed")
    assert listing.status_code == 200
    page = listing.content.decode()
    assert "daily.data.steps.created" in page and "secret" not in page
    assert (
        client.get(reverse("admin:connections_webhookevent_changelist") + "?status__exact=processed")
        .content.decode()
        .count("daily.data.steps.created")
        == 0
    )
    detail = client.get(
        reverse("admin:connections_webhookevent_change", args=[failed_event.pk])
    ).content.decode()
    assert "Replay" in detail and "secret" not in detail
    assert '"value"' not in detail and "timestamp" not in detail  # nothing of the body


def test_support_sees_the_inbox_but_cannot_replay(support_user: User, failed_event: WebhookEvent) -> None:
    client = client_for(support_user)
    assert client.get(reverse("admin:connections_webhookevent_changelist")).status_code == 200
    assert (
        "Replay"
        not in client.get(
            reverse("admin:connections_webhookevent_change", args=[failed_event.pk])
        ).content.decode()
    )
    assert client.post(replay_url(failed_event), {"confirm": "yes"}).status_code == 403
    failed_event.refresh_from_db()
    assert failed_event.status == WebhookStatus.FAILED and not SyncEvent.objects.exists()


def test_replay_asks_then_processes_the_event_and_writes_the_audit_row(
    ops_user: User, failed_event: WebhookEvent, django_capture_on_commit_callbacks: Any
) -> None:
    client = client_for(ops_user)
    assert client.get(replay_url(failed_event)).status_code == 405
    confirm = client.post(replay_url(failed_event))
    assert confirm.status_code == 200 and "Yes, replay" in confirm.content.decode()
    assert not SyncEvent.objects.exists()
    # Out of automatic attempts: the sweep leaves it to ops.
    assert sweep(failed_event.received_at + timedelta(hours=1)) == {}

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(replay_url(failed_event), {"confirm": "yes"})

    assert response.status_code == 302
    failed_event.refresh_from_db()
    assert failed_event.status == WebhookStatus.PROCESSED and failed_event.error == ""
    assert failed_event.records_stored == WearableReading.objects.count() > 0
    audit = SyncEvent.objects.get()
    assert audit.kind == SyncEventKind.WEBHOOK_REPLAYED and audit.actor == ops_user.username
    assert audit.connection_id == failed_event.connection_id and str(failed_event.pk) in audit.note


def test_bulk_replay_of_selected_events(
    ops_user: User, failed_event: WebhookEvent, django_capture_on_commit_callbacks: Any
) -> None:
    changelist = reverse("admin:connections_webhookevent_changelist")
    data = {"action": "replay_selected", "_selected_action": [str(failed_event.pk)]}
    client = client_for(ops_user)
    assert "Yes, replay" in client.post(changelist, data).content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        client.post(changelist, {**data, "confirm": "yes"})
    failed_event.refresh_from_db()
    assert failed_event.status == WebhookStatus.PROCESSED
    assert SyncEvent.objects.filter(kind=SyncEventKind.WEBHOOK_REPLAYED).count() == 1


def test_the_weekly_cleanup_removes_processed_events_past_the_retention(
    failed_event: WebhookEvent, frozen_time: datetime, settings: Any
) -> None:
    settings.WEBHOOK_INBOX_RETENTION_DAYS = 14

    def copy(delivery: str, status: str, age: timedelta) -> WebhookEvent:
        return WebhookEvent.objects.create(
            provider=Provider.JUNCTION,
            delivery_id=delivery,
            event_type="daily.data.steps.created",
            body="{}",
            status=status,
            received_at=frozen_time - age,
        )

    old_done = copy("old-processed", WebhookStatus.PROCESSED, timedelta(days=15))
    old_ignored = copy("old-ignored", WebhookStatus.IGNORED, timedelta(days=15))
    recent = copy("recent-processed", WebhookStatus.PROCESSED, timedelta(days=13))
    old_unmatched = copy("old-unmatched", WebhookStatus.UNMATCHED, timedelta(days=15))
    WebhookEvent.objects.filter(pk=failed_event.pk).update(received_at=frozen_time - timedelta(days=30))

    dry = run_cleanup(dry_run=True)
    assert next(r for r in dry.removals if r.table == "webhook_inbox").rows == 2
    result = run_cleanup()
    assert next(r for r in result.removals if r.table == "webhook_inbox").rows == 2
    left = set(WebhookEvent.objects.values_list("pk", flat=True))
    assert left == {recent.pk, old_unmatched.pk, failed_event.pk}
    assert old_done.pk not in left and old_ignored.pk not in left


def test_a_malformed_junction_webhook_secret_stops_start_up_and_a_missing_one_warns(settings: Any) -> None:
    from connections.checks import webhook_settings_check
    from sandbox.webhooks import DEFAULT_JUNCTION_SECRET

    settings.DEBUG = False
    settings.JUNCTION_WEBHOOK_SECRET = "whsec_not base64!"
    assert [m.id for m in webhook_settings_check(None)] == ["connections.E301"]
    settings.JUNCTION_WEBHOOK_SECRET = ""
    assert [m.id for m in webhook_settings_check(None)] == ["connections.W301"]
    settings.JUNCTION_WEBHOOK_SECRET = DEFAULT_JUNCTION_SECRET
    assert webhook_settings_check(None) == []
