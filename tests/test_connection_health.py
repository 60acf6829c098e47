"""Health rules: ok / stale / failing / inactive per provider cadence, identical in Python and in SQL."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from connections.health import Health, cadence_for, health_of, health_q, with_health
from connections.models import Connection, ConnectionStatus, Provider
from connections.providers.contract import CGM_CADENCE as CGM
from connections.providers.contract import DAILY_CADENCE as DAILY
from tests.ops_fixtures import make_connection

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_time")]


def sql_health(connection: Connection, now: datetime) -> str:
    return with_health(Connection.objects.filter(pk=connection.pk), now).get().health


def test_cadences_are_30_minutes_for_cgm_and_24_hours_for_daily_providers() -> None:
    assert cadence_for(Provider.DEXCOM) == cadence_for(Provider.LIBRE) == CGM
    assert cadence_for(Provider.JUNCTION) == cadence_for(Provider.WHOOP) == DAILY
    assert CGM.every == timedelta(minutes=30) and CGM.stale_after == timedelta(minutes=60)
    assert DAILY.every == timedelta(hours=24) and DAILY.stale_after == timedelta(hours=30)


CASES = [
    # provider, status, minutes since last success (None = never), failure streak, expected
    (Provider.JUNCTION, ConnectionStatus.ACTIVE, 60, 0, Health.OK),
    (Provider.JUNCTION, ConnectionStatus.ACTIVE, 29 * 60, 0, Health.OK),
    (Provider.JUNCTION, ConnectionStatus.ACTIVE, 31 * 60, 0, Health.STALE),
    (Provider.JUNCTION, ConnectionStatus.ACTIVE, 60, 1, Health.FAILING),
    (Provider.WHOOP, ConnectionStatus.ACTIVE, 31 * 60, 0, Health.STALE),
    (Provider.DEXCOM, ConnectionStatus.ACTIVE, 25, 0, Health.OK),
    (Provider.DEXCOM, ConnectionStatus.ACTIVE, 59, 0, Health.OK),
    (Provider.DEXCOM, ConnectionStatus.ACTIVE, 61, 0, Health.STALE),
    (Provider.LIBRE, ConnectionStatus.ACTIVE, 61, 0, Health.STALE),
    # One failed CGM run is a blip; two in a row is failing.
    (Provider.DEXCOM, ConnectionStatus.ACTIVE, 40, 1, Health.OK),
    (Provider.DEXCOM, ConnectionStatus.ACTIVE, 70, 1, Health.STALE),
    (Provider.LIBRE, ConnectionStatus.ACTIVE, 70, 2, Health.FAILING),
    # Failing wins over stale; inactive wins over everything.
    (Provider.JUNCTION, ConnectionStatus.ACTIVE, 90 * 60, 4, Health.FAILING),
    (Provider.JUNCTION, ConnectionStatus.INACTIVE, 60, 0, Health.INACTIVE),
    (Provider.DEXCOM, ConnectionStatus.INACTIVE, 900, 9, Health.INACTIVE),
    # Never synced: counted from creation (30 days ago in make_connection).
    (Provider.JUNCTION, ConnectionStatus.ACTIVE, None, 0, Health.STALE),
]


@pytest.mark.parametrize(("provider", "status", "minutes", "streak", "expected"), CASES)
def test_health_rules_agree_in_python_and_sql(
    provider: str, status: str, minutes: int | None, streak: int, expected: Health, frozen_time: datetime
) -> None:
    connection = make_connection(
        1,
        provider=provider,
        status=status,
        last_sync_at=None if minutes is None else frozen_time - timedelta(minutes=minutes),
        failure_streak=streak,
    )

    assert health_of(connection, frozen_time) == expected
    assert sql_health(connection, frozen_time) == expected


def test_a_new_connection_that_never_synced_is_ok_during_its_grace_period(frozen_time: datetime) -> None:
    connection = make_connection(1, created_at=frozen_time - timedelta(hours=2))
    assert health_of(connection, frozen_time) == Health.OK == sql_health(connection, frozen_time)
    later = frozen_time + timedelta(hours=29)
    assert health_of(connection, later) == Health.STALE == sql_health(connection, later)


def test_health_filters_partition_the_connections(frozen_time: datetime) -> None:
    for i, (provider, status, minutes, streak, _) in enumerate(CASES):
        make_connection(
            i,
            provider=provider,
            status=status,
            last_sync_at=None if minutes is None else frozen_time - timedelta(minutes=minutes),
            failure_streak=streak,
        )
    annotated = with_health(Connection.objects.all(), frozen_time)
    by_filter = {
        state: set(annotated.filter(health_q(state, frozen_time)).values_list("pk", flat=True))
        for state in Health
    }

    assert sum(len(ids) for ids in by_filter.values()) == len(CASES)
    for state, ids in by_filter.items():
        assert ids == {c.pk for c in annotated if c.health == state}
        assert len(ids) == sum(1 for case in CASES if case[4] == state)


# --- Sync health and data age are separate (issue 17, item 1) ---------------------------------------------


def test_a_dexcom_connection_that_just_synced_late_data_is_ok_and_its_data_on_time(
    direct_config,
    clean_sandbox,
    frozen_time: datetime,  # type: ignore[no-untyped-def]
) -> None:
    import time_machine

    from connections.health import data_behind
    from tests.direct_helpers import connect, sync

    connection = connect(clean_sandbox, direct_config, Provider.DEXCOM, 1)
    assert sync(connection, direct_config).status == "success"
    connection.refresh_from_db()
    # Dexcom withholds an hour or more: the cursor (the newest reading) is old the moment the sync ends.
    assert connection.last_sync_at < frozen_time - timedelta(minutes=59)

    for later in (frozen_time, frozen_time + timedelta(minutes=50)):
        with time_machine.travel(later, tick=False):
            assert health_of(connection, later) == Health.OK == sql_health(connection, later)
            assert not data_behind(connection, later)


def test_old_data_behind_a_working_sync_is_flagged_but_the_sync_stays_ok(frozen_time: datetime) -> None:
    from connections.health import data_behind

    connection = make_connection(
        1, provider=Provider.DEXCOM, last_sync_at=frozen_time - timedelta(minutes=10)
    )
    Connection.objects.filter(pk=connection.pk).update(latest_reading_at=frozen_time - timedelta(hours=5))
    connection.refresh_from_db()

    assert health_of(connection, frozen_time) == Health.OK == sql_health(connection, frozen_time)
    assert data_behind(connection, frozen_time)
    Connection.objects.filter(pk=connection.pk).update(latest_reading_at=frozen_time - timedelta(hours=3))
    connection.refresh_from_db()
    assert not data_behind(connection, frozen_time)  # within Dexcom's delay plus a missed run


@pytest.mark.parametrize(("provider", "status", "minutes", "streak", "expected"), CASES)
def test_the_api_says_healthy_exactly_when_the_admin_says_ok(
    provider: str,
    status: str,
    minutes: int | None,
    streak: int,
    expected: Health,
    frozen_time: datetime,
    clerk,  # type: ignore[no-untyped-def]
) -> None:
    from connections.models import Patient
    from tests.api_helpers import client_for

    connection = make_connection(
        1,
        provider=provider,
        status=status,
        last_sync_at=None if minutes is None else frozen_time - timedelta(minutes=minutes),
        failure_streak=streak,
    )
    Patient.objects.filter(pk=connection.patient_id).update(clerk_user_id="user_health")

    response = client_for(clerk.mint("user_health")).get("/api/patient-graph/wearables/connections")

    (item,) = response.json()["results"]
    assert item["healthy"] is (expected == Health.OK)
