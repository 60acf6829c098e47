"""A reading with an impossible time (a broken device clock) is skipped and counted, never stored, never moves a
cursor, and never fails a batch: over real HTTP against the sandbox, whose malformed faults shift one record's
time to 24 h ahead, 1970, year 9999 or year 1."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import time_machine

from connections.config import DirectProvidersConfig, JunctionSyncConfig
from connections.models import Connection, Patient, Provider
from connections.providers.contract import CLOCK_SKEW, EARLIEST_READING
from readings.models import GlucoseReading, WearableReading
from sandbox import SandboxServer
from tests.direct_helpers import connect, run_wearable_sync_job, sync

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_time")]

CGM_PATHS = {Provider.DEXCOM: "/egvs", Provider.LIBRE: "/graph"}
TIME_MODES = ("future", "ancient", "year_9999", "year_1")


def _glucose_times(connection: Connection) -> list[datetime]:
    return list(
        GlucoseReading.objects.filter(patient=connection.patient)
        .order_by("measured_at")
        .values_list("measured_at", flat=True)
    )


@pytest.mark.parametrize("provider", [Provider.DEXCOM, Provider.LIBRE])
def test_a_cgm_reading_a_day_ahead_is_skipped_and_later_readings_still_arrive(
    provider: str, direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer, frozen_time: datetime
) -> None:
    # The control: the same user without the fault, synced at the same instants.
    control = connect(clean_sandbox, direct_config, provider, 1)
    faulty = connect(clean_sandbox, direct_config, provider, 1)
    assert sync(control, direct_config).status == "success"
    clean_sandbox.faults.add(
        {"provider": provider, "path_contains": CGM_PATHS[provider], "kind": "malformed", "mode": "future"}
    )
    first = sync(faulty, direct_config)

    assert first.status == "success" and first.records_skipped == 1
    faulty.refresh_from_db()
    assert faulty.last_sync_at is not None and faulty.last_sync_at <= frozen_time + CLOCK_SKEW
    assert max(_glucose_times(faulty)) <= frozen_time

    later = frozen_time + timedelta(hours=3)
    with time_machine.travel(later, tick=False):
        assert sync(control, direct_config).status == "success"
        second = sync(faulty, direct_config)

    assert second.status == "success" and second.records_stored > 0
    control_times = set(_glucose_times(control))
    faulty_times = set(_glucose_times(faulty))
    # Everything after the first run arrived; the one bad record is the only difference from the control.
    assert {t for t in control_times if t > frozen_time - timedelta(hours=1)} <= faulty_times
    assert len(control_times - faulty_times) == 1


@pytest.mark.parametrize("provider", [Provider.DEXCOM, Provider.LIBRE])
def test_a_cursor_left_in_the_future_by_an_earlier_version_is_pulled_back(
    provider: str, direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer, frozen_time: datetime
) -> None:
    connection = connect(clean_sandbox, direct_config, provider, 2)
    assert sync(connection, direct_config).status == "success"
    before = len(_glucose_times(connection))
    Connection.objects.filter(pk=connection.pk).update(last_sync_at=frozen_time + timedelta(days=1))

    with time_machine.travel(frozen_time + timedelta(hours=2), tick=False):
        summary = sync(connection, direct_config)

    assert summary.status == "success" and len(_glucose_times(connection)) > before
    connection.refresh_from_db()
    assert connection.last_sync_at == max(_glucose_times(connection))


@pytest.mark.parametrize("mode", TIME_MODES)
@pytest.mark.parametrize("provider", [Provider.DEXCOM, Provider.LIBRE])
def test_cgm_readings_at_impossible_times_are_counted_and_the_rest_stored(
    provider: str,
    mode: str,
    direct_config: DirectProvidersConfig,
    clean_sandbox: SandboxServer,
    frozen_time: datetime,
) -> None:
    connection = connect(clean_sandbox, direct_config, provider, 3)
    clean_sandbox.faults.add(
        {"provider": provider, "path_contains": CGM_PATHS[provider], "kind": "malformed", "mode": mode}
    )

    summary = sync(connection, direct_config)

    assert summary.status == "success", summary.errors
    assert summary.records_skipped == 1 and summary.records_stored == summary.records_fetched - 1 > 0
    times = _glucose_times(connection)
    assert EARLIEST_READING <= times[0] and times[-1] <= frozen_time


@pytest.mark.parametrize("mode", TIME_MODES)
def test_whoop_records_at_impossible_times_are_counted_and_the_rest_stored(
    mode: str, direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer, frozen_time: datetime
) -> None:
    connection = connect(clean_sandbox, direct_config, Provider.WHOOP, 2)
    clean_sandbox.faults.add(
        {"provider": "whoop", "path_contains": "/activity/sleep", "kind": "malformed", "mode": mode}
    )

    summary = sync(connection, direct_config)

    assert summary.status == "success", summary.errors
    assert summary.records_skipped == 1
    times = WearableReading.objects.filter(patient=connection.patient).values_list("measured_at", flat=True)
    assert times and all(EARLIEST_READING <= t <= frozen_time for t in times)


@pytest.mark.parametrize("mode", TIME_MODES)
@pytest.mark.parametrize("resource", ["heartrate", "summary/activity"])
def test_junction_records_at_impossible_times_are_counted_and_the_window_stored(
    resource: str,
    mode: str,
    junction_config: JunctionSyncConfig,
    clean_sandbox: SandboxServer,
    frozen_time: datetime,
) -> None:
    user_id = junction_config.user_ids[0]
    clean_sandbox.faults.add(
        {"user_id": user_id, "path_contains": resource, "kind": "malformed", "mode": mode}
    )
    config = junction_config.replace(user_ids=(user_id,))

    result = run_wearable_sync_job(config)

    assert result.ok, result.errors
    user = result.users[0]
    assert user.records_skipped == 1 and user.records_stored == user.records_fetched - 1 > 1000
    patient = Patient.objects.get(junction_user_id=user_id)
    times = WearableReading.objects.filter(patient=patient).values_list("measured_at", flat=True)
    # Day-level summaries sit at 00:00 UTC of their date, up to 14 h ahead of now; never on a later local day.
    assert all(EARLIEST_READING <= t <= frozen_time + timedelta(hours=14) for t in times)


def test_a_future_dexcom_data_range_does_not_start_the_first_sync_in_the_future(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer, frozen_time: datetime
) -> None:
    connection = connect(clean_sandbox, direct_config, Provider.DEXCOM, 4)
    clean_sandbox.dexcom.delays[4] = timedelta(
        hours=-30
    )  # a receiver clock a day ahead: data "from tomorrow"

    summary = sync(connection, direct_config)

    assert summary.status == "success" and summary.records_stored > 0
    connection.refresh_from_db()
    assert connection.last_sync_at is not None and connection.last_sync_at <= frozen_time + CLOCK_SKEW
    assert all(t <= frozen_time + CLOCK_SKEW for t in _glucose_times(connection))
