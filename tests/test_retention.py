"""cleanup-wearable-data: retention, orphans, duplicates, dry run, and the PostgreSQL partitions."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db import connection, transaction
from django.test import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.django import TestCase

from connections.models import Connection, ConnectionStatus, Patient, Provider
from readings.aggregate import run_aggregation
from readings.models import ConnectionRemoval, DailyStat, DailyStatDirty, GlucoseReading, WearableReading
from readings.partitions import default_partition, ensure_partitions, is_partitioned, list_partitions
from readings.retention import retention_cutoff, run_cleanup
from readings.store import store_batch

NOW = datetime(2025, 11, 20, 12, 0, tzinfo=UTC)


def at(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(sep=" ")


def hr(moment: datetime, value: float = 60.0, source: str = "oura", source_type: str = "ring") -> tuple:
    return ("heart_rate", source, source_type, at(moment), None, value, "bpm")


def cgm(moment: datetime, value: float = 100.0, source: str = "dexcom") -> tuple:
    return (source, at(moment), value, value, "mg/dL", "", None, "automatic")


def store(
    patient: Patient, readings: list, glucose: list | None = None, connection_id: int | None = None
) -> None:
    with transaction.atomic():
        store_batch(patient.pk, patient.time_zone, readings, glucose or [], connection_id=connection_id)


def removed(result, table: str, reason: str) -> tuple[int, int | None]:  # type: ignore[no-untyped-def]
    row = next(r for r in result.removals if r.table == table and r.reason == reason)
    return row.rows, row.patients


class RetentionProperties(TestCase):
    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        offsets=st.lists(st.integers(-150 * 24 * 60, 2 * 24 * 60), min_size=1, max_size=40, unique=True),
        retention_days=st.integers(7, 120),
    )
    def test_cleanup_removes_exactly_the_readings_older_than_the_cutoff_and_keeps_daily_stats(
        self, offsets: list[int], retention_days: int
    ) -> None:
        with (
            time_machine.travel(NOW, tick=False),
            override_settings(RAW_READING_RETENTION_DAYS=retention_days),
        ):
            patient = Patient.objects.create(time_zone="America/New_York")
            moments = [NOW + timedelta(minutes=m) for m in offsets]
            store(patient, [hr(m) for m in moments], [cgm(m) for m in moments])
            stats_before = sorted(DailyStat.objects.values_list("metric", "day", "count", "sum"))
            cutoff = retention_cutoff()

            result = run_cleanup()

            kept = [m for m in moments if m >= cutoff]
            assert sorted(WearableReading.objects.values_list("measured_at", flat=True)) == sorted(kept)
            assert sorted(GlucoseReading.objects.values_list("measured_at", flat=True)) == sorted(kept)
            assert sorted(DailyStat.objects.values_list("metric", "day", "count", "sum")) == stats_before
            assert result.rows_removed >= 2 * (len(moments) - len(kept)) or result.partitions_dropped
            assert run_cleanup().rows_removed == 0


pytestmark = pytest.mark.django_db


@pytest.fixture
def now() -> Iterator[datetime]:
    with time_machine.travel(NOW, tick=False):
        yield NOW


@pytest.fixture
def patient() -> Patient:
    return Patient.objects.create(time_zone="Europe/London")


def test_dry_run_reports_by_table_and_patient_and_removes_nothing(now: datetime, patient: Patient) -> None:
    other = Patient.objects.create(time_zone="UTC")
    old = now - timedelta(days=100)
    store(patient, [hr(old), hr(old + timedelta(minutes=1)), hr(now - timedelta(days=1))], [cgm(old)])
    store(other, [hr(old)])

    result = run_cleanup(dry_run=True)

    assert removed(result, "patient_wearable_readings", "retention") == (3, 2)
    assert removed(result, "patient_glucose_readings", "retention") == (1, 1)
    assert WearableReading.objects.count() == 4 and GlucoseReading.objects.count() == 1
    lines = result.table_lines()
    assert any("patient_wearable_readings" in line and "retention" in line for line in lines)
    assert lines[-1].startswith("would remove 4 rows")


def test_dexcom_glucose_through_junction_and_direct_keeps_the_direct_copy(
    now: datetime, patient: Patient
) -> None:
    junction = Connection.objects.create(patient=patient, provider=Provider.JUNCTION)
    dexcom = Connection.objects.create(patient=patient, provider=Provider.DEXCOM)
    moment = now - timedelta(days=2, hours=3)
    # Junction reports the minute; the direct API the second: the same reading, below Dexcom's precision.
    store(patient, [], [cgm(moment.replace(second=0), 101, source="dexcom_v3")], connection_id=junction.pk)
    store(patient, [], [cgm(moment.replace(second=27), 100, source="dexcom")], connection_id=dexcom.pk)
    store(
        patient, [], [cgm(moment + timedelta(minutes=5), 110, source="dexcom_v3")], connection_id=junction.pk
    )
    run_aggregation()
    # Source resolution counts the reading once already (issue 13): cleanup only tidies storage.
    assert DailyStat.objects.get(metric="glucose").count == 2

    result = run_cleanup()

    assert removed(result, "patient_glucose_readings", "duplicate") == (1, 1)
    assert sorted(GlucoseReading.objects.values_list("source", "value_mg_dl")) == [
        ("dexcom", 100.0),
        ("dexcom_v3", 110.0),
    ]
    # The day was marked: the next aggregation recomputes it from the rows that stayed, to the same count.
    assert DailyStatDirty.objects.filter(metric="glucose").exists()
    run_aggregation()
    assert DailyStat.objects.get(metric="glucose").count == 2
    assert run_cleanup().rows_removed == 0


def test_timestamps_differing_below_a_second_are_one_sample_and_the_latest_ingest_stays(
    now: datetime, patient: Patient
) -> None:
    moment = (now - timedelta(days=1)).replace(microsecond=0)
    store(patient, [hr(moment, 61)])
    with time_machine.travel(now + timedelta(minutes=5), tick=False):
        store(patient, [hr(moment + timedelta(milliseconds=400), 62)])
    # A phone and a watch sampling the same second are two measurements, not duplicates.
    store(patient, [hr(moment, 70, source="apple_health_kit", source_type="phone")])
    store(patient, [hr(moment, 71, source="apple_health_kit", source_type="watch")])

    result = run_cleanup()

    assert removed(result, "patient_wearable_readings", "duplicate") == (1, 1)
    assert sorted(WearableReading.objects.values_list("value", flat=True)) == [62.0, 70.0, 71.0]


def test_orphans_of_a_deleted_connection_go_after_the_grace_period_and_daily_stats_stay(
    now: datetime, patient: Patient
) -> None:
    gone = Connection.objects.create(patient=patient, provider=Provider.JUNCTION)
    kept = Connection.objects.create(patient=patient, provider=Provider.WHOOP)
    store(patient, [hr(now - timedelta(days=3))], [cgm(now - timedelta(days=3))], connection_id=gone.pk)
    store(patient, [hr(now - timedelta(days=2), source="whoop")], connection_id=kept.pk)
    run_aggregation()
    stats = sorted(DailyStat.objects.values_list("metric", "day", "count", "avg_7d"))
    gone_id = gone.pk
    gone.delete()
    assert ConnectionRemoval.objects.filter(connection_id=gone_id, patient_id=patient.pk).exists()

    with override_settings(ORPHANED_READING_GRACE_DAYS=30):
        within_grace = run_cleanup()
        with time_machine.travel(now + timedelta(days=31), tick=False):
            after_grace = run_cleanup(now=now + timedelta(days=31))

    assert within_grace.rows_removed == 0
    assert removed(after_grace, "patient_wearable_readings", "orphan") == (1, 1)
    assert removed(after_grace, "patient_glucose_readings", "orphan") == (1, 1)
    assert list(WearableReading.objects.values_list("connection_id", flat=True)) == [kept.pk]
    assert sorted(DailyStat.objects.values_list("metric", "day", "count", "avg_7d")) == stats
    assert not ConnectionRemoval.objects.exists()


def test_daily_stats_of_a_patient_deleted_in_sql_are_removed_and_a_dry_run_only_counts_them(
    now: datetime, patient: Patient
) -> None:
    gone = Patient.objects.create(time_zone="UTC")
    for owner in (patient, gone):
        DailyStat.objects.create(
            patient=owner, metric="steps", day=now.date(), avg=1, min=1, max=1, sum=1, count=1
        )
    with connection.cursor() as cursor:
        # Around Django's cascade, as a manual fix or another service would: the statistics stay behind.
        cursor.execute("DELETE FROM patients WHERE id = %s", [gone.pk])

    dry = run_cleanup(dry_run=True)
    assert removed(dry, "patient_wearable_daily_stats", "orphan") == (1, 1)
    assert DailyStat.objects.count() == 2

    real = run_cleanup()
    assert removed(real, "patient_wearable_daily_stats", "orphan") == (1, 1)
    assert list(DailyStat.objects.values_list("patient_id", flat=True)) == [patient.pk]


def test_deleting_a_patient_deletes_its_daily_stats(patient: Patient, now: datetime) -> None:
    DailyStat.objects.create(
        patient=patient, metric="steps", day=now.date(), avg=1, min=1, max=1, sum=1, count=1
    )

    patient.delete()

    assert not DailyStat.objects.exists()


def test_readings_of_a_connection_inactive_past_the_grace_period_are_removed(
    now: datetime, patient: Patient
) -> None:
    inactive = Connection.objects.create(patient=patient, provider=Provider.JUNCTION)
    store(patient, [hr(now - timedelta(days=1))], connection_id=inactive.pk)
    Connection.objects.filter(pk=inactive.pk).update(
        status=ConnectionStatus.INACTIVE, updated_at=now - timedelta(days=8)
    )

    with override_settings(ORPHANED_READING_GRACE_DAYS=7):
        result = run_cleanup()

    assert removed(result, "patient_wearable_readings", "orphan") == (1, 1)
    assert not WearableReading.objects.exists()
    assert DailyStat.objects.filter(patient=patient).count() == 1


def test_run_job_cleanup_dry_run_prints_the_table(now: datetime, patient: Patient, capsys) -> None:  # type: ignore[no-untyped-def]
    from django.core.management import call_command

    store(patient, [hr(now - timedelta(days=200))])

    call_command("run_job", "cleanup-wearable-data", "--dry-run")

    out = capsys.readouterr().out
    assert "patient_wearable_readings    retention           1         1" in out
    assert WearableReading.objects.count() == 1


# --- Partitions ------------------------------------------------------------------------------------------


def rows_in(relation: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT count(*) FROM "{relation}"')
        return cursor.fetchone()[0]


def test_raw_tables_are_range_partitioned_with_a_default_partition() -> None:
    for table in ("patient_wearable_readings", "patient_glucose_readings"):
        assert is_partitioned(table)
        assert rows_in(default_partition(table)) == 0


def test_a_far_backfill_inserts_into_default_and_moves_when_its_week_is_created(patient: Patient) -> None:
    long_ago = datetime(2019, 6, 5, 8, tzinfo=UTC)
    store(patient, [hr(long_ago)], [cgm(long_ago)])
    assert rows_in(default_partition("patient_wearable_readings")) == 1

    with transaction.atomic():
        created = ensure_partitions(long_ago, long_ago)

    assert created == ["patient_wearable_readings_p20190603", "patient_glucose_readings_p20190603"]
    assert rows_in("patient_wearable_readings_p20190603") == 1
    assert rows_in(default_partition("patient_wearable_readings")) == 0
    # The natural-key upsert still finds the moved row: a replay writes nothing.
    store(patient, [hr(long_ago)], [cgm(long_ago)])
    assert WearableReading.objects.count() == GlucoseReading.objects.count() == 1


def test_retention_drops_whole_partitions_and_deletes_only_the_old_rows_of_the_straddling_one(
    now: datetime, patient: Patient
) -> None:
    cutoff = retention_cutoff(now)
    very_old, just_old, just_new = cutoff - timedelta(days=20), cutoff - timedelta(minutes=1), cutoff
    store(patient, [hr(very_old), hr(just_old), hr(just_new), hr(now)])
    with transaction.atomic():
        ensure_partitions(very_old, now)
    week_of_very_old = next(
        p for p in list_partitions("patient_wearable_readings") if p.start <= very_old < p.end
    )

    result = run_cleanup()

    assert week_of_very_old.name in result.partitions_dropped
    assert all(p.end > cutoff for p in list_partitions("patient_wearable_readings"))
    assert sorted(WearableReading.objects.values_list("measured_at", flat=True)) == [just_new, now]
    assert run_cleanup().rows_removed == 0


def test_day_fingerprints_older_than_the_sync_lookback_are_pruned(now: datetime, patient: Patient) -> None:
    from connections.models import SyncFingerprint

    connection = Connection.objects.create(patient=patient, provider=Provider.JUNCTION)
    lookback = 7  # settings_test keeps the default JUNCTION_SYNC_LOOKBACK_DAYS
    for age in (0, lookback, lookback + 2, 60):
        SyncFingerprint.objects.create(
            connection=connection, resource="heartrate", day=(now - timedelta(days=age)).date(), digest="x"
        )

    assert removed(run_cleanup(dry_run=True), "sync_fingerprints", "expired") == (2, None)
    assert SyncFingerprint.objects.count() == 4
    run_cleanup()
    kept = sorted((now.date() - fp.day).days for fp in SyncFingerprint.objects.all())
    assert kept == [0, lookback]
