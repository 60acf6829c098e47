"""aggregate-wearable-data: stored daily stats and rolling averages equal a recomputation from the raw rows."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.django import TestCase

from connections.models import Patient
from loopsync.schedules import all_schedules
from readings import aggregate
from readings.aggregate import change_patient_time_zone, run_aggregation
from readings.dirty import mark_dirty
from readings.models import DailyStat, DailyStatDirty, GlucoseReading, WearableReading
from readings.store import store_batch

# Readings fall in [START, START + DAYS): autumn 2025, across the EU (26 Oct), US (2 Nov), Lord Howe
# (5 Oct, a 30-minute shift) and Chile (7 Sep) DST changes. NOW keeps them all inside the raw horizon.
START = datetime(2025, 9, 1, tzinfo=UTC)
DAYS = 75
NOW = datetime(2025, 11, 20, 12, 0, tzinfo=UTC)
ZONES = [
    "UTC",
    "Europe/London",
    "America/New_York",
    "Australia/Lord_Howe",
    "America/Santiago",
    "Asia/Kathmandu",
    "Pacific/Kiritimati",
    "Pacific/Pago_Pago",
]
TRANSITION_MINUTES = [
    int((moment - START).total_seconds() // 60)
    for moment in (
        datetime(2025, 10, 26, 1, 0, tzinfo=UTC),
        datetime(2025, 11, 2, 6, 0, tzinfo=UTC),
        datetime(2025, 10, 4, 15, 30, tzinfo=UTC),
        datetime(2025, 9, 7, 4, 0, tzinfo=UTC),
    )
]
METRICS = ["heart_rate", "steps", "glucose"]
# Written here, not read from readings.catalogue: the oracle states the rule independently.
SUMMED = {"steps"}


def canonical(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(sep=" ")


def store(patient: Patient, samples: list[tuple[str, float, float]], *, source: str = "oura") -> None:
    """Store (metric, minute offset from START, value) samples as one ingest batch, as a sync would."""
    readings, glucose = [], []
    for metric, minute, value in samples:
        at = canonical(START + timedelta(minutes=minute))
        if metric == "glucose":
            glucose.append((source, at, value, value, "mg/dL", "", None, "automatic"))
        else:
            readings.append(
                (metric, source, "watch", at, None, value, "bpm" if metric == "heart_rate" else "count")
            )
    with transaction.atomic():
        store_batch(patient.pk, patient.time_zone, readings, glucose, connection_id=None)


def recomputed(patient: Patient) -> dict[tuple[str, date], dict[str, float | None]]:
    """The straightforward recomputation: bucket raw rows by local day in Python, then window by hand."""
    tz = ZoneInfo(Patient.objects.get(pk=patient.pk).time_zone)
    values: dict[tuple[str, date], list[float]] = defaultdict(list)
    for metric, at, value in WearableReading.objects.filter(patient=patient).values_list(
        "metric", "measured_at", "value"
    ):
        values[(metric, at.astimezone(tz).date())].append(value)
    for at, value in GlucoseReading.objects.filter(patient=patient).values_list("measured_at", "value_mg_dl"):
        values[("glucose", at.astimezone(tz).date())].append(value)
    stats: dict[tuple[str, date], dict[str, Any]] = {}
    for key, vals in values.items():
        stats[key] = {"count": len(vals), "sum": sum(vals), "min": min(vals), "max": max(vals)}
        stats[key]["avg"] = stats[key]["sum"] / len(vals)
    for (metric, day), row in stats.items():
        for span, name in ((7, "avg_7d"), (30, "avg_30d")):
            window = [stats.get((metric, day - timedelta(days=i))) for i in range(span)]
            window = [w for w in window if w]
            if metric in SUMMED:  # average daily total over the days with data
                row[name] = sum(w["sum"] for w in window) / len(window)
            else:  # every sample in the window weighs the same
                row[name] = sum(w["sum"] for w in window) / sum(w["count"] for w in window)
    return stats


def stored(patient: Patient) -> dict[tuple[str, date], dict[str, Any]]:
    return {
        (s.metric, s.day): {
            "count": s.count,
            "sum": s.sum,
            "min": s.min,
            "max": s.max,
            "avg": s.avg,
            "avg_7d": s.avg_7d,
            "avg_30d": s.avg_30d,
        }
        for s in DailyStat.objects.filter(patient=patient)
    }


def assert_matches_raw(patient: Patient) -> None:
    expected, actual = recomputed(patient), stored(patient)
    assert actual.keys() == expected.keys()
    for key, row in expected.items():
        assert actual[key] == pytest.approx(row, rel=1e-9, abs=1e-9), key


def assert_no_change(result: aggregate.AggregateResult) -> None:
    assert (result.daily_rows_changed, result.rolling_rows_changed) == (0, 0), result


minute = st.one_of(
    st.integers(0, DAYS * 24 * 60 - 1),
    st.sampled_from(TRANSITION_MINUTES).flatmap(lambda m: st.integers(m - 180, m + 180)),
)
sample = st.tuples(
    st.sampled_from(METRICS), minute, st.floats(0, 400, allow_nan=False, allow_infinity=False, width=32)
)
batches = st.lists(st.lists(sample, min_size=1, max_size=25), min_size=1, max_size=4)


class DailyStatsProperties(TestCase):
    """Hypothesis' Django TestCase rolls every example back: examples never see each other's rows."""

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(zone=st.sampled_from(ZONES), new_zone=st.sampled_from(ZONES), ingests=batches)
    def test_stats_and_rolling_averages_equal_a_recomputation_from_raw_rows(
        self, zone: str, new_zone: str, ingests: list[list[tuple[str, int, float]]]
    ) -> None:
        with time_machine.travel(NOW, tick=False):
            patient = Patient.objects.create(time_zone=zone)
            for batch in ingests:
                store(patient, batch)
            assert DailyStatDirty.objects.filter(patient=patient).exists()

            run_aggregation()
            assert_matches_raw(patient)
            assert not DailyStatDirty.objects.exists()

            # Re-running either mode changes nothing.
            assert_no_change(run_aggregation())
            assert_no_change(run_aggregation(full=True))

            # Late data for one of the days, then the incremental run again.
            store(patient, [(ingests[0][0][0], ingests[0][0][1] + 1, 123.0)])
            run_aggregation()
            assert_matches_raw(patient)

            change_patient_time_zone(patient.pk, new_zone)
            assert_matches_raw(patient)

    @settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(zone=st.sampled_from(ZONES), ingests=batches)
    def test_full_rebuild_from_scratch_equals_the_incremental_result(
        self, zone: str, ingests: list[list[tuple[str, int, float]]]
    ) -> None:
        with time_machine.travel(NOW, tick=False):
            patient = Patient.objects.create(time_zone=zone)
            for batch in ingests:
                store(patient, batch)
            DailyStat.objects.filter(patient=patient).delete()

            run_aggregation(full=True)

            assert_matches_raw(patient)
            assert not DailyStatDirty.objects.exists()


pytestmark = pytest.mark.django_db


@pytest.fixture
def now() -> Any:
    with time_machine.travel(NOW, tick=False):
        yield NOW


def hours(day: datetime, count: int) -> list[tuple[str, int, float]]:
    first = int((day - START).total_seconds() // 60)
    return [("heart_rate", first + 60 * h, 60.0) for h in range(count)]


def test_full_rebuild_buckets_rows_a_second_either_side_of_every_zone_change(now: datetime) -> None:
    """Each zone's rows one second before, at and one second after each change of the window go to the day
    its own rules give them, as the incremental path buckets them."""
    seconds = [-3600, -1, 0, 1, 3600]
    for zone in ZONES:
        patient = Patient.objects.create(time_zone=zone)
        samples = [
            ("heart_rate", m + s / 60, float(i))
            for i, (m, s) in enumerate((m, s) for m in TRANSITION_MINUTES for s in seconds)
        ]
        store(patient, samples)
        DailyStat.objects.filter(patient=patient).delete()

        run_aggregation(full=True)

        assert_matches_raw(patient)


def test_a_first_build_that_meets_a_stored_day_falls_back_to_the_upsert(
    now: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    patient = Patient.objects.create(time_zone="Europe/London")
    store(patient, [("heart_rate", TRANSITION_MINUTES[0] + m, float(m)) for m in range(0, 600, 7)])
    run_aggregation()
    expected = stored(patient)
    DailyStat.objects.filter(patient=patient).update(avg_7d=None, count=1)
    write = aggregate._pg_write_full_chunk
    # As if the stats were stored by a sync between the chunk's count and its insert.
    monkeypatch.setattr(aggregate, "_pg_write_full_chunk", lambda cursor, params, _: write(cursor, params, 0))

    result = run_aggregation(full=True)

    assert result.status == "success" and result.daily_rows_changed == len(expected)
    assert stored(patient) == expected


def test_a_patient_deleted_during_a_full_rebuild_does_not_get_its_stats_back(
    now: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept, gone = Patient.objects.create(time_zone="UTC"), Patient.objects.create(time_zone="UTC")
    for patient in (kept, gone):
        store(patient, [("heart_rate", TRANSITION_MINUTES[0] + m, float(m)) for m in range(0, 300, 11)])
    DailyStat.objects.all().delete()
    write = aggregate._pg_write_full_chunk

    def delete_then_write(cursor: Any, params: dict[str, Any], stored: int) -> int:
        Patient.objects.filter(pk=gone.pk).delete()  # after the scan, before the chunk's write
        return write(cursor, params, stored)

    monkeypatch.setattr(aggregate, "_pg_write_full_chunk", delete_then_write)

    run_aggregation(full=True)

    assert set(DailyStat.objects.values_list("patient_id", flat=True)) == {kept.pk}


def test_full_rebuild_buckets_rows_dated_after_now_by_the_zone_rules() -> None:
    """Readings up to two weeks after "now" cross New York's 2 Nov change: those rows take the day of the
    zone's rules at their own instant, not of the offset in force now."""
    patient = Patient.objects.create(time_zone="America/New_York")
    first = int((datetime(2025, 10, 20, tzinfo=UTC) - START).total_seconds() // 60)
    samples = [("heart_rate", first + 30 + 60 * h, float(h % 90)) for h in range(24 * 20)]
    with time_machine.travel(datetime(2025, 10, 25, 12, 0, tzinfo=UTC), tick=False):
        store(patient, samples)
        DailyStat.objects.filter(patient=patient).delete()

        run_aggregation(full=True)

    assert_matches_raw(patient)


def test_dst_days_have_23_and_25_hourly_samples(now: datetime) -> None:
    patient = Patient.objects.create(time_zone="Europe/London")
    # 26 Oct 2025 in London: 00:00 BST is 25 Oct 23:00 UTC, and the day has 25 hours.
    store(patient, hours(datetime(2025, 10, 25, 20, tzinfo=UTC), 40))

    run_aggregation()

    counts = dict(DailyStat.objects.filter(patient=patient).values_list("day", "count"))
    assert counts[date(2025, 10, 26)] == 25


def test_rolling_average_weights_by_samples_and_a_missing_day_does_not_stretch_the_window(
    now: datetime,
) -> None:
    patient = Patient.objects.create(time_zone="UTC")
    day = 24 * 60
    store(
        patient,
        [("heart_rate", 0, 10.0)]
        + [("heart_rate", day + i, 20.0) for i in range(3)]
        + [("heart_rate", 9 * day, 50.0)],
    )

    run_aggregation()

    rows = {s.day: s for s in DailyStat.objects.filter(patient=patient)}
    second = rows[date(2025, 9, 2)]
    assert second.avg_7d == pytest.approx((10 + 60) / 4)  # not the mean of daily means (15)
    tenth = rows[date(2025, 9, 10)]
    assert tenth.avg_7d == pytest.approx(50.0)  # the 7 calendar days before hold no other sample
    assert tenth.avg_30d == pytest.approx((10 + 60 + 50) / 5)


def test_incremental_run_recomputes_only_touched_days_and_the_29_after(now: datetime) -> None:
    patient = Patient.objects.create(time_zone="UTC")
    store(patient, [("heart_rate", d * 24 * 60, 60.0) for d in range(70)])
    run_aggregation()

    store(patient, [("heart_rate", 10 * 24 * 60 + 5, 90.0)])
    result = run_aggregation()

    assert result.marks_read == 1 and result.daily_rows_recomputed == 1
    assert result.rolling_rows_recomputed == 30
    assert result.rolling_rows_changed == 30
    assert_matches_raw(patient)


def test_a_day_marked_again_during_a_run_stays_marked(now: datetime, monkeypatch: pytest.MonkeyPatch) -> None:
    patient = Patient.objects.create(time_zone="UTC")
    store(patient, [("heart_rate", 0, 60.0)])
    original = aggregate._recompute_snapshot

    def with_concurrent_ingest(result: aggregate.AggregateResult) -> None:
        original(result)
        # An ingest commits a new mark of the same day between the snapshot and the clean-up.
        mark_dirty(patient.pk, [("heart_rate", date(2025, 9, 1))])

    monkeypatch.setattr(aggregate, "_recompute_snapshot", with_concurrent_ingest)
    first = run_aggregation()
    monkeypatch.undo()

    assert first.marks_read == 1 and first.marks_cleared == 0
    assert DailyStatDirty.objects.get(patient=patient).version == 2
    assert run_aggregation().marks_cleared == 1
    assert not DailyStatDirty.objects.exists()


def test_time_zone_change_rebuckets_the_patients_days(now: datetime) -> None:
    patient = Patient.objects.create(time_zone="UTC")
    # 23:30 UTC on 1 Sep is 09:30 on 2 Sep in Sydney.
    store(patient, [("heart_rate", 23 * 60 + 30, 70.0)])
    run_aggregation()
    assert list(DailyStat.objects.filter(patient=patient).values_list("day", flat=True)) == [date(2025, 9, 1)]

    change_patient_time_zone(patient.pk, "Australia/Sydney")

    assert list(DailyStat.objects.filter(patient=patient).values_list("day", flat=True)) == [date(2025, 9, 2)]
    assert Patient.objects.get(pk=patient.pk).time_zone == "Australia/Sydney"


def test_run_job_aggregate_prints_a_json_summary(now: datetime, capsys: pytest.CaptureFixture[str]) -> None:
    patient = Patient.objects.create(time_zone="UTC")
    store(patient, [("heart_rate", 0, 60.0)])

    call_command("run_job", "aggregate-wearable-data", "--json")
    incremental = json.loads(capsys.readouterr().out)
    call_command("run_job", "aggregate-wearable-data", "--full", "--json")
    full = json.loads(capsys.readouterr().out)

    assert incremental["mode"] == "incremental" and incremental["marks_cleared"] == 1
    assert full["mode"] == "full" and full["daily_rows_changed"] == full["rolling_rows_changed"] == 0
    assert DailyStat.objects.get(patient=patient).avg_7d == 60.0


def test_run_job_rejects_an_option_of_another_job() -> None:
    with pytest.raises(CommandError, match="--dry-run does not apply"):
        call_command("run_job", "aggregate-wearable-data", "--dry-run")


def test_both_jobs_are_scheduled_after_the_sync() -> None:
    crons = {s.name: s.cron for s in all_schedules()}
    assert crons["aggregate-wearable-data"] == "30 4 * * *"  # daily, after the 03:00 sync
    assert crons["cleanup-wearable-data"] == "0 2 * * 0"  # weekly
    assert json.dumps(crons)
