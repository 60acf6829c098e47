"""Data completeness per patient, kind of data and patient-local day: received against expected.

| kind | received | expected a day |
|---|---|---|
| `glucose` | 5-minute slots with a CGM reading (any source) | the day's minutes / 5 (288; 276 or 300 on DST days) |
| `heart_rate` | minutes with a heart-rate sample (minutes the device was worn) | the day's minutes (1440 ± 60) |
| `sleep` | a night's sleep (a `sleep_duration` record) | 1 |

Kept incrementally: `readings.store.refresh_daily_stats` calls `refresh_completeness` in the ingest's
transaction for exactly the (metric, day) keys the ingest changed, so completeness is as fresh as the daily
statistics and never needs a scan. A day without any row has received 0 (the readers fill it in).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from django.db import connection as db

GLUCOSE_METRIC = "glucose"


@dataclass(frozen=True)
class Kind:
    name: str
    metric: str  # the metric whose rows it counts ("glucose": the glucose table)
    slot_seconds: int | None  # received = distinct slots of this length; None = at most one a day


KINDS: dict[str, Kind] = {
    "glucose": Kind("glucose", GLUCOSE_METRIC, 300),
    "heart_rate": Kind("heart_rate", "heart_rate", 60),
    "sleep": Kind("sleep", "sleep_duration", None),
}
BY_METRIC = {kind.metric: kind for kind in KINDS.values()}

_DAY_SECONDS = """EXTRACT(EPOCH FROM ((d.day + 1)::timestamp AT TIME ZONE %(tz)s)
                                    - (d.day::timestamp AT TIME ZONE %(tz)s))"""

_PG_GLUCOSE = f"""
INSERT INTO patient_data_completeness AS c (patient_id, kind, day, received, expected, updated_at)
SELECT %(patient)s, 'glucose', d.day, count(DISTINCT floor(EXTRACT(EPOCH FROM g.measured_at) / 300)),
       ({_DAY_SECONDS} / 300)::int, now()
FROM unnest(%(days)s::date[]) AS d(day)
JOIN patient_glucose_readings g
  ON g.patient_id = %(patient)s
 AND g.measured_at >= (d.day::timestamp AT TIME ZONE %(tz)s)
 AND g.measured_at < ((d.day + 1)::timestamp AT TIME ZONE %(tz)s)
GROUP BY d.day
ON CONFLICT (patient_id, kind, day) DO UPDATE
    SET received = EXCLUDED.received, expected = EXCLUDED.expected, updated_at = EXCLUDED.updated_at
    WHERE (c.received, c.expected) IS DISTINCT FROM (EXCLUDED.received, EXCLUDED.expected)
"""

_PG_WEARABLE = f"""
INSERT INTO patient_data_completeness AS c (patient_id, kind, day, received, expected, updated_at)
SELECT %(patient)s, %(kind)s, d.day,
       CASE WHEN %(slot)s::int IS NULL THEN LEAST(count(*), 1)
            ELSE count(DISTINCT floor(EXTRACT(EPOCH FROM r.measured_at) / %(slot)s::int)) END,
       CASE WHEN %(slot)s::int IS NULL THEN 1 ELSE ({_DAY_SECONDS} / %(slot)s::int)::int END, now()
FROM unnest(%(days)s::date[]) AS d(day)
JOIN patient_wearable_readings r
  ON r.patient_id = %(patient)s AND r.metric = %(metric)s
 AND r.measured_at >= (d.day::timestamp AT TIME ZONE %(tz)s)
 AND r.measured_at < ((d.day + 1)::timestamp AT TIME ZONE %(tz)s)
GROUP BY d.day
ON CONFLICT (patient_id, kind, day) DO UPDATE
    SET received = EXCLUDED.received, expected = EXCLUDED.expected, updated_at = EXCLUDED.updated_at
    WHERE (c.received, c.expected) IS DISTINCT FROM (EXCLUDED.received, EXCLUDED.expected)
"""


def refresh_completeness(patient_id: int, time_zone: str, touched: Iterable[tuple[str, date]]) -> None:
    """Recount the completeness of the (metric, local day) keys an ingest changed (its transaction)."""
    by_kind: dict[str, set[date]] = {}
    for metric, day in touched:
        kind = BY_METRIC.get(metric)
        if kind is not None:
            by_kind.setdefault(kind.name, set()).add(day)
    if not by_kind:
        return
    with db.cursor() as cursor:
        for name, days in sorted(by_kind.items()):
            kind = KINDS[name]
            params = {"patient": patient_id, "tz": time_zone, "days": sorted(days)}
            if kind.metric == GLUCOSE_METRIC:
                cursor.execute(_PG_GLUCOSE, params)
            else:
                cursor.execute(
                    _PG_WEARABLE, {**params, "kind": name, "metric": kind.metric, "slot": kind.slot_seconds}
                )


def expected_on(kind: str, day: date, tz: ZoneInfo) -> int:
    """What a worn device sends on local `day` (the oracle the SQL's count is compared to)."""
    spec = KINDS[kind]
    if spec.slot_seconds is None:
        return 1
    # In UTC: subtracting two times of one zone in Python ignores a DST change between them.
    start = datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz).astimezone(UTC)
    return int((end - start).total_seconds() // spec.slot_seconds)


@dataclass(frozen=True)
class DayShare:
    day: date
    received: int
    expected: int

    @property
    def share(self) -> float:
        return 0.0 if not self.expected else min(1.0, self.received / self.expected)


def daily_shares(patient_id: int, time_zone: str, kind: str, first: date, last: date) -> list[DayShare]:
    """One entry per local day in [first, last]: what the table holds, a day without a row as 0 received."""
    from readings.models import DataCompleteness

    tz = ZoneInfo(time_zone)
    stored = {
        row.day: row
        for row in DataCompleteness.objects.filter(
            patient_id=patient_id, kind=kind, day__gte=first, day__lte=last
        )
    }
    out = []
    day = first
    while day <= last:
        row = stored.get(day)
        out.append(
            DayShare(day, row.received, row.expected) if row else DayShare(day, 0, expected_on(kind, day, tz))
        )
        day += timedelta(days=1)
    return out


def window_share(shares: list[DayShare]) -> float | None:
    """Received over expected across the days (each day's received capped at its expected)."""
    expected = sum(s.expected for s in shares)
    if not expected:
        return None
    return sum(min(s.received, s.expected) for s in shares) / expected


# What a day usually expects, for set-based filters over many patients (DST days differ by 1/24).
TYPICAL_EXPECTED = {"glucose": 288, "heart_rate": 1440, "sleep": 1}
WINDOW_DAYS = 14
UNDER_SHARE = 0.7


def window_days(today: date, days: int = WINDOW_DAYS) -> tuple[date, date]:
    return today - timedelta(days=days - 1), today


def completeness_summary(
    patient_id: int, time_zone: str, kinds: Iterable[str], today: date, days: int = WINDOW_DAYS
) -> dict[str, object]:
    """The read API's `data_completeness`: the share of expected data received over the last `days` local
    days, overall (the first kind's) and per kind."""
    first, last = window_days(today, days)
    by_kind = {kind: window_share(daily_shares(patient_id, time_zone, kind, first, last)) for kind in kinds}
    primary = next(iter(by_kind.values()), None)
    return {"days": days, "share": primary, "by_kind": by_kind}


_REBUILD_DAY_SLOTS = """(EXTRACT(EPOCH FROM ((x.day + 1)::timestamp AT TIME ZONE x.tz)
                                   - (x.day::timestamp AT TIME ZONE x.tz)) / {slot})::int"""

_REBUILD_GLUCOSE = f"""
INSERT INTO patient_data_completeness AS c (patient_id, kind, day, received, expected, updated_at)
SELECT x.patient_id, 'glucose', x.day, x.received, {_REBUILD_DAY_SLOTS.format(slot=300)}, now()
FROM (
    SELECT g.patient_id, p.time_zone AS tz, (g.measured_at AT TIME ZONE p.time_zone)::date AS day,
           count(DISTINCT floor(EXTRACT(EPOCH FROM g.measured_at) / 300)) AS received
    FROM patient_glucose_readings g JOIN patients p ON p.id = g.patient_id
    GROUP BY 1, 2, 3
) x
ON CONFLICT (patient_id, kind, day) DO UPDATE
    SET received = EXCLUDED.received, expected = EXCLUDED.expected, updated_at = EXCLUDED.updated_at
    WHERE (c.received, c.expected) IS DISTINCT FROM (EXCLUDED.received, EXCLUDED.expected)
"""

_REBUILD_WEARABLE = f"""
INSERT INTO patient_data_completeness AS c (patient_id, kind, day, received, expected, updated_at)
SELECT x.patient_id, %(kind)s, x.day,
       CASE WHEN %(slot)s::int IS NULL THEN LEAST(x.records, 1) ELSE x.received END,
       CASE WHEN %(slot)s::int IS NULL THEN 1 ELSE {_REBUILD_DAY_SLOTS.format(slot="%(slot)s::int")} END, now()
FROM (
    SELECT r.patient_id, p.time_zone AS tz, (r.measured_at AT TIME ZONE p.time_zone)::date AS day,
           count(*) AS records,
           count(DISTINCT floor(EXTRACT(EPOCH FROM r.measured_at) / COALESCE(%(slot)s::int, 60))) AS received
    FROM patient_wearable_readings r JOIN patients p ON p.id = r.patient_id
    WHERE r.metric = %(metric)s
    GROUP BY 1, 2, 3
) x
ON CONFLICT (patient_id, kind, day) DO UPDATE
    SET received = EXCLUDED.received, expected = EXCLUDED.expected, updated_at = EXCLUDED.updated_at
    WHERE (c.received, c.expected) IS DISTINCT FROM (EXCLUDED.received, EXCLUDED.expected)
"""


def rebuild_completeness() -> None:
    """Every (patient, kind, day) from the raw rows in one GROUP BY per kind: for data stored before
    completeness was kept (`manage.py rebuild_completeness`, once after deploying it). Days whose raw rows
    retention has removed keep their rows, as the daily statistics do."""
    with db.cursor() as cursor:
        cursor.execute(_REBUILD_GLUCOSE)
        for kind in KINDS.values():
            if kind.metric != GLUCOSE_METRIC:
                cursor.execute(
                    _REBUILD_WEARABLE, {"kind": kind.name, "metric": kind.metric, "slot": kind.slot_seconds}
                )
