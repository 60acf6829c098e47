"""Junction webhooks over real HTTP: the sandbox signs and POSTs deliveries to the receiver on a live server.

Verified deliveries land in the inbox and are processed through the engine's store; bad, stale or tampered
ones are 401 and leave nothing; redeliveries are no-ops; any order and any duplication give the same tables.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.db import connection as db

from connections.engine import run_sync_job
from connections.inbox import process_event, sweep
from connections.models import Connection, Patient, Provider, WebhookEvent, WebhookStatus
from readings.models import DailyStat, GlucoseReading, WearableReading
from sandbox import SandboxServer
from sandbox.webhooks import DEFAULT_JUNCTION_SECRET, WebhookEmitter
from tests.conftest import FROZEN_NOW

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def receiver(live_server: Any, settings: Any, junction_config: Any) -> str:
    settings.JUNCTION_WEBHOOK_SECRET = DEFAULT_JUNCTION_SECRET
    settings.JUNCTION_SYNC = junction_config.replace(user_ids=())
    return f"{live_server.url}/webhooks/junction"


@pytest.fixture
def emitter(receiver: str) -> Iterator[WebhookEmitter]:
    sender = WebhookEmitter(junction_url=receiver, retry_scale=0.0, seed=3)
    yield sender
    sender.close()


def junction_patient(sandbox: SandboxServer, index: int = 1) -> Patient:
    user = sandbox.junction.users[index]
    patient = Patient.objects.create(junction_user_id=user.user_id, time_zone=user.time_zone)
    Connection.objects.create(patient=patient, provider=Provider.JUNCTION)
    return patient


def deliveries(
    sandbox: SandboxServer, emitter: WebhookEmitter, user_id: str, since: datetime, until: datetime
) -> list[Any]:
    return [
        emitter.junction_message(event_type, user_id, data)
        for event_type, data in sandbox.junction.arrivals(user_id, since, until)
    ]


def tables() -> dict[str, list[tuple[Any, ...]]]:
    """Every stored reading and daily statistic, as comparable rows."""
    return {
        "readings": sorted(
            WearableReading.objects.values_list(
                "patient_id", "metric", "source", "source_type", "measured_at", "end_at", "value", "unit"
            )
        ),
        "glucose": sorted(
            GlucoseReading.objects.values_list("patient_id", "source", "measured_at", "value_mg_dl")
        ),
        "daily": sorted(
            DailyStat.objects.values_list("patient_id", "metric", "day", "avg", "min", "max", "count")
        ),
    }


def wipe_readings() -> None:
    with db.cursor() as cursor:
        cursor.execute(
            "TRUNCATE patient_wearable_readings, patient_glucose_readings, patient_wearable_daily_stats, "
            "patient_wearable_daily_stats_dirty, webhook_inbox, provider_records"
        )


def day_of_traffic(
    sandbox: SandboxServer,
    emitter: WebhookEmitter,
    user_id: str,
    start: datetime,
    steps: int,
    every: timedelta,
) -> None:
    """Junction's ~15-minute polls: at each step, what arrived since the last one is delivered."""
    for n in range(steps):
        since, until = start + n * every, start + (n + 1) * every
        with time_machine.travel(until, tick=False):
            emitter.send_many(deliveries(sandbox, emitter, user_id, since, until))


def test_signed_deliveries_are_stored_through_the_inbox(
    clean_sandbox: SandboxServer, emitter: WebhookEmitter
) -> None:
    patient = junction_patient(clean_sandbox, 1)
    since = FROZEN_NOW - timedelta(hours=6)
    with time_machine.travel(FROZEN_NOW, tick=False):
        messages = deliveries(clean_sandbox, emitter, patient.junction_user_id, since, FROZEN_NOW)
        emitter.send_many(messages)

    assert messages and all(m.statuses == [202] for m in messages)
    events = WebhookEvent.objects.all()
    assert events.count() == len(messages)
    handled = events.exclude(status=WebhookStatus.IGNORED)
    assert handled.exists() and set(handled.values_list("status", flat=True)) == {WebhookStatus.PROCESSED}
    # calories_active is not a resource we store: acknowledged and recorded, not an error.
    assert set(events.filter(status=WebhookStatus.IGNORED).values_list("event_type", flat=True)) <= {
        "daily.data.calories_active.created"
    }
    stored = WearableReading.objects.filter(patient=patient).count()
    assert stored > 0 and stored == sum(
        e.records_stored for e in events if e.status == WebhookStatus.PROCESSED
    )
    heart = clean_sandbox.junction.samples(
        patient.junction_user_id, "heartrate", since - timedelta(days=1), FROZEN_NOW, now=FROZEN_NOW
    )
    new_heart = [s for s in heart if datetime.fromisoformat(s["timestamp"]) > since]
    assert WearableReading.objects.filter(patient=patient, metric="heart_rate").count() >= len(new_heart) > 0
    # The body is PHI: encrypted at rest.
    with db.cursor() as cursor:
        cursor.execute("SELECT body FROM webhook_inbox LIMIT 1")
        assert cursor.fetchone()[0].startswith("fernet:")


@pytest.mark.parametrize("fault", ["bad_signature", "stale_timestamp", "tampered"])
def test_bad_stale_or_tampered_deliveries_are_401_and_store_nothing(
    clean_sandbox: SandboxServer, emitter: WebhookEmitter, fault: str
) -> None:
    patient = junction_patient(clean_sandbox, 1)
    emitter.fault(fault, count=-1)
    with time_machine.travel(FROZEN_NOW, tick=False):
        messages = deliveries(
            clean_sandbox, emitter, patient.junction_user_id, FROZEN_NOW - timedelta(hours=1), FROZEN_NOW
        )
        emitter.send(messages[0])

    assert set(messages[0].statuses) == {401}
    assert len(messages[0].statuses) == 9  # first attempt and Svix's eight retries
    assert not WebhookEvent.objects.exists() and not WearableReading.objects.exists()


def test_a_refusal_is_a_problem_body_naming_the_rule(receiver: str) -> None:
    import httpx

    response = httpx.post(receiver, content=b"{}", headers={"svix-id": "msg_1"})
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    error = response.json()
    assert error["status"] == 401 and error["type"] == "/api/problems/invalid_signature"
    assert error["code"] == "invalid_signature" and "header" in error["detail"].lower()
    assert httpx.post(receiver.replace("junction", "dexcom"), content=b"{}").status_code == 404


def test_a_redelivered_svix_id_is_a_no_op(clean_sandbox: SandboxServer, emitter: WebhookEmitter) -> None:
    patient = junction_patient(clean_sandbox, 1)
    emitter.fault("duplicate", count=-1)
    with time_machine.travel(FROZEN_NOW, tick=False):
        messages = deliveries(
            clean_sandbox, emitter, patient.junction_user_id, FROZEN_NOW - timedelta(hours=2), FROZEN_NOW
        )
        emitter.send_many(messages)

    assert all(m.statuses == [202, 200] for m in messages)  # the second: acknowledged, nothing done
    assert WebhookEvent.objects.count() == len(messages)


def test_a_retried_delivery_after_our_5xx_is_stored_once(
    clean_sandbox: SandboxServer, receiver: str, settings: Any
) -> None:
    """Svix retries a delivery our receiver failed: the retry is stored, once."""
    patient = junction_patient(clean_sandbox, 1)
    sender = WebhookEmitter(junction_url=receiver, retry_scale=0.0)
    sender.http.close()
    sender.http = _FlakyReceiver(receiver, failures=2).client
    with time_machine.travel(FROZEN_NOW, tick=False):
        message = deliveries(
            clean_sandbox, sender, patient.junction_user_id, FROZEN_NOW - timedelta(hours=1), FROZEN_NOW
        )[0]
        sender.send(message)
    assert message.statuses == [503, 503, 202]
    assert WebhookEvent.objects.count() == 1


class _FlakyReceiver:
    """An httpx client whose first `failures` POSTs are answered 503 by a transport in front of the receiver."""

    def __init__(self, url: str, failures: int) -> None:
        import httpx

        self.left = failures
        real = httpx.HTTPTransport()

        def handler(request: httpx.Request) -> httpx.Response:
            if self.left > 0:
                self.left -= 1
                return httpx.Response(503)
            request.url = httpx.URL(url)
            return real.handle_request(request)

        self.client = httpx.Client(transport=httpx.MockTransport(handler))


def test_shuffled_and_duplicated_deliveries_give_the_same_tables_as_ordered(
    clean_sandbox: SandboxServer, receiver: str
) -> None:
    patient = junction_patient(clean_sandbox, 1)
    user_id = patient.junction_user_id
    start, every = FROZEN_NOW - timedelta(hours=4), timedelta(minutes=30)

    ordered = WebhookEmitter(junction_url=receiver, retry_scale=0.0, seed=1)
    day_of_traffic(clean_sandbox, ordered, user_id, start, 8, every)
    expected = tables()
    assert expected["readings"] and expected["daily"]
    # Activity grows all day: its summary was delivered as created, then updated.
    assert WebhookEvent.objects.filter(event_type="daily.data.activity.updated").exists()

    wipe_readings()
    # All the steps' deliveries, shuffled as one batch (updates before creates, older after newer), each twice.
    chaotic = WebhookEmitter(junction_url=receiver, retry_scale=0.0, seed=2)
    messages = []
    for n in range(8):
        since, until = start + n * every, start + (n + 1) * every
        with time_machine.travel(until, tick=False):
            messages += deliveries(clean_sandbox, chaotic, user_id, since, until)
    chaotic.fault("out_of_order")
    chaotic.fault("duplicate", count=-1)
    with time_machine.travel(start + 8 * every, tick=False):
        chaotic.send_many(messages)

    assert [m.message_id for m in chaotic.sent] != [m.message_id for m in messages]  # really shuffled
    assert tables() == expected


def test_after_a_day_of_webhook_traffic_the_daily_reconciliation_stores_nothing(
    clean_sandbox: SandboxServer, emitter: WebhookEmitter, junction_config: Any
) -> None:
    patient = junction_patient(clean_sandbox, 1)
    end = FROZEN_NOW
    # The pull's lookback (junction_config: 2 days back, from the start of that UTC day) is all webhook-fed.
    start = end - timedelta(days=3)
    day_of_traffic(clean_sandbox, emitter, patient.junction_user_id, start, 24, timedelta(hours=3))
    pushed = WearableReading.objects.filter(patient=patient).count()
    assert pushed > 0

    with time_machine.travel(end, tick=False):
        result = run_sync_job(
            "wearable-sync-daily",
            configs={"junction": junction_config.replace(user_ids=())},
            connection_ids=[patient.connections.get().pk],
        )

    assert result.users_synced == 1
    assert result.records_stored == 0, result.as_dict()
    assert WearableReading.objects.filter(patient=patient).count() == pushed


def test_events_for_an_unknown_user_are_kept_then_processed_when_the_connection_is_created(
    clean_sandbox: SandboxServer, emitter: WebhookEmitter
) -> None:
    user = clean_sandbox.junction.users[2]
    with time_machine.travel(FROZEN_NOW, tick=False):
        messages = deliveries(
            clean_sandbox, emitter, user.user_id, FROZEN_NOW - timedelta(hours=2), FROZEN_NOW
        )
        emitter.send_many(messages)
        assert WebhookEvent.objects.filter(status=WebhookStatus.UNMATCHED).exists()
        assert not WearableReading.objects.exists()

        created = emitter.junction_message(
            "provider.connection.created",
            user.user_id,
            {
                "user_id": user.user_id,
                "provider": {"name": "Oura", "slug": user.provider},
                "resource_availability": {},
            },
        )
        emitter.send(created)

    connection = Connection.objects.get(patient__junction_user_id=user.user_id, provider=Provider.JUNCTION)
    assert connection.status == "active"
    assert connection.patient.time_zone == user.time_zone != "UTC"  # from Junction: days are the patient's
    assert not WebhookEvent.objects.filter(status=WebhookStatus.UNMATCHED).exists()
    assert WearableReading.objects.filter(patient=connection.patient).count() > 0


def test_a_connection_error_event_marks_the_connection(
    clean_sandbox: SandboxServer, emitter: WebhookEmitter
) -> None:
    patient = junction_patient(clean_sandbox, 1)
    with time_machine.travel(FROZEN_NOW, tick=False):
        emitter.send(
            emitter.junction_message(
                "provider.connection.error",
                patient.junction_user_id,
                {
                    "user_id": patient.junction_user_id,
                    "provider": "oura",
                    "error_type": "token_refresh_failed",
                    "message": "the patient's own words",
                    "error_details": {},
                },
            )
        )
    connection = patient.connections.get()
    assert "oura" in connection.last_error and "token_refresh_failed" in connection.last_error
    assert "patient" not in connection.last_error


def test_a_completed_backfill_fetches_its_window_over_rest(
    clean_sandbox: SandboxServer, emitter: WebhookEmitter
) -> None:
    patient = junction_patient(clean_sandbox, 1)
    with time_machine.travel(FROZEN_NOW, tick=False):
        emitter.send(
            emitter.junction_message(
                "historical.data.sleep.created",
                patient.junction_user_id,
                {
                    "user_id": patient.junction_user_id,
                    "start_date": (FROZEN_NOW - timedelta(days=2)).isoformat(),
                    "end_date": FROZEN_NOW.isoformat(),
                    "is_final": True,
                    "provider": "oura",
                },
            )
        )
    event = WebhookEvent.objects.get()
    assert event.status == WebhookStatus.PROCESSED and event.records_stored > 0
    assert clean_sandbox.requests.snapshot(provider="junction", path_contains="/v2/summary/sleep/")
    assert WearableReading.objects.filter(patient=patient).count() == event.records_stored


def test_a_crash_between_the_inbox_write_and_processing_loses_nothing(
    clean_sandbox: SandboxServer, emitter: WebhookEmitter, settings: Any, monkeypatch: Any
) -> None:
    """The task never ran (its worker died): the row stays `received`, and the sweep processes it."""
    patient = junction_patient(clean_sandbox, 1)
    from connections import inbox

    lost: list[int] = []
    monkeypatch.setattr(inbox, "enqueue", lost.append)  # the queued task is lost with the worker
    with time_machine.travel(FROZEN_NOW, tick=False):
        messages = deliveries(
            clean_sandbox, emitter, patient.junction_user_id, FROZEN_NOW - timedelta(hours=2), FROZEN_NOW
        )
        emitter.send_many(messages)
    monkeypatch.undo()
    assert lost and WebhookEvent.objects.filter(status=WebhookStatus.RECEIVED).count() == len(lost)
    assert not WearableReading.objects.exists()

    with time_machine.travel(
        FROZEN_NOW + timedelta(seconds=settings.WEBHOOK_PENDING_SECONDS - 1), tick=False
    ):
        assert sweep() == {}  # not yet due: its task may still be on the way
    with time_machine.travel(
        FROZEN_NOW + timedelta(seconds=settings.WEBHOOK_PENDING_SECONDS + 1), tick=False
    ):
        counts = sweep()
    assert counts == {WebhookStatus.PROCESSED: len(lost)}
    assert WearableReading.objects.filter(patient=patient).count() > 0
    assert process_event(lost[0]) is None  # done: a late task does nothing


def test_the_sandbox_control_api_switches_the_webhook_senders_faults(
    clean_sandbox: SandboxServer, emitter: WebhookEmitter
) -> None:
    import httpx

    control = f"{clean_sandbox.base_url}/_sandbox/webhooks/faults"
    clean_sandbox.webhooks = None
    assert httpx.post(control, json={"fault": "duplicate"}).status_code == 409
    clean_sandbox.webhooks = emitter
    try:
        assert httpx.post(control, json={"fault": "sideways"}).status_code == 400
        answer = httpx.post(control, json={"fault": "bad_signature", "count": 1})
        assert answer.status_code == 201 and answer.json()["faults"] == {"bad_signature": 1}
        patient = junction_patient(clean_sandbox, 1)
        with time_machine.travel(FROZEN_NOW, tick=False):
            message = deliveries(
                clean_sandbox, emitter, patient.junction_user_id, FROZEN_NOW - timedelta(hours=1), FROZEN_NOW
            )[0]
            emitter.send(message)
        assert message.statuses == [401, 202]  # refused, then Svix's immediate retry is accepted
    finally:
        clean_sandbox.webhooks = None
