"""The one write path for raw readings and their daily statistics.

COPY into a session temp table, then one `INSERT ... SELECT ... ON CONFLICT` per table per batch, returning
the (metric, local day) keys that really changed. Daily statistics are then recomputed in SQL for those keys
only, from the raw rows, so replays and late data converge on the same numbers.

Callers own the transaction (connections.engine stores a user's window, its fingerprints and the cursor in
one). Every statement here is idempotent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from django.db import connection as db

from connections.providers.contract import GlucoseRow, WearableRow
from readings.completeness import refresh_completeness
from readings.dirty import mark_dirty

GLUCOSE_METRIC = "glucose"

# (metric, patient-local day) keys whose raw rows changed.
TouchedDays = set[tuple[str, date]]


@dataclass
class StoreResult:
    readings_written: int = 0
    glucose_written: int = 0
    touched: TouchedDays = field(default_factory=set)

    @property
    def written(self) -> int:
        return self.readings_written + self.glucose_written


def store_batch(
    patient_id: int,
    time_zone: str,
    readings: Sequence[WearableRow],
    glucose: Sequence[GlucoseRow],
    *,
    connection_id: int | None,
) -> StoreResult:
    """Insert or update raw rows and the daily statistics of every day they changed. Needs a transaction."""
    if not (readings or glucose):
        return StoreResult()
    result = _store_postgres(patient_id, time_zone, readings, glucose, connection_id)
    refresh_daily_stats(patient_id, time_zone, result.touched)
    # aggregate-wearable-data recomputes these days' rolling averages (and the 29 days after them).
    mark_dirty(patient_id, result.touched)
    return result


# --- Raw rows -----------------------------------------------------------------------------------------------

_PG_STAGES = """
CREATE TEMP TABLE IF NOT EXISTS stage_wearable (
    metric text, source text, source_type text, measured_at timestamptz, end_at timestamptz,
    value double precision, unit text
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_glucose (
    source text, measured_at timestamptz, value_mg_dl double precision, original_value double precision,
    original_unit text, trend text, trend_rate double precision, device text
) ON COMMIT DELETE ROWS;
"""

# DISTINCT ON: a key twice in one batch would abort ON CONFLICT DO UPDATE ("cannot affect row a second
# time"). The WHERE ... IS DISTINCT FROM makes a replay write nothing: no dead tuples, no touched days.
_PG_MERGE_WEARABLE = """
WITH changed AS (
    INSERT INTO patient_wearable_readings AS r
        (patient_id, metric, source, source_type, measured_at, end_at, value, unit, connection_id)
    SELECT DISTINCT ON (metric, source, source_type, measured_at)
        %(patient)s, metric, source, source_type, measured_at, end_at, value, unit, %(connection)s
    FROM stage_wearable
    ORDER BY metric, source, source_type, measured_at
    ON CONFLICT (patient_id, metric, source, source_type, measured_at) DO UPDATE
        SET value = EXCLUDED.value, end_at = EXCLUDED.end_at, unit = EXCLUDED.unit
        WHERE (r.value, r.end_at, r.unit) IS DISTINCT FROM (EXCLUDED.value, EXCLUDED.end_at, EXCLUDED.unit)
    RETURNING metric, measured_at
)
SELECT metric, (measured_at AT TIME ZONE %(tz)s)::date, count(*) FROM changed GROUP BY 1, 2
"""

_PG_MERGE_GLUCOSE = """
WITH changed AS (
    INSERT INTO patient_glucose_readings AS g
        (patient_id, source, measured_at, value_mg_dl, original_value, original_unit, trend, trend_rate, device,
         connection_id)
    SELECT DISTINCT ON (source, measured_at)
        %(patient)s, source, measured_at, value_mg_dl, original_value, original_unit, trend, trend_rate, device,
        %(connection)s
    FROM stage_glucose
    ORDER BY source, measured_at
    ON CONFLICT (patient_id, source, measured_at) DO UPDATE
        SET value_mg_dl = EXCLUDED.value_mg_dl, original_value = EXCLUDED.original_value,
            original_unit = EXCLUDED.original_unit, trend = EXCLUDED.trend, trend_rate = EXCLUDED.trend_rate,
            device = EXCLUDED.device
        WHERE (g.value_mg_dl, g.trend, g.trend_rate, g.device)
            IS DISTINCT FROM (EXCLUDED.value_mg_dl, EXCLUDED.trend, EXCLUDED.trend_rate, EXCLUDED.device)
    RETURNING measured_at
)
SELECT (measured_at AT TIME ZONE %(tz)s)::date, count(*) FROM changed GROUP BY 1
"""


def _store_postgres(
    patient_id: int,
    time_zone: str,
    readings: Sequence[WearableRow],
    glucose: Sequence[GlucoseRow],
    connection_id: int | None,
) -> StoreResult:
    result = StoreResult()
    params = {"patient": patient_id, "connection": connection_id, "tz": time_zone}
    with db.cursor() as cursor:
        pg = cursor.cursor  # the psycopg cursor under Django's wrapper: COPY needs it
        # The commit's WAL flush cost as much as the insert itself. Without waiting for it, a crash can lose
        # the last few hundred milliseconds of commits, but never part of one: the cursor and fingerprints
        # roll back with their rows, so the next sync fetches that window again. Upstream is the source of
        # truth, which makes this the right trade for ingest (and only for ingest: SET LOCAL).
        pg.execute("SET LOCAL synchronous_commit TO off")
        pg.execute(_PG_STAGES)
        if readings:
            with pg.copy(
                "COPY stage_wearable (metric, source, source_type, measured_at, end_at, value, unit) FROM STDIN"
            ) as copy:
                for row in readings:
                    copy.write_row(row)
            pg.execute(_PG_MERGE_WEARABLE, params)
            for metric, day, count in pg.fetchall():
                result.touched.add((metric, day))
                result.readings_written += count
        if glucose:
            with pg.copy(
                "COPY stage_glucose (source, measured_at, value_mg_dl, original_value, original_unit, trend, "
                "trend_rate, device) FROM STDIN"
            ) as copy:
                for row in glucose:
                    copy.write_row(row)
            pg.execute(_PG_MERGE_GLUCOSE, params)
            for day, count in pg.fetchall():
                result.touched.add((GLUCOSE_METRIC, day))
                result.glucose_written += count
        # ON COMMIT DELETE ROWS empties the stages at commit; empty them now too so a second batch in the
        # same transaction never re-merges the first one.
        pg.execute("TRUNCATE stage_wearable, stage_glucose")
    return result


# --- Daily statistics -------------------------------------------------------------------------------------


def local_day_bounds(day: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """UTC [start, end) of a patient-local day; 23 or 25 hours long across DST changes."""
    start = datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz).astimezone(UTC)
    return start, end


_PG_DAILY_WEARABLE = """
INSERT INTO patient_wearable_daily_stats AS s
    (patient_id, metric, day, avg, min, max, sum, count, updated_at)
SELECT %(patient)s, d.metric, d.day, avg(r.value), min(r.value), max(r.value), sum(r.value), count(*), now()
FROM unnest(%(metrics)s::text[], %(days)s::date[]) AS d(metric, day)
JOIN patient_wearable_readings r
  ON r.patient_id = %(patient)s AND r.metric = d.metric
 AND r.measured_at >= (d.day::timestamp AT TIME ZONE %(tz)s)
 AND r.measured_at < ((d.day + 1)::timestamp AT TIME ZONE %(tz)s)
GROUP BY d.metric, d.day
ON CONFLICT (patient_id, metric, day) DO UPDATE
    SET avg = EXCLUDED.avg, min = EXCLUDED.min, max = EXCLUDED.max, sum = EXCLUDED.sum,
        count = EXCLUDED.count, updated_at = EXCLUDED.updated_at
"""

_PG_DAILY_GLUCOSE = """
INSERT INTO patient_wearable_daily_stats AS s
    (patient_id, metric, day, avg, min, max, sum, count, updated_at)
SELECT %(patient)s, 'glucose', d.day, avg(g.value_mg_dl), min(g.value_mg_dl), max(g.value_mg_dl),
       sum(g.value_mg_dl), count(*), now()
FROM unnest(%(days)s::date[]) AS d(day)
JOIN patient_glucose_readings g
  ON g.patient_id = %(patient)s
 AND g.measured_at >= (d.day::timestamp AT TIME ZONE %(tz)s)
 AND g.measured_at < ((d.day + 1)::timestamp AT TIME ZONE %(tz)s)
GROUP BY d.day
ON CONFLICT (patient_id, metric, day) DO UPDATE
    SET avg = EXCLUDED.avg, min = EXCLUDED.min, max = EXCLUDED.max, sum = EXCLUDED.sum,
        count = EXCLUDED.count, updated_at = EXCLUDED.updated_at
"""


def refresh_daily_stats(patient_id: int, time_zone: str, touched: TouchedDays) -> None:
    """Recompute avg/min/max/sum/count of the given (metric, local day) keys from the raw rows.

    A key whose raw rows are all gone keeps its statistic: retention removes raw rows, never daily stats.
    """
    if not touched:
        return
    wearable = sorted(key for key in touched if key[0] != GLUCOSE_METRIC)
    glucose_days = sorted(day for metric, day in touched if metric == GLUCOSE_METRIC)
    with db.cursor() as cursor:
        if wearable:
            cursor.execute(
                _PG_DAILY_WEARABLE,
                {
                    "patient": patient_id,
                    "tz": time_zone,
                    "metrics": [m for m, _ in wearable],
                    "days": [d for _, d in wearable],
                },
            )
        if glucose_days:
            cursor.execute(_PG_DAILY_GLUCOSE, {"patient": patient_id, "tz": time_zone, "days": glucose_days})
    # Completeness of the same days, kept with the statistics (readings/completeness.py).
    refresh_completeness(patient_id, time_zone, touched)
