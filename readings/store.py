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

from connections.providers.contract import GlucoseRow, WearableRow, full_glucose_row
from readings.catalogue import day_zone_sql
from readings.completeness import refresh_completeness
from readings.dirty import mark_dirty
from readings.glucose_metrics import refresh_glucose_days
from readings.horizon import first_complete_day
from readings.resolution import (
    GLUCOSE_TOLERANCE,
    WEARABLE_MARGIN,
    counted_glucose_sql,
    counted_wearable_sql,
    cross_route_metrics,
)

GLUCOSE_METRIC = "glucose"
# A day-level summary's stamp (00:00 UTC of its date) lies within 14 h of its local day's bounds.
DAY_LEVEL_SLACK = timedelta(hours=14)

# (metric, patient-local day) keys whose raw rows changed.
TouchedDays = set[tuple[str, date]]


@dataclass
class StoreResult:
    readings_written: int = 0
    glucose_written: int = 0
    touched: TouchedDays = field(default_factory=set)
    # Per local day with changed glucose: the first and last changed instant (readings/glucose_metrics.py).
    glucose_changed: dict[date, tuple[datetime, datetime]] = field(default_factory=dict)

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
    # Days before the frozen horizon keep their statistics (readings/horizon.py): a row stored there (callers
    # drop readings past the horizon; a day straddling it can still be touched) never recomputes them.
    first_day = first_complete_day()
    live = {key for key in with_neighbours(result.touched) if key[1] >= first_day}
    refresh_daily_stats(patient_id, time_zone, live)
    refresh_glucose_days(
        patient_id, time_zone, {day: span for day, span in result.glucose_changed.items() if day >= first_day}
    )
    # aggregate-wearable-data recomputes these days' rolling averages (and the 29 days after them).
    mark_dirty(patient_id, live)
    return result


# --- Raw rows -----------------------------------------------------------------------------------------------

_PG_STAGES = """
CREATE TEMP TABLE IF NOT EXISTS stage_wearable (
    metric text, source text, source_type text, measured_at timestamptz, end_at timestamptz,
    value double precision, unit text
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_glucose (
    source text, measured_at timestamptz, value_mg_dl double precision, original_value double precision,
    original_unit text, trend text, trend_rate double precision, device text, range_flag text
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
SELECT metric, (measured_at AT TIME ZONE {zone})::date, count(*) FROM changed GROUP BY 1, 2
""".replace("{zone}", day_zone_sql("metric", "%(tz)s"))

_PG_MERGE_GLUCOSE = """
WITH changed AS (
    INSERT INTO patient_glucose_readings AS g
        (patient_id, source, measured_at, value_mg_dl, original_value, original_unit, trend, trend_rate, device,
         range_flag, connection_id)
    SELECT DISTINCT ON (source, measured_at)
        %(patient)s, source, measured_at, value_mg_dl, original_value, original_unit, trend, trend_rate, device,
        range_flag, %(connection)s
    FROM stage_glucose
    ORDER BY source, measured_at
    ON CONFLICT (patient_id, source, measured_at) DO UPDATE
        SET value_mg_dl = EXCLUDED.value_mg_dl, original_value = EXCLUDED.original_value,
            original_unit = EXCLUDED.original_unit, trend = EXCLUDED.trend, trend_rate = EXCLUDED.trend_rate,
            device = EXCLUDED.device, range_flag = EXCLUDED.range_flag
        WHERE (g.value_mg_dl, g.trend, g.trend_rate, g.device, g.range_flag)
            IS DISTINCT FROM (EXCLUDED.value_mg_dl, EXCLUDED.trend, EXCLUDED.trend_rate, EXCLUDED.device,
                              EXCLUDED.range_flag)
    RETURNING measured_at
)
SELECT (measured_at AT TIME ZONE %(tz)s)::date, count(*), min(measured_at), max(measured_at) FROM changed GROUP BY 1
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
                "trend_rate, device, range_flag) FROM STDIN"
            ) as copy:
                for row in glucose:
                    copy.write_row(full_glucose_row(row))
            pg.execute(_PG_MERGE_GLUCOSE, params)
            for day, count, earliest, latest in pg.fetchall():
                result.touched.add((GLUCOSE_METRIC, day))
                result.glucose_written += count
                result.glucose_changed[day] = (earliest, latest)
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


# Only the rows that count (readings/resolution.py): one measurement arriving by two routes is counted once.
# The rows around the span (the tolerance, a day for WHOOP's sleeps) decide which copy counts.
_PG_DAILY_WEARABLE = (
    """
WITH counted AS ("""
    + counted_wearable_sql(
        "r.patient_id = %(patient)s AND r.metric = ANY(%(metrics)s)"
        " AND r.measured_at >= %(lo)s AND r.measured_at < %(hi)s",
        wide_where="r.patient_id = %(patient)s AND r.metric = ANY(%(metrics)s)"
        " AND r.measured_at >= %(wlo)s AND r.measured_at < %(whi)s",
    )
    + """),
keys AS (SELECT * FROM unnest(%(metrics)s::text[], %(days)s::date[]) AS d(metric, day)),
computed AS (
    SELECT d.metric, d.day, avg(r.value) AS avg, min(r.value) AS min, max(r.value) AS max, sum(r.value) AS sum,
           count(*) AS count
    FROM keys d
    JOIN counted r
      ON r.metric = d.metric
     AND r.measured_at >= (d.day::timestamp AT TIME ZONE {zone})
     AND r.measured_at < ((d.day + 1)::timestamp AT TIME ZONE {zone})
    GROUP BY d.metric, d.day
),
-- A refreshed day with no row that counts (a neighbour whose copy another route's now out-counts) has none.
gone AS (
    DELETE FROM patient_wearable_daily_stats s USING keys d
    WHERE s.patient_id = %(patient)s AND s.metric = d.metric AND s.day = d.day
      AND NOT EXISTS (SELECT 1 FROM computed c WHERE c.metric = d.metric AND c.day = d.day)
)
INSERT INTO patient_wearable_daily_stats AS s
    (patient_id, metric, day, avg, min, max, sum, count, updated_at)
SELECT %(patient)s, metric, day, avg, min, max, sum, count, now() FROM computed
ON CONFLICT (patient_id, metric, day) DO UPDATE
    SET avg = EXCLUDED.avg, min = EXCLUDED.min, max = EXCLUDED.max, sum = EXCLUDED.sum,
        count = EXCLUDED.count, updated_at = EXCLUDED.updated_at
"""
).replace("{zone}", day_zone_sql("d.metric", "%(tz)s"))

_PG_DAILY_GLUCOSE = (
    """
WITH counted AS ("""
    + counted_glucose_sql(
        "g.patient_id = %(patient)s AND g.measured_at >= %(glo)s AND g.measured_at < %(ghi)s"
    )
    + """),
keys AS (SELECT * FROM unnest(%(days)s::date[]) AS d(day)),
computed AS (
    SELECT d.day, avg(g.value_mg_dl) AS avg, min(g.value_mg_dl) AS min, max(g.value_mg_dl) AS max,
           sum(g.value_mg_dl) AS sum, count(*) AS count
    FROM keys d
    JOIN counted g
      ON g.measured_at >= (d.day::timestamp AT TIME ZONE %(tz)s)
     AND g.measured_at < ((d.day + 1)::timestamp AT TIME ZONE %(tz)s)
    GROUP BY d.day
),
gone AS (
    DELETE FROM patient_wearable_daily_stats s USING keys d
    WHERE s.patient_id = %(patient)s AND s.metric = 'glucose' AND s.day = d.day
      AND NOT EXISTS (SELECT 1 FROM computed c WHERE c.day = d.day)
)
INSERT INTO patient_wearable_daily_stats AS s
    (patient_id, metric, day, avg, min, max, sum, count, updated_at)
SELECT %(patient)s, 'glucose', day, avg, min, max, sum, count, now() FROM computed
ON CONFLICT (patient_id, metric, day) DO UPDATE
    SET avg = EXCLUDED.avg, min = EXCLUDED.min, max = EXCLUDED.max, sum = EXCLUDED.sum,
        count = EXCLUDED.count, updated_at = EXCLUDED.updated_at
"""
)


def refresh_daily_stats(patient_id: int, time_zone: str, touched: TouchedDays) -> None:
    """Recompute avg/min/max/sum/count of the given (metric, local day) keys from the rows that count.

    A key left with no row that counts loses its statistic (only live days, inside the horizon, come here).
    """
    if not touched:
        return
    wearable = sorted(key for key in touched if key[0] != GLUCOSE_METRIC)
    glucose_days = sorted(day for metric, day in touched if metric == GLUCOSE_METRIC)
    tz = ZoneInfo(time_zone)
    with db.cursor() as cursor:
        if wearable:
            # Day-level metrics are bucketed by UTC date, at most 14 h from the local day: a day covers both.
            lo = local_day_bounds(min(d for _, d in wearable), tz)[0]
            hi = local_day_bounds(max(d for _, d in wearable), tz)[1]
            cursor.execute(
                _PG_DAILY_WEARABLE,
                {
                    "patient": patient_id,
                    "tz": time_zone,
                    "metrics": [m for m, _ in wearable],
                    "days": [d for _, d in wearable],
                    "lo": lo - DAY_LEVEL_SLACK,
                    "hi": hi + DAY_LEVEL_SLACK,
                    "wlo": lo - DAY_LEVEL_SLACK - WEARABLE_MARGIN,
                    "whi": hi + DAY_LEVEL_SLACK + WEARABLE_MARGIN,
                },
            )
        if glucose_days:
            glo = local_day_bounds(glucose_days[0], tz)[0] - GLUCOSE_TOLERANCE
            ghi = local_day_bounds(glucose_days[-1], tz)[1] + GLUCOSE_TOLERANCE
            cursor.execute(
                _PG_DAILY_GLUCOSE,
                {"patient": patient_id, "tz": time_zone, "days": glucose_days, "glo": glo, "ghi": ghi},
            )

    # Completeness of the same days, kept with the statistics (readings/completeness.py).
    refresh_completeness(patient_id, time_zone, touched)


def with_neighbours(touched: TouchedDays) -> TouchedDays:
    """The touched keys, plus the days either side of those of metrics two routes may bring: a copy counted
    on one day can decide, within the matching tolerance, whether a copy on the next one counts."""
    cross = cross_route_metrics()
    out = set(touched)
    for metric, day in touched:
        if metric in cross:
            out.add((metric, day - timedelta(days=1)))
            out.add((metric, day + timedelta(days=1)))
    return out


# --- Deletions a provider reports ------------------------------------------------------------------------

_PG_DELETE = """
DELETE FROM patient_wearable_readings
WHERE patient_id = %(patient)s AND source = %(source)s AND metric = ANY(%(metrics)s) AND measured_at = %(at)s
RETURNING metric, (measured_at AT TIME ZONE {zone})::date
""".replace("{zone}", day_zone_sql("metric", "%(tz)s"))


def delete_readings(
    patient_id: int, time_zone: str, source: str, metrics: Sequence[str], measured_at: datetime
) -> int:
    """Remove the readings of one record the provider deleted (its rows share `measured_at`), and recompute
    the statistics of their live days (a day left with no row that counts loses its statistic; days past the
    frozen horizon are final). Needs the caller's transaction; returns the rows removed."""
    params = {
        "patient": patient_id,
        "source": source,
        "metrics": list(metrics),
        "at": measured_at,
        "tz": time_zone,
    }
    with db.cursor() as cursor:
        cursor.execute(_PG_DELETE, params)
        removed = cursor.fetchall()
        touched: TouchedDays = {(metric, day) for metric, day in removed}
        if not touched:
            return 0
    first_day = first_complete_day()
    live = {key for key in with_neighbours(touched) if key[1] >= first_day}
    refresh_daily_stats(patient_id, time_zone, live)
    mark_dirty(patient_id, live)
    return len(removed)
