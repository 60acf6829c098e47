"""Consensus CGM metrics: every formula pinned on hand-computed cases, and the incremental per-day statistics
equal to an independent recomputation (a property test against a Python oracle written apart from the SQL)."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta

import pytest
import time_machine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.django import TestCase

from connections.models import Patient
from readings import glucose_metrics as gm
from readings.aggregate import change_patient_time_zone, run_aggregation
from readings.models import GlucoseDay
from readings.store import store_batch

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
DAY = date(2026, 3, 8)
MIDNIGHT = datetime(2026, 3, 8, tzinfo=UTC)


def row(minute: float, value: float, flag: str | None = None, source: str = "dexcom") -> tuple:
    at = MIDNIGHT + timedelta(minutes=minute)
    return (source, at.isoformat(sep=" "), float(value), float(value), "mg/dL", "", None, "", flag)


def store(patient: Patient, rows: list[tuple]) -> None:
    store_batch(patient.pk, patient.time_zone, [], rows, connection_id=None)


def day_of(patient: Patient, day: date = DAY) -> GlucoseDay:
    return GlucoseDay.objects.get(patient=patient, day=day)


@pytest.fixture
def patient(db) -> Patient:  # type: ignore[no-untyped-def]
    with time_machine.travel(NOW, tick=False):
        yield Patient.objects.create(time_zone="UTC")


@pytest.fixture(autouse=True)
def _frozen():  # type: ignore[no-untyped-def]
    with time_machine.travel(NOW, tick=False):
        yield


# --- Formulas -----------------------------------------------------------------------------------------------


def test_gmi_is_3_31_plus_0_02392_times_the_mean() -> None:
    assert gm.gmi_percent(150.0) == pytest.approx(6.898)
    assert gm.gmi_percent(100.0) == pytest.approx(5.702)


def test_gri_weights_the_bands_and_is_capped_at_100() -> None:
    assert gm.gri(very_low=1.0, low=3.0, high=20.0, very_high=5.0) == pytest.approx(34.2)
    assert gm.gri(very_low=40.0, low=0.0, high=0.0, very_high=0.0) == 100.0


@pytest.mark.parametrize(
    ("value", "zone"),
    [(0.0, "A"), (20.0, "A"), (20.01, "B"), (40.0, "B"), (40.5, "C"), (60.0, "C"), (80.0, "D"), (80.1, "E")],
)
def test_gri_zones_have_inclusive_upper_bounds(value: float, zone: str) -> None:
    assert gm.gri_zone(value) == zone


def test_band_edges_at_exactly_54_70_140_180_and_250(patient: Patient) -> None:
    values = [53.9, 54.0, 69.9, 70.0, 140.0, 140.1, 180.0, 180.1, 250.0, 250.1]
    store(patient, [row(5 * i, v) for i, v in enumerate(values)])

    d = day_of(patient)
    assert d.readings == 10 and d.active_minutes == 50.0
    assert (d.very_low_minutes, d.low_minutes, d.target_minutes, d.high_minutes, d.very_high_minutes) == (
        5.0,
        10.0,
        20.0,  # 70, 140, 140.1, 180
        10.0,  # 180.1, 250
        5.0,
    )
    assert d.tight_minutes == 10.0  # 70 and 140


def test_cv_is_the_sd_over_the_mean_from_pooled_sums(patient: Patient) -> None:
    store(patient, [row(5 * i, 100 if i % 2 else 200) for i in range(288)])

    m = gm.window_metrics(patient.pk, "UTC", DAY, 1)
    assert m.mean_mg_dl == pytest.approx(150.0)
    assert m.sd_mg_dl == pytest.approx(50.0)
    assert m.cv_percent == pytest.approx(100 / 3)
    assert m.active_percent == pytest.approx(100.0)
    assert m.gmi_percent == pytest.approx(6.898)


def test_active_percent_with_a_gap_and_gmi_absent_below_70_percent(patient: Patient) -> None:
    full_day = [row(5 * i, 120) for i in range(288)]
    one_hour_gap = [r for i, r in enumerate(full_day) if not 100 <= i < 112]
    store(patient, one_hour_gap)
    m = gm.window_metrics(patient.pk, "UTC", DAY, 1)
    assert m.readings == 276
    assert m.active_percent == pytest.approx(100 * 276 / 288)  # the reading before the gap stands for 5 min
    assert m.gmi_percent is not None

    # Over 2 days with one worn: 47.9% active, no GMI, and the reason says why.
    two = gm.window_metrics(patient.pk, "UTC", DAY + timedelta(days=1), 2)
    assert two.active_percent == pytest.approx(100 * 276 * 5 / 2880)
    assert two.days_worn == 1 and two.gmi_percent is None
    assert "below the 70%" in (two.gmi_absent_reason or "")


def test_active_percent_counts_the_23_hour_dst_day(db) -> None:  # type: ignore[no-untyped-def]
    patient = Patient.objects.create(time_zone="Europe/Berlin")
    start = datetime(2026, 3, 28, 23, 0, tzinfo=UTC)  # local midnight of the 23-hour 29 March
    store(
        patient,
        [
            (
                "dexcom",
                (start + timedelta(minutes=5 * i)).isoformat(sep=" "),
                120.0,
                120.0,
                "mg/dL",
                "",
                None,
                "",
                None,
            )
            for i in range(276)
        ],
    )
    m = gm.window_metrics(patient.pk, "Europe/Berlin", date(2026, 3, 29), 1)
    assert m.active_percent == pytest.approx(100.0)


def test_episodes_of_14_minutes_do_not_count_and_of_15_do(patient: Patient) -> None:
    # 0, 5, 9 below 70 then back at 14: minutes 5 + 4 + 5 = 14.
    store(patient, [row(0, 60), row(5, 60), row(9, 60), row(14, 120), row(19, 120)])
    assert day_of(patient).hypo_episodes == 0
    # 100, 105, 110 below 54 then back at 115: 15 minutes, a level-2 and a level-1 episode.
    store(patient, [row(100, 50), row(105, 50), row(110, 50), row(115, 120)])
    d = day_of(patient)
    assert (d.hypo_episodes, d.severe_hypo_episodes) == (1, 1)
    # Highs: 15 minutes above 250 is one level-2 and one level-1 hyper episode.
    store(patient, [row(200, 260), row(205, 260), row(210, 260), row(215, 150)])
    d = day_of(patient)
    assert (d.hyper_episodes, d.severe_hyper_episodes) == (1, 1)


def test_a_gap_longer_than_two_intervals_ends_an_episode(patient: Patient) -> None:
    store(patient, [row(0, 60), row(5, 60), row(20, 60), row(25, 60)])  # 10 + 10 minutes, not 15
    assert day_of(patient).hypo_episodes == 0


def test_an_episode_crossing_midnight_counts_on_the_day_it_starts(patient: Patient) -> None:
    store(patient, [row(1430 + 5 * i, 45) for i in range(6)] + [row(1460, 120)])
    assert (
        day_of(patient).severe_hypo_episodes,
        day_of(patient, DAY + timedelta(days=1)).severe_hypo_episodes,
    ) == (
        1,
        0,
    )


def test_readings_beyond_the_sensor_range_count_in_their_band(patient: Patient) -> None:
    store(patient, [row(0, 40, "below"), row(5, 400, "above"), row(10, 120)])
    d = day_of(patient)
    assert (d.below_range, d.above_range) == (1, 1)
    assert (d.very_low_minutes, d.very_high_minutes, d.target_minutes) == (5.0, 5.0, 5.0)


def test_two_routes_a_few_seconds_apart_weigh_as_one_reading_in_time(patient: Patient) -> None:
    rows = [row(5 * i, 120) for i in range(12)]
    doubled = rows + [row(5 * i + 0.05, 120, source="dexcom_junction") for i in range(12)]
    store(patient, doubled)
    d = day_of(patient)
    # 12 x 5 minutes, plus the 3 seconds the last copy comes after the last original.
    assert d.readings == 24 and d.active_minutes == pytest.approx(60.05)


def test_change_against_the_previous_period(patient: Patient) -> None:
    store(patient, [row(5 * i - 1440, 100) for i in range(288)] + [row(5 * i, 160) for i in range(288)])
    s = gm.summary(patient.pk, "UTC", DAY, 1)
    assert s.current.mean_mg_dl == pytest.approx(160) and s.previous.mean_mg_dl == pytest.approx(100)
    assert s.change["mean_mg_dl"] == pytest.approx(60)
    assert s.change["target_percent"] == pytest.approx(0)


def test_consensus_targets_say_which_are_met(patient: Patient) -> None:
    store(patient, [row(5 * i, 120) for i in range(288)])
    targets = {t["metric"]: t for t in gm.targets_for(gm.window_metrics(patient.pk, "UTC", DAY, 1))}
    assert targets["target_percent"]["met"] is True and targets["very_low_percent"]["met"] is True
    assert targets["active_percent"]["met"] is True and targets["cv_percent"]["value"] == pytest.approx(0)


def test_agp_percentiles_per_15_minute_slot(patient: Patient) -> None:
    # Three days: 00:00-00:14 holds 100, 110, 120 (one reading per 5 minutes), so p50 is 110.
    rows = []
    for day in range(3):
        for i in range(3):
            rows.append(row(day * 1440 + 5 * i, 100 + 10 * i + day))
    store(patient, rows)
    slots = gm.agp(patient.pk, "UTC", DAY + timedelta(days=2), 14)
    assert [s.slot for s in slots] == [0]
    only = slots[0]
    assert only.readings == 9 and only.p50 == pytest.approx(111.0)
    assert only.p5 < only.p25 < only.p50 < only.p75 < only.p95


# --- Incremental equals recomputation -------------------------------------------------------------------------


def oracle(readings: list[tuple[float, float]], zone: str) -> dict[date, dict[str, float]]:
    """Per-day sums from the reading list alone (minute offsets from MIDNIGHT UTC), independent of the SQL."""
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(zone)
    points = sorted({m: v for m, v in readings}.items())  # one reading per instant (the store's key)
    days: dict[date, dict[str, float]] = {}
    for i, (minute, value) in enumerate(points):
        weight = min(points[i + 1][0] - minute, 5.0) if i + 1 < len(points) else 5.0
        local = (MIDNIGHT + timedelta(minutes=minute)).astimezone(tz).date()
        d = days.setdefault(local, {"readings": 0, "active": 0.0, "sw": 0.0, "sw2": 0.0, "bands": [0.0] * 6})
        d["readings"] += 1
        d["active"] += weight
        d["sw"] += weight * value
        d["sw2"] += weight * value * value
        band = 0 if value < 54 else 1 if value < 70 else 2 if value <= 180 else 3 if value <= 250 else 4
        d["bands"][band] += weight
        if 70 <= value <= 140:
            d["bands"][5] += weight
    # Episodes: maximal runs inside a band, broken by a gap over 10 minutes, lasting >= 15 minutes.
    for kind, inside in enumerate((lambda v: v < 70, lambda v: v < 54, lambda v: v > 180, lambda v: v > 250)):
        run_start, run_minutes, previous = None, 0.0, None
        runs = []
        for i, (minute, value) in enumerate(points):
            weight = min(points[i + 1][0] - minute, 5.0) if i + 1 < len(points) else 5.0
            continues = previous is not None and minute - previous <= 10.0
            if inside(value):
                if run_start is None or not continues:
                    if run_start is not None:
                        runs.append((run_start, run_minutes))
                    run_start, run_minutes = minute, 0.0
                run_minutes += weight
            elif run_start is not None:
                runs.append((run_start, run_minutes))
                run_start = None
            previous = minute
        if run_start is not None:
            runs.append((run_start, run_minutes))
        for start, minutes in runs:
            if minutes >= 15.0 - 1e-9:
                local = (MIDNIGHT + timedelta(minutes=start)).astimezone(tz).date()
                days[local][f"episodes{kind}"] = days[local].get(f"episodes{kind}", 0) + 1
    return days


def stored_days(patient: Patient) -> dict[date, dict[str, float]]:
    out = {}
    for d in GlucoseDay.objects.filter(patient=patient):
        out[d.day] = {
            "readings": d.readings,
            "active": d.active_minutes,
            "sw": d.sum_weighted,
            "sw2": d.sum_weighted_sq,
            "bands": [
                d.very_low_minutes,
                d.low_minutes,
                d.target_minutes,
                d.high_minutes,
                d.very_high_minutes,
                d.tight_minutes,
            ],
            **{
                f"episodes{k}": n
                for k, n in enumerate(
                    (d.hypo_episodes, d.severe_hypo_episodes, d.hyper_episodes, d.severe_hyper_episodes)
                )
                if n
            },
        }
    return out


def assert_days_equal(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for day, values in expected.items():
        got = actual[day]
        assert got.keys() == values.keys(), day
        for key, value in values.items():
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-6), (day, key)


# Minutes in a 3-day span, on a 1-minute grid so gaps, ties of spacing and 14/15-minute runs all occur.
reading = st.tuples(
    st.integers(0, 3 * 1440 - 1).map(float),
    st.sampled_from([40.0, 53.0, 54.0, 69.0, 70.0, 120.0, 140.0, 180.0, 181.0, 250.0, 260.0, 400.0]),
)
runs = st.builds(
    lambda start, step, count, value: [(float(start + step * i), value) for i in range(count)],
    st.integers(0, 3 * 1440 - 60),
    st.sampled_from([1, 4, 5, 6, 11]),
    st.integers(1, 8),
    st.sampled_from([45.0, 60.0, 200.0, 300.0]),
)
batches = st.lists(st.lists(st.one_of(reading, runs), min_size=1, max_size=12), min_size=1, max_size=5)


def flatten(batch: list) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for item in batch:
        out.extend(item if isinstance(item, list) else [item])
    return out


class IncrementalEqualsRecomputation(TestCase):
    @settings(
        max_examples=40,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(zone=st.sampled_from(["UTC", "America/New_York", "Asia/Kathmandu"]), ingests=batches)
    def test_incremental_days_equal_the_oracle_and_a_full_rebuild(self, zone: str, ingests: list) -> None:
        with time_machine.travel(NOW, tick=False):
            patient = Patient.objects.create(time_zone=zone)
            everything: dict[float, float] = {}
            for batch in ingests:
                rows = flatten(batch)
                # A later batch may restate an instant with a new value (the store updates it in place).
                store(patient, [row(m, v) for m, v in {m: v for m, v in rows}.items()])
                everything.update(dict(rows))
            expected = oracle(list(everything.items()), zone)
            assert_days_equal(stored_days(patient), expected)

            # The aggregate job recomputes the days its marks name (and their neighbours).
            GlucoseDay.objects.filter(patient=patient).delete()
            run_aggregation()
            assert_days_equal(stored_days(patient), expected)

            gm.rebuild_glucose_days([patient.pk])
            assert_days_equal(stored_days(patient), expected)
            run_aggregation(full=True)
            assert_days_equal(stored_days(patient), expected)

    @settings(
        max_examples=10,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(ingests=batches)
    def test_a_zone_change_rebuckets_the_glucose_days(self, ingests: list) -> None:
        with time_machine.travel(NOW, tick=False):
            patient = Patient.objects.create(time_zone="UTC")
            everything: dict[float, float] = {}
            for batch in ingests:
                rows = {m: v for m, v in flatten(batch)}
                store(patient, [row(m, v) for m, v in rows.items()])
                everything.update(rows)
            change_patient_time_zone(patient.pk, "Pacific/Chatham")
            assert_days_equal(stored_days(patient), oracle(list(everything.items()), "Pacific/Chatham"))


def test_window_sums_equal_a_rescan(patient: Patient) -> None:
    values = [60 + (i * 37) % 260 for i in range(3 * 288)]
    store(patient, [row(5 * i - 1440, v) for i, v in enumerate(values)])
    m = gm.window_metrics(patient.pk, "UTC", DAY + timedelta(days=1), 3)
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    assert m.mean_mg_dl == pytest.approx(mean) and m.sd_mg_dl == pytest.approx(sd)
    assert m.target_percent == pytest.approx(100 * sum(70 <= v <= 180 for v in values) / len(values))


def test_bulk_and_rolling_windows_agree_with_the_single_window(patient: Patient) -> None:
    other = Patient.objects.create(time_zone="Asia/Kathmandu")
    store(patient, [row(5 * i - 2880, 60 + (i * 53) % 300) for i in range(4 * 288)])
    store(other, [row(5 * i - 2880, 90 + (i * 29) % 200) for i in range(3 * 288)])

    bulk = gm.bulk_window_metrics(DAY + timedelta(days=1), 7)
    rolling = gm.rolling(patient.pk, "UTC", DAY + timedelta(days=1), windows=(7, 14))

    for p in (patient, other):
        single = gm.window_metrics(p.pk, p.time_zone, DAY + timedelta(days=1), 7)
        assert bulk[p.pk].as_dict() == pytest.approx(single.as_dict())
    assert rolling[7].current.as_dict() == pytest.approx(bulk[patient.pk].as_dict())
    assert rolling[14].current.days == 14 and rolling[14].current.readings == 4 * 288
    assert rolling[7].previous.readings == 0 and rolling[7].change["mean_mg_dl"] is None
