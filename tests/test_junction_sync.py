"""The Junction daily sync end to end, over real HTTP against the sandbox."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import pytest
from django.test import override_settings

from connections.config import JunctionSyncConfig
from connections.models import Connection, ConnectionStatus, Patient, Provider, SyncEvent, SyncStatus
from connections.providers.junction.client import CGM_PROVIDER_SLUGS, TIMESERIES, utc_days
from readings.models import DailyStat, GlucoseReading, WearableReading
from sandbox import SandboxServer
from tests.direct_helpers import run_wearable_sync_job

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_time")]


def window_start(config: JunctionSyncConfig, now: datetime) -> datetime:
    first_day = utc_days(now - timedelta(days=config.lookback_days), now)[0]
    return datetime.combine(first_day, datetime.min.time(), tzinfo=now.tzinfo)


def served_counts(sandbox: SandboxServer, user_id: str, start: datetime, end: datetime) -> dict[str, int]:
    counts = {}
    for spec in TIMESERIES:
        counts[spec.resource] = len(sandbox.junction.samples(user_id, spec.resource, start, end))
    counts["glucose"] = len(sandbox.junction.samples(user_id, "glucose", start, end))
    return counts


def stored_counts(patient: Patient) -> dict[str, int]:
    counts = {
        spec.resource: WearableReading.objects.filter(patient=patient, metric__in=spec.metrics).count()
        for spec in TIMESERIES
    }
    counts["glucose"] = GlucoseReading.objects.filter(patient=patient).count()
    return counts


def test_sync_stores_exactly_the_distinct_samples_the_sandbox_served(
    junction_config: JunctionSyncConfig, clean_sandbox: SandboxServer, frozen_time: datetime
) -> None:
    result = run_wearable_sync_job(junction_config)

    assert result.ok, result.errors
    assert result.users_synced == 3
    start = window_start(junction_config, frozen_time)
    for user_id in junction_config.user_ids:
        patient = Patient.objects.get(junction_user_id=user_id)
        served = served_counts(clean_sandbox, user_id, start, frozen_time)
        assert stored_counts(patient) == served
        assert served["heartrate"] > 1000
    # Glucose only for users with a CGM connected through Junction.
    cgm_users = [u for u in junction_config.user_ids if clean_sandbox.junction.user(u).cgm_provider]
    assert cgm_users and GlucoseReading.objects.exists()
    assert all(clean_sandbox.junction.user(u).cgm_provider in CGM_PROVIDER_SLUGS for u in cgm_users)


def test_syncing_the_same_window_twice_stores_nothing_new(junction_config: JunctionSyncConfig) -> None:
    first = run_wearable_sync_job(junction_config)
    rows = WearableReading.objects.count(), GlucoseReading.objects.count(), DailyStat.objects.count()

    second = run_wearable_sync_job(junction_config)

    assert first.records_stored > 0
    assert second.ok and second.records_stored == 0
    assert (
        WearableReading.objects.count(),
        GlucoseReading.objects.count(),
        DailyStat.objects.count(),
    ) == rows
    # The second run skipped the unchanged days without parsing them, yet reports what it fetched.
    assert all(u.unchanged_days > 0 for u in second.users)
    assert [u.records_fetched for u in second.users] == [u.records_fetched for u in first.users]


def test_forced_resync_parses_everything_and_still_stores_nothing_new(
    junction_config: JunctionSyncConfig,
) -> None:
    run_wearable_sync_job(junction_config)
    forced = run_wearable_sync_job(junction_config, force=True)
    assert forced.records_stored == 0
    assert all(u.unchanged_days == 0 for u in forced.users)


def test_unknown_listed_user_gets_a_patient_and_connection_with_junction_time_zone(
    junction_config: JunctionSyncConfig, clean_sandbox: SandboxServer
) -> None:
    user_id = junction_config.user_ids[0]
    run_wearable_sync_job(junction_config)
    patient = Patient.objects.get(junction_user_id=user_id)
    assert patient.time_zone == clean_sandbox.junction.user(user_id).time_zone
    assert (
        Connection.objects.filter(patient=patient, provider=Provider.JUNCTION, status="active").count() == 1
    )


def test_active_connections_in_the_database_are_synced_too(junction_config: JunctionSyncConfig) -> None:
    extra_user = "{}"
    other = junction_config.user_ids[2]
    patient = Patient.objects.create(junction_user_id=other, time_zone="UTC")
    Connection.objects.create(patient=patient, provider=Provider.JUNCTION)
    del extra_user

    result = run_wearable_sync_job(junction_config.replace(user_ids=junction_config.user_ids[:1]))

    assert sorted(u.user_id for u in result.users) == sorted([junction_config.user_ids[0], other])


def test_a_deactivated_connection_is_not_synced(junction_config: JunctionSyncConfig) -> None:
    run_wearable_sync_job(junction_config.replace(user_ids=junction_config.user_ids[:1]))
    Connection.objects.update(status=ConnectionStatus.INACTIVE)
    before = WearableReading.objects.count()

    result = run_wearable_sync_job(junction_config.replace(user_ids=junction_config.user_ids[:1]))

    assert [u.status for u in result.users] == ["skipped"]
    assert WearableReading.objects.count() == before


def test_cursor_moves_with_the_data(junction_config: JunctionSyncConfig, frozen_time: datetime) -> None:
    run_wearable_sync_job(junction_config)
    for connection in Connection.objects.all():
        assert connection.last_sync_at == frozen_time
        assert connection.failure_streak == 0


def test_each_user_run_writes_one_sync_event(junction_config: JunctionSyncConfig) -> None:
    run_wearable_sync_job(junction_config)
    events = SyncEvent.objects.all()
    assert events.count() == 3
    assert {e.status for e in events} == {SyncStatus.SUCCESS}
    assert all(e.records_stored > 0 and e.finished_at and e.attempts == 1 for e in events)


def test_daily_stats_cover_the_touched_patient_local_days(junction_config: JunctionSyncConfig) -> None:
    run_wearable_sync_job(junction_config)
    patient = Patient.objects.get(junction_user_id=junction_config.user_ids[0])
    stat = DailyStat.objects.filter(patient=patient, metric="heart_rate").order_by("-count").first()
    assert stat is not None
    assert stat.min <= stat.avg <= stat.max
    assert stat.count > 600


# --- faults -------------------------------------------------------------------------------------------------


def test_429_with_retry_after_then_success_gives_complete_data(
    junction_config: JunctionSyncConfig, clean_sandbox: SandboxServer, frozen_time: datetime
) -> None:
    user_id = junction_config.user_ids[0]
    clean_sandbox.faults.add(
        {
            "provider": "junction",
            "user_id": user_id,
            "path_contains": "heartrate",
            "status": 429,
            "retry_after": 0.2,
            "count": 2,
        }
    )
    config = junction_config.replace(user_ids=(user_id,))

    result = run_wearable_sync_job(config)

    assert result.ok and result.users[0].attempts == 1
    patient = Patient.objects.get(junction_user_id=user_id)
    assert stored_counts(patient) == served_counts(
        clean_sandbox, user_id, window_start(config, frozen_time), frozen_time
    )
    assert [r["status"] for r in clean_sandbox.requests if "heartrate" in r["path"]].count(429) == 2


def test_503_twice_then_success_is_retried(
    junction_config: JunctionSyncConfig, clean_sandbox: SandboxServer
) -> None:
    user_id = junction_config.user_ids[0]
    clean_sandbox.faults.add(
        {"user_id": user_id, "path_contains": "summary/sleep", "status": 503, "count": 2}
    )

    result = run_wearable_sync_job(junction_config.replace(user_ids=(user_id,)))

    assert result.ok
    assert WearableReading.objects.filter(metric="sleep_duration").exists()


def test_user_down_beyond_3_attempts_is_skipped_and_the_others_sync(
    junction_config: JunctionSyncConfig, clean_sandbox: SandboxServer
) -> None:
    down = junction_config.user_ids[1]
    clean_sandbox.faults.add({"user_id": down, "status": 503, "count": -1})

    result = run_wearable_sync_job(junction_config)

    by_user = {u.user_id: u for u in result.users}
    assert by_user[down].status == "failed"
    assert by_user[down].attempts == 3
    assert any("503" in e for e in by_user[down].errors)
    assert any(down in e and "503" in e for e in result.errors)
    assert result.users_synced == 2
    connection = Connection.objects.get(patient__junction_user_id=down)
    assert connection.failure_streak == 1 and "503" in connection.last_error
    assert connection.last_sync_at is None
    assert SyncEvent.objects.get(connection=connection).status == SyncStatus.FAILED


@override_settings(PROVIDER_HTTP_TIMEOUT=0.3)
def test_a_timeout_is_retried(
    junction_config: JunctionSyncConfig,
    clean_sandbox: SandboxServer,
    frozen_time: datetime,
    caplog: pytest.LogCaptureFixture,
) -> None:
    user_id = junction_config.user_ids[0]
    clean_sandbox.faults.add({"user_id": user_id, "path_contains": "/hrv/", "kind": "timeout", "delay": 1.0})
    config = junction_config.replace(user_ids=(user_id,))

    with caplog.at_level(logging.INFO, logger="loopsync.providers"):
        result = run_wearable_sync_job(config)

    assert result.ok and result.users[0].attempts == 1
    assert len(clean_sandbox.faults) == 0  # the stalled request happened and was used up
    retries = [r for r in caplog.records if r.getMessage() == "provider request retry"]
    assert [(r.route, r.reason) for r in retries] == [("/v2/timeseries/{user_id}/hrv/grouped", "network")]
    patient = Patient.objects.get(junction_user_id=user_id)
    served = served_counts(clean_sandbox, user_id, window_start(config, frozen_time), frozen_time)
    assert stored_counts(patient)["hrv"] == served["hrv"] > 0


def test_a_malformed_record_is_skipped_with_a_warning_and_the_rest_is_stored(
    junction_config: JunctionSyncConfig,
    clean_sandbox: SandboxServer,
    frozen_time: datetime,
    caplog: pytest.LogCaptureFixture,
) -> None:
    user_id = junction_config.user_ids[0]
    clean_sandbox.faults.add(
        {"user_id": user_id, "path_contains": "heartrate", "kind": "malformed", "mode": "value"}
    )
    config = junction_config.replace(user_ids=(user_id,))

    with caplog.at_level(logging.WARNING, logger="loopsync"):
        result = run_wearable_sync_job(config)

    assert result.ok
    assert result.users[0].records_skipped == 1
    patient = Patient.objects.get(junction_user_id=user_id)
    served = served_counts(clean_sandbox, user_id, window_start(config, frozen_time), frozen_time)
    assert stored_counts(patient)["heartrate"] == served["heartrate"] - 1
    warnings = [r for r in caplog.records if r.getMessage() == "skipped invalid record"]
    assert len(warnings) == 1
    assert "abc" not in warnings[0].__dict__.get("reason", "")


def test_401_gives_a_clear_error_in_the_summary(junction_config: JunctionSyncConfig) -> None:
    result = run_wearable_sync_job(
        junction_config.replace(api_key="sk_us_wrong", user_ids=junction_config.user_ids[:1])
    )

    assert not result.ok
    summary = result.users[0]
    assert summary.status == "failed"
    assert summary.attempts == 1  # credentials rejected: retrying cannot help
    assert any("401" in e and "credentials rejected" in e for e in summary.errors)
    assert "sk_us_wrong" not in " ".join(summary.errors)


def test_after_a_time_zone_change_day_level_summaries_stay_on_their_calendar_date_and_are_counted_once(
    junction_config: JunctionSyncConfig,
) -> None:
    from readings.aggregate import change_patient_time_zone, run_aggregation
    from readings.models import DailyStat

    config = junction_config.replace(user_ids=junction_config.user_ids[:1])
    run_wearable_sync_job(config)
    patient = Patient.objects.get(junction_user_id=config.user_ids[0])
    before = dict(
        DailyStat.objects.filter(patient=patient, metric="activity_steps").values_list("day", "sum")
    )
    new_zone = "Pacific/Kiritimati" if patient.time_zone != "Pacific/Kiritimati" else "Pacific/Pago_Pago"

    change_patient_time_zone(patient.pk, new_zone)
    again = run_wearable_sync_job(config, force=True)  # every day parsed and written again
    run_aggregation()

    assert again.ok
    steps = DailyStat.objects.filter(patient=patient, metric="activity_steps")
    assert before and dict(steps.values_list("day", "sum")) == before  # the provider's dates, never doubled
    assert set(steps.values_list("count", flat=True)) == {1}
