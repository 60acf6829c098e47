"""Faults of the real world, each over real HTTP against the sandbox (issue 18): what the engine does with
them. The README's reliability table lists each with its test."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from email.utils import format_datetime

import pytest
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
    Connection.objects.filter(pk=whoop.pk).update(last_sync_at=frozen_time - timedelta(hours=1))
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
    clean_sandbox.faults.add(
        {"provider": provider, "path_contains": TOKEN_PATHS[provider], "kind": "lost", "delay": 0.6}
    )

    summary = sync(connection, direct_config)

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
