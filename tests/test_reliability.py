"""Faults of the real world, each over real HTTP against the sandbox (issue 18): what the engine does with
them. The README's reliability table lists each with its test."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
import time_machine
from django.test import override_settings

from connections.config import DirectProvidersConfig, JunctionSyncConfig
from connections.models import (
    Connection,
    ConnectionStatus,
    Provider,
    ProviderCredential,
    SyncEvent,
    SyncStatus,
)
from sandbox import SandboxServer
from tests.direct_helpers import (
    CGM_JOB,
    connect,
    expire_stored_token,
    run_direct_job,
    run_wearable_sync_job,
    sync,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_time")]


@pytest.mark.parametrize("retry_after", ["7200", "http-date-29h"])
def test_a_long_retry_after_skips_the_connection_for_this_run_without_blocking_the_worker(
    retry_after: str,
    direct_config: DirectProvidersConfig,
    clean_sandbox: SandboxServer,
    frozen_time: datetime,
) -> None:
    connection = connect(clean_sandbox, direct_config, Provider.DEXCOM, 1)
    header = (
        format_datetime(frozen_time + timedelta(hours=29), usegmt=True)
        if retry_after == "http-date-29h"
        else retry_after
    )
    clean_sandbox.faults.add(
        {"provider": "dexcom", "path_contains": "/egvs", "status": 429, "retry_after": header, "count": -1}
    )
    slept: list[float] = []

    started = time.monotonic()
    summary = sync(connection, direct_config, sleep=slept.append)

    assert time.monotonic() - started < 10
    assert summary.status == "failed" and summary.attempts == 1 and slept == []
    assert "retry after" in summary.errors[-1]
    event = SyncEvent.objects.get(connection=connection)
    assert event.status == SyncStatus.FAILED and "rate limited" in event.error
    connection.refresh_from_db()
    assert connection.status == "active" and connection.failure_streak == 1


def test_a_short_retry_after_is_still_waited_out(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:
    connection = connect(clean_sandbox, direct_config, Provider.DEXCOM, 2)
    clean_sandbox.faults.add(
        {"provider": "dexcom", "path_contains": "/egvs", "status": 429, "retry_after": 1, "count": 5}
    )

    summary = sync(connection, direct_config)

    assert summary.status == "success", summary.errors


def test_one_connection_held_off_for_hours_does_not_hold_up_the_rest_of_the_job(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:
    held = connect(clean_sandbox, direct_config, Provider.DEXCOM, 3)
    free = connect(clean_sandbox, direct_config, Provider.LIBRE, 3)
    clean_sandbox.faults.add(
        {"provider": "dexcom", "path_contains": "/egvs", "status": 429, "retry_after": 7200, "count": -1}
    )
    slept: list[float] = []

    result = run_direct_job(CGM_JOB, direct_config, connection_ids=[held.pk, free.pk], sleep=slept.append)

    by_id = {u.user_id: u for u in result.users}
    assert by_id[str(held.pk)].status == "failed" and by_id[str(free.pk)].status == "success"
    assert all(delay < 120 for delay in slept)
    assert Connection.objects.get(pk=held.pk).status == "active"


def _left_running(connection: Connection, started: datetime) -> SyncEvent:
    """What a worker killed mid-sync leaves: an event opened and never finished."""
    return SyncEvent.objects.create(
        connection=connection,
        patient_id=connection.patient_id,
        provider=connection.provider,
        trigger="schedule",
        started_at=started,
    )


def test_an_event_a_killed_worker_left_running_is_closed_as_interrupted_by_the_next_sync(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer, frozen_time: datetime
) -> None:
    connection = connect(clean_sandbox, direct_config, Provider.DEXCOM, 4)
    orphan = _left_running(connection, frozen_time - timedelta(hours=2))
    recent = _left_running(connection, frozen_time - timedelta(minutes=5))  # may still be syncing elsewhere

    assert sync(connection, direct_config).status == "success"

    orphan.refresh_from_db()
    recent.refresh_from_db()
    assert orphan.status == SyncStatus.FAILED and orphan.error.startswith("interrupted")
    assert orphan.finished_at == frozen_time
    assert recent.status == SyncStatus.RUNNING


def test_a_job_run_sweeps_interrupted_events_of_every_connection_and_health_shows_them(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer, frozen_time: datetime
) -> None:
    from connections.health import Health, health_of

    whoop = connect(clean_sandbox, direct_config, Provider.WHOOP, 4)
    Connection.objects.filter(pk=whoop.pk).update(last_success_at=frozen_time - timedelta(hours=1))
    orphan = _left_running(whoop, frozen_time - timedelta(hours=3))

    run_direct_job(CGM_JOB, direct_config)  # another job: the sweep is not limited to its own connections

    orphan.refresh_from_db()
    whoop.refresh_from_db()
    assert (
        orphan.status == SyncStatus.FAILED
        and not SyncEvent.objects.filter(status=SyncStatus.RUNNING).exists()
    )
    assert health_of(whoop, frozen_time) == Health.FAILING and whoop.last_error.startswith("interrupted")


# --- Wrong-typed payloads (issue 18.5) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "path_contains", "path", "value"),
    [
        ("dexcom", "/egvs", "", []),  # a list where the body is an object
        ("dexcom", "/egvs", "", None),
        ("dexcom", "/egvs", "records", {"0": 1}),
        ("dexcom", "/egvs", "records.0", "not a record"),
        ("libre", "/graph", "data.connection.glucoseMeasurement.TrendArrow", [3, 4]),
        ("libre", "/graph", "data.graphData", {"0": {}}),
        ("libre", "/graph", "data.connection", 5),
        ("whoop", "/developer/v2/cycle", "next_token", {"page": 2}),
        ("whoop", "/developer/v2/activity/sleep", "records.0.score", [1, 2]),
        ("whoop", "/developer/v2/recovery", "", None),
    ],
)
def test_a_wrong_typed_direct_payload_is_skipped_or_fails_the_run_cleanly(
    provider: str,
    path_contains: str,
    path: str,
    value: object,
    direct_config: DirectProvidersConfig,
    clean_sandbox: SandboxServer,
) -> None:
    index = {"dexcom": 5, "libre": 5, "whoop": 5}[provider]
    connection = connect(clean_sandbox, direct_config, provider, index)
    clean_sandbox.faults.add(
        {"kind": "retype", "provider": provider, "path_contains": path_contains, "path": path, "value": value}
    )

    summary = sync(connection, direct_config)

    # Either the bad part is skipped and counted, or the run fails with the provider named: never a crash,
    # never an event left running.
    assert not any("internal error" in e for e in summary.errors), summary.errors
    assert summary.status in ("success", "failed")
    if summary.status == "success":
        assert summary.records_skipped >= 1 or summary.records_stored > 0
    event = SyncEvent.objects.get(connection=connection)
    assert event.status == summary.status and event.finished_at is not None


@pytest.mark.parametrize(
    ("path_contains", "path", "value"),
    [
        ("/v2/user/providers/", "providers", [1, 2]),  # integer provider entries
        ("/v2/user/providers/", "providers", {"slug": "oura"}),
        ("/v2/user/providers/", "", [1]),
        ("heartrate", "next_cursor", {"after": 1}),  # an object cursor
        ("heartrate", "groups", [1]),
        ("heartrate", "", [1]),
        ("hrv", "", None),
        ("summary/sleep", "sleep.0", 7),
        ("summary/activity", "", None),
    ],
)
def test_a_wrong_typed_junction_payload_is_skipped_or_fails_the_user_cleanly(
    path_contains: str,
    path: str,
    value: object,
    junction_config: JunctionSyncConfig,
    clean_sandbox: SandboxServer,
) -> None:
    user_id = junction_config.user_ids[0]
    clean_sandbox.faults.add(
        {"kind": "retype", "user_id": user_id, "path_contains": path_contains, "path": path, "value": value}
    )

    result = run_wearable_sync_job(junction_config.replace(user_ids=(user_id,)))

    user = result.users[0]
    assert not any("internal error" in e for e in user.errors), user.errors
    assert not SyncEvent.objects.filter(status=SyncStatus.RUNNING).exists()


# --- Token refresh: only a definitive refusal of a token we hold deactivates (issue 18.3) ------------------

TOKEN_PATHS = {Provider.WHOOP: "/oauth/oauth2/token", Provider.DEXCOM: "/v2/oauth2/token"}


@pytest.mark.parametrize("provider", [Provider.WHOOP, Provider.DEXCOM])
@override_settings(PROVIDER_HTTP_TIMEOUT=0.3)
def test_a_lost_refresh_answer_keeps_the_connection_active_and_shows_it_failing(
    provider: str, direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:
    connection = connect(clean_sandbox, direct_config, provider, 6)
    expire_stored_token(connection)
    # The provider rotates the pair, and the answer carrying the new one never arrives.
    lost = clean_sandbox.faults.add(
        {"provider": provider, "path_contains": TOKEN_PATHS[provider], "kind": "lost", "delay": 0.6}
    )

    summary = sync(connection, direct_config)
    # The sandbox still holds the lost answer: let it finish before the next test resets the sandbox.
    deadline = time_machine.escape_hatch.time.monotonic() + 5
    while not any(r["fault"] == lost["id"] for r in clean_sandbox.requests.snapshot()):
        assert time_machine.escape_hatch.time.monotonic() < deadline, "the held answer never finished"
        time.sleep(0.05)

    connection.refresh_from_db()
    assert summary.status == "failed"
    assert connection.status == ConnectionStatus.ACTIVE and connection.failure_streak == 1
    assert "answer was lost" in connection.last_error and "reconnect" in connection.last_error
    assert ProviderCredential.objects.get(connection=connection).refresh_in_doubt
    assert SyncEvent.objects.get(connection=connection).status == SyncStatus.FAILED


@pytest.mark.parametrize(
    "body", [{"error": "invalid_request"}, {"error": "invalid_client"}, {"message": "try later"}]
)
def test_a_token_endpoint_refusal_other_than_invalid_grant_fails_the_run_and_keeps_the_connection(
    body: dict[str, str], direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:
    connection = connect(clean_sandbox, direct_config, Provider.WHOOP, 5)
    expire_stored_token(connection)
    clean_sandbox.faults.add(
        {"provider": "whoop", "path_contains": TOKEN_PATHS[Provider.WHOOP], "status": 400, "body": body}
    )

    assert sync(connection, direct_config).status == "failed"

    connection.refresh_from_db()
    assert connection.status == ConnectionStatus.ACTIVE and connection.failure_streak == 1
    # The next run refreshes normally and the connection recovers.
    assert sync(connection, direct_config).status == "success"
    connection.refresh_from_db()
    assert connection.failure_streak == 0


def test_a_refresh_after_a_lost_answer_clears_the_doubt(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:
    connection = connect(clean_sandbox, direct_config, Provider.DEXCOM, 7)
    ProviderCredential.objects.filter(connection=connection).update(refresh_in_doubt=True)
    expire_stored_token(connection)

    assert sync(connection, direct_config).status == "success"

    assert not ProviderCredential.objects.get(connection=connection).refresh_in_doubt


# --- A failing user: keep what completed, stop asking (issue 18.8) -------------------------------------------


def test_a_user_whose_heart_rate_always_fails_keeps_every_other_resource_and_stops_asking(
    junction_config: JunctionSyncConfig, clean_sandbox: SandboxServer
) -> None:
    from connections.models import Patient, SyncFingerprint
    from connections.providers.junction.client import SUMMARY_KINDS, TIMESERIES
    from readings.models import WearableReading

    user_id = next(u.user_id for u in clean_sandbox.junction.users if not u.cgm_provider)
    config = junction_config.replace(user_ids=(user_id,), lookback_days=2)
    clean_sandbox.faults.add({"user_id": user_id, "path_contains": "heartrate", "status": 500, "count": -1})
    # Every other request takes a while, as a loaded provider's do: requests queue behind the fetch pool.
    clean_sandbox.faults.add({"user_id": user_id, "kind": "slow", "delay": 0.15, "count": -1})
    clean_sandbox.requests.clear()

    result = run_wearable_sync_job(config)

    user = result.users[0]
    patient = Patient.objects.get(junction_user_id=user_id)
    stored = set(WearableReading.objects.filter(patient=patient).values_list("metric", flat=True))
    assert user.status == "failed" and user.records_stored > 0
    assert "heart_rate" not in stored and {"hrv_rmssd", "steps"} & stored
    # What completed is kept with its fingerprints; the cursor does not move: the window is not covered.
    assert SyncFingerprint.objects.filter(connection__patient=patient).exists()
    assert not SyncFingerprint.objects.filter(connection__patient=patient, resource="heartrate").exists()
    connection = Connection.objects.get(patient=patient)
    assert connection.last_sync_at is None and connection.failure_streak == 1
    # Once the user failed, its queued requests were not sent: on each of the 3 attempts, about one pool's worth
    # of requests (8) and heart rate's retries, where sending them all would be every unit on every attempt.
    units = 3 * (len(SUMMARY_KINDS) + len(TIMESERIES))  # 3 UTC days in a 2-day lookback
    data_requests = [
        r for r in clean_sandbox.requests.snapshot(provider="junction") if "/v2/user/" not in r["path"]
    ]
    assert len(data_requests) < units * 3 / 2


def test_a_retry_after_a_partial_failure_stores_nothing_twice(
    junction_config: JunctionSyncConfig, clean_sandbox: SandboxServer
) -> None:
    from readings.models import GlucoseReading, WearableReading

    user_id = junction_config.user_ids[0]
    config = junction_config.replace(user_ids=(user_id,))
    # One request (today's steps) fails all the HTTP layer's tries once: the first attempt fails part-way.
    clean_sandbox.faults.add(
        {
            "user_id": user_id,
            "path_contains": "steps/grouped?start_date=2026-03-10",
            "status": 500,
            "count": 4,
        }
    )

    result = run_wearable_sync_job(config)  # the first attempt fails part-way; the second completes

    assert result.ok and result.users[0].attempts == 2
    # Each row counted once, though it was written by two attempts.
    assert result.records_stored == WearableReading.objects.count() + GlucoseReading.objects.count()
    again = run_wearable_sync_job(config)
    assert again.ok and again.records_stored == 0


# --- Database blips and redelivered tasks (issue 18.6) -------------------------------------------------------


def test_a_task_the_queue_delivers_twice_is_counted_once_and_the_run_closes_right(
    junction_config: JunctionSyncConfig,
    clean_sandbox: SandboxServer,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from connections import tasks
    from connections.models import JobRun, JobRunStatus
    from tests.direct_helpers import JUNCTION_JOB

    settings.JUNCTION_SYNC = junction_config
    queued: list[tuple[Any, ...]] = []
    # The queue only: this test plays the workers, delivering each task itself.
    monkeypatch.setattr(tasks, "async_task", lambda func, *args, **kwargs: queued.append(args))
    tasks.sync_job(JUNCTION_JOB)
    run = JobRun.objects.get(job=JUNCTION_JOB)

    for args in [*queued, queued[0]]:  # the first task delivered again (its acknowledgement was lost)
        tasks.sync_connection_task(*args)

    run.refresh_from_db()
    assert (run.status, run.users_expected, run.users_synced, run.users_failed) == (
        JobRunStatus.SUCCESS,
        3,
        3,
        0,
    )


def test_a_database_failure_in_a_task_reports_nothing_and_goes_to_the_queue_for_another_delivery(
    junction_config: JunctionSyncConfig,
    clean_sandbox: SandboxServer,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from django.db import OperationalError

    from connections import tasks
    from connections.jobruns import track_job
    from connections.models import JobRun, JobRunStatus, Patient

    settings.JUNCTION_SYNC = junction_config
    connection = Connection.objects.create(
        patient=Patient.objects.create(junction_user_id=junction_config.user_ids[0]), provider="junction"
    )
    with track_job("wearable-sync-daily") as tracked:
        tracked.expect_units(1)

    def blip(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("server closed the connection unexpectedly")

    with monkeypatch.context() as patched:
        patched.setattr(tasks, "sync_connection", blip)
        with pytest.raises(OperationalError):
            tasks.sync_connection_task(connection.pk, "schedule", tracked.id)
    run = JobRun.objects.get(pk=tracked.id)
    assert (run.status, run.users_failed, run.users_synced) == (JobRunStatus.RUNNING, 0, 0)

    tasks.sync_connection_task(connection.pk, "schedule", tracked.id)  # the queue's next delivery

    run.refresh_from_db()
    assert (run.status, run.users_synced, run.users_failed) == (JobRunStatus.SUCCESS, 1, 0)


def test_the_queue_delivers_a_task_that_raised_again_a_bounded_number_of_times(settings: Any) -> None:
    assert settings.Q_CLUSTER["ack_failures"] is False
    assert 1 < settings.Q_CLUSTER["max_attempts"] <= 5
    assert settings.Q_CLUSTER["timeout"] < settings.Q_CLUSTER["retry"]


def test_a_dexcom_backfill_whose_later_window_fails_keeps_the_earlier_window_and_its_cursor(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer, frozen_time: datetime
) -> None:
    from readings.models import GlucoseReading

    config = direct_config.replace(cgm_initial_days=45, cgm_max_lookback_days=60)
    connection = connect(clean_sandbox, config, Provider.DEXCOM, 1)
    clean_sandbox.requests.clear()
    # The second 30-day window always fails; the first (the older one) answers.
    start = frozen_time - timedelta(days=60)
    newest = max(
        datetime.fromisoformat(r["systemTime"]).replace(tzinfo=frozen_time.tzinfo)
        for r in clean_sandbox.dexcom.egvs(1, frozen_time - timedelta(days=1), frozen_time)
    )
    first_start = max(newest - timedelta(days=45), start)
    second_start = first_start + timedelta(days=30)
    clean_sandbox.faults.add(
        {
            "provider": "dexcom",
            "path_contains": f"startDate={second_start:%Y-%m-%d}",
            "status": 503,
            "count": -1,
        }
    )

    summary = sync(connection, config)

    assert summary.status == "failed" and summary.records_stored > 29 * 280
    stored = GlucoseReading.objects.filter(patient=connection.patient)
    assert stored.count() == summary.records_stored
    connection.refresh_from_db()
    newest_stored = max(stored.values_list("measured_at", flat=True))
    assert connection.last_sync_at == newest_stored <= second_start  # the window bounds are inclusive
    assert connection.status == ConnectionStatus.ACTIVE and connection.failure_streak == 1
