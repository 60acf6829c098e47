"""WHOOP webhooks over real HTTP: the sandbox signs `{user_id, id, type, trace_id}` with the app's client secret;
each event's one record is fetched and stored as the pull stores it; `*.deleted` removes it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.db import connection as db

from connections.models import Connection, WebhookEvent, WebhookStatus
from readings.models import DailyStat, WearableReading
from sandbox import SandboxServer
from sandbox.webhooks import WebhookEmitter
from tests.conftest import FROZEN_NOW
from tests.direct_helpers import WHOOP_JOB, connect, run_direct_job

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def whoop(clean_sandbox: SandboxServer, direct_config: Any) -> Connection:
    with time_machine.travel(FROZEN_NOW, tick=False):
        return connect(clean_sandbox, direct_config, "whoop", 1)


@pytest.fixture
def emitter(live_server: Any, direct_config: Any) -> Iterator[WebhookEmitter]:
    sender = WebhookEmitter(
        whoop_url=f"{live_server.url}/webhooks/whoop",
        whoop_client_secret=direct_config.whoop_client_secret,
        retry_scale=0.0,
        seed=5,
    )
    yield sender
    sender.close()


def send_arrivals(sandbox: SandboxServer, emitter: WebhookEmitter, since: Any, until: Any) -> list[Any]:
    user = 1
    with time_machine.travel(until, tick=False):
        messages = [
            emitter.whoop_message(kind, sandbox.whoop.whoop_user_id(user), record_id)
            for kind, record_id in sandbox.whoop.arrivals(user, since, until)
        ]
        emitter.send_many(messages)
    return messages


def whoop_rows() -> list[tuple[Any, ...]]:
    return sorted(
        WearableReading.objects.values_list("metric", "source", "measured_at", "end_at", "value", "unit")
    )


def test_each_event_fetches_its_record_and_stores_what_the_pull_stores(
    clean_sandbox: SandboxServer, whoop: Connection, emitter: WebhookEmitter, direct_config: Any
) -> None:
    since = FROZEN_NOW - timedelta(days=3)
    messages = send_arrivals(clean_sandbox, emitter, since, FROZEN_NOW)
    assert messages and all(m.statuses == [202] for m in messages)
    assert {m.body.split(b'"type":"')[1].split(b'"')[0] for m in messages} >= {
        b"sleep.updated",
        b"recovery.updated",
    }
    assert set(WebhookEvent.objects.values_list("status", flat=True)) == {WebhookStatus.PROCESSED}
    pushed = whoop_rows()
    assert pushed
    # Cycles have no webhook: the pull brings them (and stores nothing the webhooks already stored).
    with time_machine.travel(FROZEN_NOW, tick=False):
        result = run_direct_job(WHOOP_JOB, direct_config, connection_ids=[whoop.pk])
    # The first pull also reaches back past the webhooks' three days: compared inside them.
    inside = since + timedelta(days=1)
    pulled_new = {r for r in whoop_rows() if r not in set(pushed) and r[2] >= inside}
    assert pulled_new and {metric for metric, *_ in pulled_new} <= {
        "strain",
        "cycle_calories",
        "cycle_heart_rate_avg",
        "cycle_heart_rate_max",
    }
    assert result.records_stored > len(pulled_new)


def test_a_deleted_sleep_removes_its_rows_its_recovery_and_their_days(
    clean_sandbox: SandboxServer, whoop: Connection, emitter: WebhookEmitter
) -> None:
    send_arrivals(clean_sandbox, emitter, FROZEN_NOW - timedelta(days=2), FROZEN_NOW)
    sleep_id = next(
        record["id"]
        for record in clean_sandbox.whoop.records(
            1, "activity/sleep", FROZEN_NOW - timedelta(days=2), FROZEN_NOW, FROZEN_NOW
        )
        if record["score_state"] == "SCORED"
    )
    before = WearableReading.objects.count()
    stats_before = DailyStat.objects.filter(metric="recovery_score").count()
    assert WearableReading.objects.filter(metric="recovery_score").exists()

    clean_sandbox.whoop.delete(sleep_id)
    with time_machine.travel(FROZEN_NOW, tick=False):
        emitter.send(emitter.whoop_message("sleep.deleted", clean_sandbox.whoop.whoop_user_id(1), sleep_id))

    removed = before - WearableReading.objects.count()
    assert removed > 0
    assert (
        DailyStat.objects.filter(metric="recovery_score").count() < stats_before
    )  # that night's day is gone
    event = WebhookEvent.objects.get(event_type="sleep.deleted")
    assert event.status == WebhookStatus.PROCESSED
    # The same deletion again (another trace_id) finds nothing left to remove.
    with time_machine.travel(FROZEN_NOW, tick=False):
        emitter.send(emitter.whoop_message("sleep.deleted", clean_sandbox.whoop.whoop_user_id(1), sleep_id))
    assert before - WearableReading.objects.count() == removed


@pytest.mark.parametrize("fault", ["bad_signature", "stale_timestamp", "tampered"])
def test_a_bad_whoop_signature_is_401_and_stores_nothing(
    clean_sandbox: SandboxServer, whoop: Connection, emitter: WebhookEmitter, fault: str
) -> None:
    emitter.fault(fault, count=-1)
    with time_machine.travel(FROZEN_NOW, tick=False):
        message = emitter.send(
            emitter.whoop_message("sleep.updated", clean_sandbox.whoop.whoop_user_id(1), "x")
        )
    assert set(message.statuses) == {401}
    assert not WebhookEvent.objects.exists()


def test_an_event_for_a_whoop_user_we_do_not_know_is_kept_unmatched(
    clean_sandbox: SandboxServer, whoop: Connection, emitter: WebhookEmitter
) -> None:
    with time_machine.travel(FROZEN_NOW, tick=False):
        emitter.send(emitter.whoop_message("workout.updated", 99_999, "3f0d5d0e-0000-4000-8000-000000000000"))
    event = WebhookEvent.objects.get()
    assert event.status == WebhookStatus.UNMATCHED and event.external_user_id == "99999"
    with db.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM patient_wearable_readings")
        assert cursor.fetchone()[0] == 0


def test_a_deletion_names_only_metrics_the_pull_stores() -> None:
    # A renamed metric left out of KIND_METRICS would survive its record's deletion.
    from connections.providers.whoop.client import KIND_METRICS, METRICS

    for kind, metrics in KIND_METRICS.items():
        assert metrics and set(metrics) <= set(METRICS), kind
    assert "recovery_resting_heart_rate" in KIND_METRICS["recovery"]
