"""Issue 13's "done when": every daily and rolling statistic equals an independent recomputation from the raw rows
under the resolution rules, through zone changes, readings arriving by two routes, late readings and retention.

The oracle below is plain Python over the raw rows read back with the ORM: it buckets rows by local day (UTC
date for day-level summaries), decides which copy of a measurement counts (best route within the tolerance),
aggregates, and windows by hand. It shares no SQL with the production code. Days past the frozen horizon are
final: the oracle expects the values it computed for them while they were still live.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.test import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.django import TransactionTestCase

from connections.engine import store_batch_and_cursor
from connections.models import Connection, Patient, Provider
from connections.providers.contract import Batch
from readings.aggregate import change_patient_time_zone, run_aggregation
from readings.models import DailyStat, GlucoseReading, WearableReading
from readings.retention import run_cleanup
from readings.writers import DatabaseWriter

START = datetime(2025, 11, 1, tzinfo=UTC)
RETENTION_DAYS = 20
ZONES = ["UTC", "Pacific/Kiritimati", "America/New_York", "Asia/Kathmandu", "Pacific/Pago_Pago"]
# Stated independently of readings/catalogue.py and readings/resolution.py.
SUMMED = {"steps", "activity_steps"}
DAY_LEVEL = {"activity_steps"}
PRIORITY = {"dexcom": 2, "junction": 1}
ROUTE_ORDER = {"dexcom": 1, "junction": 3}  # the registry keys sorted: dexcom, junction, libre, whoop
GLUCOSE_TOLERANCE = timedelta(seconds=150)


def text(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(sep=" ")


# --- the oracle ---------------------------------------------------------------------------------------------


def counted_glucose(rows: list[tuple[str, datetime, float, str | None]]) -> list[tuple[datetime, float]]:
    """(source, measured_at, value, route) -> the (measured_at, value) of the copies that count."""

    def rank(route: str | None) -> int:
        return PRIORITY.get(route or "", 0) * 1000 + ROUTE_ORDER.get(route or "", 0)

    def family(source: str) -> str:
        return "dexcom" if source.startswith("dexcom") else source

    out = []
    for source, moment, value, route in rows:
        beaten = any(
            family(other_source) == family(source)
            and abs(other_moment - moment) <= GLUCOSE_TOLERANCE
            and rank(other_route) > rank(route)
            for other_source, other_moment, _, other_route in rows
        )
        if not beaten:
            out.append((moment, value))
    return out


def oracle_daily(patient: Patient) -> dict[tuple[str, date], tuple[int, float, float, float]]:
    """(metric, day) -> (count, sum, min, max) from the raw rows that count."""
    tz = ZoneInfo(Patient.objects.get(pk=patient.pk).time_zone)
    values: dict[tuple[str, date], list[float]] = defaultdict(list)
    for metric, moment, value in WearableReading.objects.filter(patient=patient).values_list(
        "metric", "measured_at", "value"
    ):
        day = moment.astimezone(UTC).date() if metric in DAY_LEVEL else moment.astimezone(tz).date()
        values[(metric, day)].append(value)
    routes = dict(Connection.objects.filter(patient=patient).values_list("pk", "provider"))
    glucose = [
        (source, moment, value, routes.get(connection_id))
        for source, moment, value, connection_id in GlucoseReading.objects.filter(
            patient=patient
        ).values_list("source", "measured_at", "value_mg_dl", "connection_id")
    ]
    for moment, value in counted_glucose(glucose):
        values[("glucose", moment.astimezone(tz).date())].append(value)
    return {key: (len(v), sum(v), min(v), max(v)) for key, v in values.items()}


def first_live_day(now: datetime) -> date:
    return (now - timedelta(days=RETENTION_DAYS) + timedelta(days=2)).date()


def rolling(daily: dict[tuple[str, date], tuple[int, float, float, float]]) -> dict[tuple[str, date], tuple]:
    out = {}
    for (metric, day), _ in daily.items():
        windows = []
        for span in (7, 30):
            window = [daily.get((metric, day - timedelta(days=i))) for i in range(span)]
            window = [w for w in window if w]
            if metric in SUMMED:
                windows.append(sum(w[1] for w in window) / len(window))
            else:
                windows.append(sum(w[1] for w in window) / sum(w[0] for w in window))
        out[(metric, day)] = tuple(windows)
    return out


# --- the sequence ---------------------------------------------------------------------------------------------

minute = st.integers(0, 30 * 24 * 60)
value = st.integers(40, 300).map(float)
glucose_op = st.tuples(
    st.just("glucose"),
    st.sampled_from(["dexcom", "junction"]),
    st.lists(st.tuples(minute, value), max_size=12),
)
hr_op = st.tuples(st.just("heart_rate"), st.just("junction"), st.lists(st.tuples(minute, value), max_size=12))
steps_op = st.tuples(st.just("steps"), st.just("junction"), st.lists(st.tuples(minute, value), max_size=8))
activity_op = st.tuples(
    st.just("activity_steps"), st.just("junction"), st.lists(st.tuples(st.integers(0, 30), value), max_size=3)
)
zone_op = st.tuples(st.just("zone"), st.sampled_from(ZONES), st.just([]))
advance_op = st.tuples(st.just("advance"), st.integers(1, 12).map(str), st.just([]))
ops = st.lists(
    st.one_of(glucose_op, glucose_op, hr_op, steps_op, activity_op, zone_op, advance_op),
    min_size=3,
    max_size=10,
)


def rows_for(kind: str, route: str, items: list[tuple[int, float]], now: datetime) -> Batch:
    # Late data: stamps anywhere in the month before now (some before the horizon).
    base = now - timedelta(days=30)
    batch = Batch()
    for position, (offset, amount) in enumerate(items):
        if kind == "glucose":
            # The direct route stamps the second; Junction relays the same reading at the minute.
            moment = base + timedelta(minutes=5 * (offset // 5), seconds=(37 if route == "dexcom" else 0))
            source = "dexcom" if route == "dexcom" else "dexcom_v3"
            batch.glucose.append((source, text(moment), amount, amount, "mg/dL", "", None, ""))
        elif kind == "activity_steps":
            day = (base + timedelta(days=offset)).date()
            batch.readings.append(
                (kind, "oura", "ring", f"{day.isoformat()} 00:00:00+00:00", None, amount, "count")
            )
        else:
            moment = base + timedelta(minutes=offset, seconds=position % 3)
            end = text(moment + timedelta(minutes=15)) if kind == "steps" else None
            unit = "count" if kind == "steps" else "bpm"
            batch.readings.append((kind, "oura", "ring", text(moment), end, amount, unit))
    return batch


class OneTruthProperties(TransactionTestCase):
    """Committed rows, as in production: retention drops whole partitions, which PostgreSQL refuses while a
    transaction still holds the rows' deferred checks (so no rolled-back TestCase here)."""

    @settings(
        max_examples=15,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(zone=st.sampled_from(ZONES), sequence=ops)
    def test_every_daily_and_rolling_statistic_equals_the_oracle(
        self, zone: str, sequence: list[Any]
    ) -> None:
        now = START + timedelta(days=40)
        frozen: dict[tuple[str, date], tuple[int, float, float, float]] = {}
        with override_settings(RAW_READING_RETENTION_DAYS=RETENTION_DAYS):
            patient = Patient.objects.create(time_zone=zone)
            connections = {
                key: Connection.objects.create(patient=patient, provider=key)
                for key in (Provider.DEXCOM, Provider.JUNCTION)
            }
            for kind, arg, items in sequence:
                with time_machine.travel(now, tick=False):
                    if kind == "zone":
                        change_patient_time_zone(patient.pk, arg)
                    elif kind == "advance":
                        # The schedule: aggregate, then time passes and retention runs.
                        run_aggregation()
                        # What the live days hold now; a day that freezes keeps it.
                        live = first_live_day(now)
                        frozen = {k: v for k, v in frozen.items() if k[1] < live}
                        frozen |= {k: v for k, v in oracle_daily(patient).items() if k[1] >= live}
                        now += timedelta(days=int(arg))
                        with time_machine.travel(now, tick=False):
                            run_cleanup()
                    else:
                        batch = rows_for(kind, arg, items, now)
                        store_batch_and_cursor(connections[arg], batch, DatabaseWriter())
            with time_machine.travel(now, tick=False):
                run_aggregation()
                live = first_live_day(now)
                expected = {k: v for k, v in frozen.items() if k[1] < live}
                expected |= {k: v for k, v in oracle_daily(patient).items() if k[1] >= live}
                self.assert_stats(patient, expected)
                run_aggregation(full=True)
                self.assert_stats(patient, expected)

    def assert_stats(self, patient: Patient, expected: dict) -> None:
        stored = {
            (s.metric, s.day): ((s.count, s.sum, s.min, s.max), (s.avg_7d, s.avg_30d))
            for s in DailyStat.objects.filter(patient=patient)
        }
        assert stored.keys() == expected.keys()
        windows = rolling(expected)
        for key, daily in expected.items():
            assert stored[key][0] == pytest.approx(daily, rel=1e-9, abs=1e-9), key
            assert stored[key][1] == pytest.approx(windows[key], rel=1e-9, abs=1e-9), key
