"""The raw-reading write path: idempotent on the natural key, daily stats recomputed from raw rows."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.db import transaction

from connections.models import Patient
from readings.models import DailyStat, GlucoseReading, WearableReading
from readings.store import local_day_bounds, store_batch

# The rows are dated March 2026: the suite runs at its epoch (conftest.FROZEN_NOW), inside the retention horizon.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_time")]


def ts(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(sep=" ")


def hr_rows(start: datetime, minutes: int, value: float = 60.0) -> list[tuple]:
    return [
        ("heart_rate", "oura", "ring", ts(start + timedelta(minutes=n)), None, value + n % 5, "bpm")
        for n in range(minutes)
    ]


def store(patient: Patient, readings: list[tuple], glucose: list[tuple] | None = None):
    with transaction.atomic():
        return store_batch(patient.pk, patient.time_zone, readings, glucose or [], connection_id=None)


@pytest.fixture
def patient() -> Patient:
    return Patient.objects.create(junction_user_id="u-1", time_zone="Europe/Berlin")


def test_storing_the_same_rows_twice_writes_nothing_the_second_time(patient: Patient) -> None:
    rows = hr_rows(datetime(2026, 3, 1, 8, tzinfo=UTC), 120)
    first = store(patient, rows)
    second = store(patient, rows)
    assert first.readings_written == 120
    assert second.readings_written == 0
    assert second.touched == set()
    assert WearableReading.objects.filter(patient=patient).count() == 120


def test_a_key_twice_in_one_batch_is_stored_once(patient: Patient) -> None:
    rows = hr_rows(datetime(2026, 3, 1, 8, tzinfo=UTC), 10)
    store(patient, rows + rows[:3])
    assert WearableReading.objects.filter(patient=patient).count() == 10


def test_a_changed_value_updates_the_row_and_its_day(patient: Patient) -> None:
    start = datetime(2026, 3, 1, 8, tzinfo=UTC)
    store(patient, hr_rows(start, 10, value=60))
    result = store(patient, hr_rows(start, 10, value=70))
    assert result.readings_written == 10
    stat = DailyStat.objects.get(patient=patient, metric="heart_rate", day=date(2026, 3, 1))
    assert stat.count == 10
    assert stat.min == 70


def test_daily_stats_equal_a_recomputation_from_raw_rows(patient: Patient) -> None:
    rows = hr_rows(datetime(2026, 3, 1, 20, tzinfo=UTC), 8 * 60)  # crosses local midnight in Berlin
    store(patient, rows)
    tz = ZoneInfo(patient.time_zone)
    for stat in DailyStat.objects.filter(patient=patient, metric="heart_rate"):
        start, end = local_day_bounds(stat.day, tz)
        values = [r[5] for r in rows if start <= datetime.fromisoformat(r[3]) < end]
        assert stat.count == len(values)
        assert stat.sum == pytest.approx(sum(values))
        assert stat.avg == pytest.approx(sum(values) / len(values))
        assert (stat.min, stat.max) == (min(values), max(values))
    assert DailyStat.objects.filter(patient=patient).count() == 2


def test_dst_day_has_23_hours_of_samples(patient: Patient) -> None:
    # Berlin springs forward on 2026-03-29: that local day is 23 hours long.
    tz = ZoneInfo("Europe/Berlin")
    start, end = local_day_bounds(date(2026, 3, 29), tz)
    assert end - start == timedelta(hours=23)
    minutes = int((end - start).total_seconds() // 60)
    store(patient, hr_rows(start - timedelta(hours=1), minutes + 120))
    stat = DailyStat.objects.get(patient=patient, metric="heart_rate", day=date(2026, 3, 29))
    assert stat.count == 23 * 60


def test_glucose_is_stored_once_and_aggregated_in_mg_dl(patient: Patient) -> None:
    start = datetime(2026, 3, 1, 10, tzinfo=UTC)
    glucose = [
        (
            "freestyle_libre",
            ts(start + timedelta(minutes=5 * n)),
            100.0 + n,
            (100.0 + n) / 18.0156,
            "mmol/L",
            "",
            None,
            "automatic",
        )
        for n in range(12)
    ]
    assert store(patient, [], glucose).glucose_written == 12
    assert store(patient, [], glucose).glucose_written == 0
    assert GlucoseReading.objects.filter(patient=patient).count() == 12
    stat = DailyStat.objects.get(patient=patient, metric="glucose")
    assert (stat.count, stat.min, stat.max) == (12, 100.0, 111.0)


def test_stored_timestamps_are_aware_utc(patient: Patient) -> None:
    moment = datetime(2026, 3, 1, 8, 30, 15, tzinfo=UTC)
    store(patient, hr_rows(moment, 1))
    reading = WearableReading.objects.get(patient=patient)
    assert reading.measured_at == moment
    assert reading.measured_at.tzinfo is not None
