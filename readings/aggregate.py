"""`aggregate-wearable-data`: daily statistics and sample-weighted rolling 7/30-day averages, in SQL.

Incremental (the daily job): every ingest marked the (patient, metric, patient-local day) keys it touched in
`patient_wearable_daily_stats_dirty` (readings/dirty.py). A run takes a snapshot of the marks, recomputes
those days' avg/min/max/sum/count from the raw rows, then the rolling averages of those days and of the 29
days after each (every day whose 30-day window contains a changed day), then deletes exactly the marks it
read (same version): a day marked again while the run was busy stays marked for the next run.

Full (`--full`): every patient's days inside the raw-retention horizon are recomputed from the raw rows (a
stored day there with no raw rows left is removed) and every stored day's rolling averages are recomputed from
the daily sums and counts. Days before the horizon are final: kept as stored.

Rolling averages follow the metric catalogue (readings/catalogue.py): for a summed metric (steps, energy,
distance, durations) the mean of the daily sums over the window's days with data, for the others
sample-weighted (sum of daily sums / sum of daily counts). Windows are calendar days D-6..D and D-29..D, day D
included: RANGE windows (`RANGE BETWEEN '6 days' PRECEDING`), so a missing day never stretches the window.

Days older than the horizon (`now - RAW_READING_RETENTION_DAYS`, plus a 2-day margin for zone offsets) are
final (readings/horizon.py): retention has removed (some of) their raw rows, and their stored statistics are
the record. Neither mode recomputes them; their marks are consumed. Every write is guarded by IS DISTINCT FROM, so re-running changes nothing.
"""

from __future__ import annotations

import logging
import time as monotonic
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from django.db import IntegrityError, transaction
from django.db import connection as db
from django.utils import timezone

from connections.models import Patient, validate_time_zone
from readings import glucose_metrics
from readings.catalogue import day_zone_sql, summed_sql_list
from readings.horizon import first_complete_day, raw_horizon
from readings.locks import single_flight
from readings.resolution import (
    GLUCOSE_TOLERANCE,
    WEARABLE_MARGIN,
    counted_glucose_sql,
    counted_wearable_sql,
    cross_route_sql_list,
    interval_sql,
)

logger = logging.getLogger("loopsync.aggregate")

JOB_NAME = "aggregate-wearable-data"
# Patients per transaction: bounds lock time and the temp tables, and keeps a failed chunk's damage small
# (a failed chunk leaves its marks in place for the next run).
CHUNK_PATIENTS = 500
# pg_try_advisory_lock key: two deliveries of the job (django-q2 is at-least-once) never run side by side.
_ADVISORY_LOCK = 0x4C53_4147  # "LSAG"
# Per aggregation transaction (SET LOCAL): enough for the full rebuild's hash aggregate of ~10M groups.
AGGREGATE_WORK_MEM = "256MB"


@dataclass
class AggregateResult:
    job: str = JOB_NAME
    mode: str = "incremental"
    status: str = "success"
    patients: int = 0
    marks_read: int = 0
    marks_cleared: int = 0
    # Daily rows recomputed from raw rows, and how many of them changed.
    daily_rows_recomputed: int = 0
    daily_rows_changed: int = 0
    # Rows whose rolling averages were recomputed, and how many changed.
    rolling_rows_recomputed: int = 0
    rolling_rows_changed: int = 0
    duration_s: float = 0.0

    def add(self, other: AggregateResult) -> None:
        for name in (
            "marks_read",
            "marks_cleared",
            "daily_rows_recomputed",
            "daily_rows_changed",
            "rolling_rows_recomputed",
            "rolling_rows_changed",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- Entry points --------------------------------------------------------------------------------------------


def run_aggregation(*, full: bool = False) -> AggregateResult:
    """`aggregate-wearable-data`: incremental by default, `full=True` rebuilds every patient."""
    started = monotonic.monotonic()
    result = AggregateResult(mode="full" if full else "incremental")
    with single_flight(_ADVISORY_LOCK) as acquired:
        if not acquired:
            result.status = "skipped: another run holds the lock"
            return result
        if full:
            patient_ids = list(Patient.objects.order_by("pk").values_list("pk", flat=True))
        else:
            patient_ids = _dirty_patient_ids()
        result.patients = len(patient_ids)
        if full:
            _pg_full_rebuild(patient_ids, result)
        else:
            for chunk in _chunks(patient_ids, CHUNK_PATIENTS):
                with transaction.atomic():
                    _tune_session()
                    result.add(_incremental_chunk(chunk))
    result.duration_s = round(monotonic.monotonic() - started, 3)
    logger.info("%s finished", JOB_NAME, extra={"job": JOB_NAME, **result.as_dict()})
    return result


def rebuild_patient(patient_id: int) -> AggregateResult:
    """Recompute one patient's daily statistics and rolling averages; needs no lock from the caller."""
    with transaction.atomic():
        return _rebuild_chunk([patient_id])


def rebuild_patient_days(patient_id: int) -> AggregateResult:
    """Delete and rebuild one patient's statistics inside the horizon (earlier days are final), under the
    patient's row lock: after a change of which rows count (route priorities) or of the zone."""
    from readings.models import DailyStat

    with transaction.atomic():
        Patient.objects.select_for_update().filter(pk=patient_id).values_list("pk").first()
        DailyStat.objects.filter(patient_id=patient_id, day__gte=first_complete_day()).delete()
        result = _rebuild_chunk([patient_id])
    result.patients = 1
    return result


def change_patient_time_zone(patient_id: int, time_zone: str) -> AggregateResult:
    """Move a patient to another IANA zone and re-bucket their statistics into the new local days.

    The patient row is locked first: a sync storing this patient's readings locks the same row (its
    select_related FOR UPDATE), so no batch is bucketed in the old zone after this commits. Days inside
    the raw horizon are deleted and rebuilt from the raw rows; older days keep their old-zone statistics,
    because their raw rows are gone and cannot be re-bucketed (the frozen horizon). Day-level summaries stay
    on their calendar date. Every zone change goes through here (connections.actions.do_change_time_zone,
    which the admin's patient form calls); a zone edited in SQL is repaired by `aggregate --full`.
    """
    validate_time_zone(time_zone)
    with transaction.atomic():
        patient = Patient.objects.select_for_update().get(pk=patient_id)
        if patient.time_zone == time_zone:
            return AggregateResult(mode="time-zone-unchanged", patients=1)
        patient.time_zone = time_zone
        patient.save(update_fields=["time_zone"])
        from readings.models import DailyStat

        DailyStat.objects.filter(patient_id=patient_id, day__gte=first_complete_day()).delete()
        # Day-level summaries are keyed by their calendar date (00:00 UTC), not a local instant: they stay on
        # their date, and the next sync has nothing to re-stamp, so the day fingerprints stay valid.
        result = _rebuild_chunk([patient_id])
    result.mode = "time-zone-change"
    result.patients = 1
    return result


def _tune_session() -> None:
    """This transaction only: hash aggregates in memory, no JIT (its compile time exceeds its gain
    on these short aggregate queries), and no wait for the WAL flush at commit: the statistics are derived,
    and a commit lost to a crash loses its mark deletions with it, so the next run recomputes those days."""
    with db.cursor() as cursor:
        cursor.execute(f"SET LOCAL work_mem = '{AGGREGATE_WORK_MEM}'")
        cursor.execute("SET LOCAL jit = off")
        cursor.execute("SET LOCAL synchronous_commit = off")


def _dirty_patient_ids() -> list[int]:
    with db.cursor() as cursor:
        cursor.execute("SELECT DISTINCT patient_id FROM patient_wearable_daily_stats_dirty ORDER BY 1")
        return [row[0] for row in cursor.fetchall()]


def _chunks(items: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


# Float sums depend on the order rows are added in, which depends on the plan (an index scan inline, a hash
# aggregate in a rebuild): values are "changed" only beyond 1e-9 relative, so a re-run in any mode writes
# nothing. Counts, minimums and maximums are exact.
def _changed(old: str, new: str, greatest: str) -> str:
    return f"({old} IS NULL) <> ({new} IS NULL) OR abs({old} - {new}) > 1e-9 * {greatest}(abs({new}), 1)"


def _rolling_changed(stats: str, greatest: str, new: str = "r") -> str:
    return " OR ".join(_changed(f"{stats}.{col}", f"{new}.{col}", greatest) for col in ("avg_7d", "avg_30d"))


# --- PostgreSQL ------------------------------------------------------------------------------------------------

_PG_KEYS_TABLE = """
CREATE TEMP TABLE IF NOT EXISTS agg_keys (
    patient_id bigint, metric text, day date, version bigint, day_start timestamptz, day_end timestamptz
) ON COMMIT DELETE ROWS
"""

_PG_SNAPSHOT = """
INSERT INTO agg_keys (patient_id, metric, day, version, day_start, day_end)
SELECT d.patient_id, d.metric, d.day, d.version,
       d.day::timestamp AT TIME ZONE {zone}, (d.day + 1)::timestamp AT TIME ZONE {zone}
FROM {marks} d JOIN patients p ON p.id = d.patient_id
WHERE {where}
""".replace("{zone}", day_zone_sql("d.metric", "p.time_zone"))

_PG_DAILY_SET = """
ON CONFLICT (patient_id, metric, day) DO UPDATE
    SET avg = EXCLUDED.avg, min = EXCLUDED.min, max = EXCLUDED.max, sum = EXCLUDED.sum,
        count = EXCLUDED.count, updated_at = EXCLUDED.updated_at
    WHERE (s.min, s.max, s.count) IS DISTINCT FROM (EXCLUDED.min, EXCLUDED.max, EXCLUDED.count)
       OR abs(s.sum - EXCLUDED.sum) > 1e-9 * greatest(abs(EXCLUDED.sum), 1)
       OR abs(s.avg - EXCLUDED.avg) > 1e-9 * greatest(abs(EXCLUDED.avg), 1)
"""

# Only the rows that count (readings/resolution.py), read over spans that reach the matching tolerance (or
# WHOOP's day of margin) around the marked days: one span per patient and metric, so no row is read twice.
LIVE_PLAIN = "AND day >= %(first_day)s"
LIVE_K2 = "AND k2.day >= %(first_day)s"

_PG_DAILY_WEARABLE_KEYS = (
    """
WITH spans AS (
    SELECT patient_id, metric, min(day_start) AS lo, max(day_end) AS hi FROM agg_keys
    WHERE metric IN ({cross}) {only_plain} GROUP BY patient_id, metric
),
counted AS ("""
    + counted_wearable_sql(
        "k2.metric <> 'glucose' {only_k2}",
        # A marked day's rows, by its own bounds (UTC ones for day-level summaries): the marked days of one
        # metric are disjoint, so no row is read twice, and the planner probes the primary key per mark.
        join="JOIN agg_keys k2 ON k2.patient_id = r.patient_id AND k2.metric = r.metric "
        "AND r.measured_at >= k2.day_start AND r.measured_at < k2.day_end",
        # Only metrics a second route may bring are read with the margin, one span per patient and metric.
        wide_where="true",
        wide_join="JOIN spans sp ON sp.patient_id = r.patient_id AND sp.metric = r.metric "
        f"AND r.measured_at >= sp.lo - {interval_sql(WEARABLE_MARGIN)} "
        f"AND r.measured_at < sp.hi + {interval_sql(WEARABLE_MARGIN)}",
    )
    + """),
computed AS (
    SELECT k.patient_id, k.metric, k.day, avg(r.value) AS avg, min(r.value) AS min, max(r.value) AS max,
           sum(r.value) AS sum, count(*) AS count
    FROM agg_keys k
    JOIN counted r
      ON r.patient_id = k.patient_id AND r.metric = k.metric
     AND r.measured_at >= k.day_start AND r.measured_at < k.day_end
    WHERE k.metric <> 'glucose' {only}
    GROUP BY k.patient_id, k.metric, k.day
),
-- A marked day left with no row that counts (its raw rows gone, or now out-counted by another route's copy).
gone AS (
    DELETE FROM patient_wearable_daily_stats s USING agg_keys k
    WHERE s.patient_id = k.patient_id AND s.metric = k.metric AND s.day = k.day AND k.metric <> 'glucose' {only}
      AND NOT EXISTS (
          SELECT 1 FROM computed c WHERE c.patient_id = k.patient_id AND c.metric = k.metric AND c.day = k.day
      )
)
INSERT INTO patient_wearable_daily_stats AS s (patient_id, metric, day, avg, min, max, sum, count, updated_at)
SELECT patient_id, metric, day, avg, min, max, sum, count, now() FROM computed
"""
    + _PG_DAILY_SET
)

_PG_DAILY_GLUCOSE_KEYS = (
    """
WITH near AS (
    -- The marked days' rows and those within the tolerance around them (adjacent days share a few: once).
    SELECT DISTINCT ON (g.patient_id, g.source, g.measured_at) g.*
    FROM agg_keys k2
    JOIN patient_glucose_readings g
      ON g.patient_id = k2.patient_id
     AND g.measured_at >= k2.day_start - """
    + interval_sql(GLUCOSE_TOLERANCE)
    + """
     AND g.measured_at < k2.day_end + """
    + interval_sql(GLUCOSE_TOLERANCE)
    + """
    WHERE k2.metric = 'glucose' {only_k2}
    ORDER BY g.patient_id, g.source, g.measured_at
),
counted AS ("""
    + counted_glucose_sql("true", table="near")
    + """),
computed AS (
    SELECT k.patient_id, k.day, avg(g.value_mg_dl) AS avg, min(g.value_mg_dl) AS min,
           max(g.value_mg_dl) AS max, sum(g.value_mg_dl) AS sum, count(*) AS count
    FROM agg_keys k
    JOIN counted g
      ON g.patient_id = k.patient_id AND g.measured_at >= k.day_start AND g.measured_at < k.day_end
    WHERE k.metric = 'glucose' {only}
    GROUP BY k.patient_id, k.day
),
gone AS (
    DELETE FROM patient_wearable_daily_stats s USING agg_keys k
    WHERE s.patient_id = k.patient_id AND s.metric = 'glucose' AND s.day = k.day AND k.metric = 'glucose' {only}
      AND NOT EXISTS (SELECT 1 FROM computed c WHERE c.patient_id = k.patient_id AND c.day = k.day)
)
INSERT INTO patient_wearable_daily_stats AS s (patient_id, metric, day, avg, min, max, sum, count, updated_at)
SELECT patient_id, 'glucose', day, avg, min, max, sum, count, now() FROM computed
"""
    + _PG_DAILY_SET
)


# Every day whose 30-day window holds a changed day: the changed day and the 29 after it. The window input
# starts 29 days before the first target so the first target's frame is complete.
_PG_ROLLING_KEYS = """
WITH targets AS (
    SELECT DISTINCT k.patient_id, k.metric, k.day + g.n AS day
    FROM agg_keys k CROSS JOIN generate_series(0, 29) AS g(n)
),
spans AS (
    SELECT patient_id, metric, min(day) - 29 AS lo, max(day) AS hi FROM targets GROUP BY patient_id, metric
),
win AS (
    SELECT s.patient_id, s.metric, s.day,
           {rolling_s7} AS avg_7d,
           {rolling_s30} AS avg_30d
    FROM spans p
    JOIN patient_wearable_daily_stats s
      ON s.patient_id = p.patient_id AND s.metric = p.metric AND s.day BETWEEN p.lo AND p.hi
    WINDOW w7 AS (PARTITION BY s.patient_id, s.metric ORDER BY s.day
                  RANGE BETWEEN INTERVAL '6 days' PRECEDING AND CURRENT ROW),
           w30 AS (PARTITION BY s.patient_id, s.metric ORDER BY s.day
                   RANGE BETWEEN INTERVAL '29 days' PRECEDING AND CURRENT ROW)
),
recomputed AS (
    SELECT w.* FROM win w JOIN targets t ON t.patient_id = w.patient_id AND t.metric = w.metric AND t.day = w.day
),
changed AS (
    UPDATE patient_wearable_daily_stats s
       SET avg_7d = r.avg_7d, avg_30d = r.avg_30d, updated_at = now()
      FROM recomputed r
     WHERE s.patient_id = r.patient_id AND s.metric = r.metric AND s.day = r.day
       AND ({pg_rolling_changed})
    RETURNING 1
)
SELECT (SELECT count(*) FROM recomputed), (SELECT count(*) FROM changed)
"""

# A marked day inside the horizon whose raw rows are all gone (duplicates tidied, readings renamed, a zone
# change) has no statistic: recomputing it from nothing would leave the old one standing.
_PG_DELETE_EMPTY_KEYS = """
DELETE FROM patient_wearable_daily_stats s
USING agg_keys k
WHERE s.patient_id = k.patient_id AND s.metric = k.metric AND s.day = k.day AND k.day >= %(first_day)s
  AND NOT EXISTS (
      SELECT 1 FROM patient_wearable_readings r
      WHERE k.metric <> 'glucose' AND r.patient_id = k.patient_id AND r.metric = k.metric
        AND r.measured_at >= k.day_start AND r.measured_at < k.day_end
  )
  AND NOT EXISTS (
      SELECT 1 FROM patient_glucose_readings g
      WHERE k.metric = 'glucose' AND g.patient_id = k.patient_id
        AND g.measured_at >= k.day_start AND g.measured_at < k.day_end
  )
"""

_PG_CLEAR_MARKS = """
DELETE FROM patient_wearable_daily_stats_dirty d
USING agg_keys k
WHERE d.patient_id = k.patient_id AND d.metric = k.metric AND d.day = k.day AND d.version = k.version
"""

# Full rebuild. The local day is computed per row in SQL (AT TIME ZONE the patient's zone, DST-safe);
# rows before the horizon are not read, days before the first complete day are not written.
_PG_DAILY_WEARABLE_FULL = (
    """
INSERT INTO patient_wearable_daily_stats AS s (patient_id, metric, day, avg, min, max, sum, count, updated_at)
SELECT patient_id, metric, day, avg, min, max, sum, count, now() FROM (
    SELECT r.patient_id, r.metric, (r.measured_at AT TIME ZONE {rzone})::date AS day,
           avg(r.value) AS avg, min(r.value) AS min, max(r.value) AS max, sum(r.value) AS sum, count(*) AS count
    FROM ({counted_chunk}) r JOIN patients p ON p.id = r.patient_id
    GROUP BY r.patient_id, r.metric, day
) AS d
WHERE d.day >= %(first_day)s
"""
    + _PG_DAILY_SET
)

_PG_DAILY_GLUCOSE_FULL = (
    """
INSERT INTO patient_wearable_daily_stats AS s (patient_id, metric, day, avg, min, max, sum, count, updated_at)
SELECT patient_id, 'glucose', day, avg, min, max, sum, count, now() FROM (
    SELECT g.patient_id, (g.measured_at AT TIME ZONE p.time_zone)::date AS day,
           avg(g.value_mg_dl) AS avg, min(g.value_mg_dl) AS min, max(g.value_mg_dl) AS max,
           sum(g.value_mg_dl) AS sum, count(*) AS count
    FROM ({counted_chunk}) g JOIN patients p ON p.id = g.patient_id
    GROUP BY g.patient_id, day
) AS d
WHERE d.day >= %(first_day)s
"""
    + _PG_DAILY_SET
)

_PG_ROLLING_FULL = """
WITH recomputed AS (
    SELECT s.patient_id, s.metric, s.day,
           {rolling_s7} AS avg_7d,
           {rolling_s30} AS avg_30d
    FROM patient_wearable_daily_stats s
    WHERE {patients}
    WINDOW w7 AS (PARTITION BY s.patient_id, s.metric ORDER BY s.day
                  RANGE BETWEEN INTERVAL '6 days' PRECEDING AND CURRENT ROW),
           w30 AS (PARTITION BY s.patient_id, s.metric ORDER BY s.day
                   RANGE BETWEEN INTERVAL '29 days' PRECEDING AND CURRENT ROW)
),
changed AS (
    UPDATE patient_wearable_daily_stats s
       SET avg_7d = r.avg_7d, avg_30d = r.avg_30d, updated_at = now()
      FROM recomputed r
     WHERE s.patient_id = r.patient_id AND s.metric = r.metric AND s.day = r.day
       AND ({pg_rolling_changed})
    RETURNING 1
)
SELECT (SELECT count(*) FROM recomputed), (SELECT count(*) FROM changed)
"""


def _rolling(alias: str, window: str) -> str:
    """A rolling average by the catalogue's rule: the mean of the daily sums over the window's days with data
    for a summed metric (average daily steps), the sample-weighted mean for the others."""
    return (
        f"CASE WHEN {alias}.metric IN ({summed_sql_list()}) "
        f"THEN sum({alias}.sum) OVER {window} / count(*) OVER {window} "
        f"ELSE sum({alias}.sum) OVER {window} / NULLIF(sum({alias}.count) OVER {window}, 0) END"
    )


def _with_rolling(sql: str) -> str:
    for alias in ("s", "c"):
        for days in ("7", "30"):
            sql = sql.replace(f"{{rolling_{alias}{days}}}", _rolling(alias, f"w{days}"))
    return sql


_RZONE = day_zone_sql("r.metric", "p.time_zone")
_PG_DAILY_WEARABLE_FULL = _PG_DAILY_WEARABLE_FULL.replace("{rzone}", _RZONE).replace(
    "{counted_chunk}",
    counted_wearable_sql("r.patient_id = ANY(%(patients)s) AND r.measured_at >= %(raw_from)s"),
)
_PG_DAILY_GLUCOSE_FULL = _PG_DAILY_GLUCOSE_FULL.replace(
    "{counted_chunk}",
    counted_glucose_sql("g.patient_id = ANY(%(patients)s) AND g.measured_at >= %(raw_from)s"),
)
_PG_ROLLING_KEYS = _with_rolling(
    _PG_ROLLING_KEYS.replace("{pg_rolling_changed}", _rolling_changed("s", "greatest"))
)
_PG_ROLLING_FULL = _with_rolling(
    _PG_ROLLING_FULL.replace("{pg_rolling_changed}", _rolling_changed("s", "greatest"))
)


def _pg_snapshot(cursor: Any, patient_ids: list[int]) -> int:
    cursor.execute(_PG_KEYS_TABLE)
    cursor.execute("TRUNCATE agg_keys")
    cursor.execute(
        _PG_SNAPSHOT.format(
            marks="patient_wearable_daily_stats_dirty", where="d.patient_id = ANY(%(patients)s)"
        ),
        {"patients": patient_ids},
    )
    snapshot = cursor.rowcount
    # A temp table has no statistics: without them the planner hash-joins the whole raw table.
    cursor.execute("ANALYZE agg_keys")
    return snapshot


def _pg_count(cursor: Any, sql: str, params: dict[str, Any] | None) -> int:
    cursor.execute(sql, params)
    return cursor.rowcount


def _incremental_chunk(patient_ids: list[int]) -> AggregateResult:
    result = AggregateResult()
    result.marks_read = result.daily_rows_recomputed = _snapshot_marks(patient_ids)
    _recompute_snapshot(result)
    result.marks_cleared = _clear_snapshot_marks()
    return result


def _snapshot_marks(patient_ids: list[int]) -> int:
    """Copy these patients' marks (with their versions and local-day bounds) into the agg_keys temp table."""
    with db.cursor() as cursor:
        return _pg_snapshot(cursor, patient_ids)


def _recompute_snapshot(result: AggregateResult) -> None:
    """Daily statistics of the snapshot's days, then rolling averages of those days and the 29 after."""
    # Marked days before the frozen horizon (readings/horizon.py) are final: their marks are consumed, their
    # statistics left as they are.
    live = "AND k.day >= %(first_day)s"
    params = {"first_day": first_complete_day()}
    with db.cursor() as cursor:
        result.daily_rows_changed = _pg_count(
            cursor,
            _PG_DAILY_WEARABLE_KEYS.format(
                only=live, only_plain=LIVE_PLAIN, only_k2=LIVE_K2, cross=cross_route_sql_list()
            ),
            params,
        )
        result.daily_rows_changed += _pg_count(
            cursor, _PG_DAILY_GLUCOSE_KEYS.format(only=live, only_k2=LIVE_K2), params
        )
        cursor.execute(_PG_ROLLING_KEYS)
        result.rolling_rows_recomputed, result.rolling_rows_changed = cursor.fetchone()
        glucose_metrics.refresh_glucose_days_from_keys(cursor, first_complete_day())


def _clear_snapshot_marks() -> int:
    """Delete the marks the snapshot read, only at the version read: a re-marked day stays marked."""
    with db.cursor() as cursor:
        return _pg_count(cursor, _PG_CLEAR_MARKS, None)


def _rebuild_chunk(patient_ids: list[int]) -> AggregateResult:
    result = AggregateResult(mode="full")
    now = timezone.now()
    params = {"patients": patient_ids, "raw_from": raw_horizon(now), "first_day": first_complete_day(now)}
    with db.cursor() as cursor:
        # The marks of these patients are consumed by the rebuild: snapshot them first, clear them last.
        result.marks_read = _pg_snapshot(cursor, patient_ids)
        # Marked days before the frozen horizon are final: their marks are consumed, nothing recomputed.
        result.daily_rows_changed = _pg_count(cursor, _PG_DAILY_WEARABLE_FULL, params)
        result.daily_rows_changed += _pg_count(cursor, _PG_DAILY_GLUCOSE_FULL, params)
        result.daily_rows_changed += _pg_count(cursor, _PG_DELETE_EMPTY_KEYS, params)
        cursor.execute(
            "SELECT count(*) FROM patient_wearable_daily_stats WHERE patient_id = ANY(%(patients)s) "
            "AND day >= %(first_day)s",
            params,
        )
        result.daily_rows_recomputed = cursor.fetchone()[0]
        cursor.execute(_PG_ROLLING_FULL.replace("{patients}", "s.patient_id = ANY(%(patients)s)"), params)
        result.rolling_rows_recomputed, result.rolling_rows_changed = cursor.fetchone()
        glucose_metrics.rebuild_glucose_days(patient_ids)
        result.marks_cleared = _pg_count(cursor, _PG_CLEAR_MARKS, None)
    return result


# Full rebuild: one pass over the raw tables into a session temp table (a hash aggregate, no
# index probing), then short per-chunk transactions upsert it and recompute the rolling averages. The marks
# are snapshotted before the scan: a batch committed after the scan leaves a newer mark version, which the
# chunk does not clear.
_PG_FULL_MARKS = """
CREATE TEMP TABLE agg_full_marks AS
SELECT patient_id, metric, day, version FROM patient_wearable_daily_stats_dirty
"""

# The local day of each raw row, AT TIME ZONE its patient's zone (DST-safe, the same rule as the store and the
# incremental path). The inner join also leaves out a patient created after the marks were read: its marks,
# newer than the snapshot, stay for the next run.
_PG_FULL_SCAN = (
    """
CREATE TEMP TABLE agg_full_daily AS
SELECT r.patient_id, r.metric, (r.measured_at AT TIME ZONE {rzone})::date AS day,
       avg(r.value) AS avg, min(r.value) AS min, max(r.value) AS max, sum(r.value) AS sum, count(*) AS count
FROM ({counted_wearable}) r JOIN patients p ON p.id = r.patient_id
GROUP BY 1, 2, 3
UNION ALL
SELECT g.patient_id, 'glucose', (g.measured_at AT TIME ZONE p.time_zone)::date AS day,
       avg(g.value_mg_dl), min(g.value_mg_dl), max(g.value_mg_dl), sum(g.value_mg_dl), count(*)
FROM ({counted_glucose}) g JOIN patients p ON p.id = g.patient_id
GROUP BY 1, 3
""".replace("{rzone}", _RZONE)
    .replace("{counted_wearable}", counted_wearable_sql("r.measured_at >= %(raw_from)s"))
    .replace("{counted_glucose}", counted_glucose_sql("g.measured_at >= %(raw_from)s"))
)


# One write per row: the chunk's recomputed days, plus its stored days the scan did not produce (before the
# horizon, or whose raw rows are gone), go through the rolling windows together and are upserted with both
# their daily values and their rolling averages.
_PG_FULL_UPSERT = """
WITH combined AS (
    SELECT patient_id, metric, day, avg, min, max, sum, count FROM agg_full_daily
    WHERE patient_id BETWEEN %(lo)s AND %(hi)s
    UNION ALL
    SELECT s.patient_id, s.metric, s.day, s.avg, s.min, s.max, s.sum, s.count
    FROM patient_wearable_daily_stats s
    WHERE s.patient_id BETWEEN %(lo)s AND %(hi)s
      AND NOT EXISTS (
          SELECT 1 FROM agg_full_daily a WHERE a.patient_id = s.patient_id AND a.metric = s.metric AND a.day = s.day
      )
)
INSERT INTO patient_wearable_daily_stats AS s
    (patient_id, metric, day, avg, min, max, sum, count, avg_7d, avg_30d, updated_at)
SELECT c.patient_id, c.metric, c.day, c.avg, c.min, c.max, c.sum, c.count,
       {rolling_c7},
       {rolling_c30},
       now()
FROM combined c
-- A patient deleted since the scan (Django's cascade took its statistics) does not get them back.
WHERE EXISTS (SELECT 1 FROM patients p WHERE p.id = c.patient_id)
WINDOW w7 AS (PARTITION BY c.patient_id, c.metric ORDER BY c.day
              RANGE BETWEEN INTERVAL '6 days' PRECEDING AND CURRENT ROW),
       w30 AS (PARTITION BY c.patient_id, c.metric ORDER BY c.day
               RANGE BETWEEN INTERVAL '29 days' PRECEDING AND CURRENT ROW)
ORDER BY c.patient_id, c.metric, c.day
ON CONFLICT (patient_id, metric, day) DO UPDATE
    SET avg = EXCLUDED.avg, min = EXCLUDED.min, max = EXCLUDED.max, sum = EXCLUDED.sum,
        count = EXCLUDED.count, avg_7d = EXCLUDED.avg_7d, avg_30d = EXCLUDED.avg_30d,
        updated_at = EXCLUDED.updated_at
    WHERE (s.min, s.max, s.count) IS DISTINCT FROM (EXCLUDED.min, EXCLUDED.max, EXCLUDED.count)
       OR abs(s.sum - EXCLUDED.sum) > 1e-9 * greatest(abs(EXCLUDED.sum), 1)
       OR abs(s.avg - EXCLUDED.avg) > 1e-9 * greatest(abs(EXCLUDED.avg), 1)
       OR {rolling_changed}
"""
_PG_FULL_UPSERT = _with_rolling(
    _PG_FULL_UPSERT.replace("{rolling_changed}", _rolling_changed("s", "greatest", "EXCLUDED"))
)


# `--full` is exact inside the horizon: a stored day there that the scan did not produce has no raw rows (a
# zone edited in SQL, readings removed) and goes, unless a sync stored rows for it since the scan. Days before
# the first complete day are final and kept.
_PG_FULL_DELETE_STALE = """
DELETE FROM patient_wearable_daily_stats s
USING patients p
WHERE p.id = s.patient_id AND s.patient_id BETWEEN %(lo)s AND %(hi)s AND s.day >= %(first_day)s
  AND NOT EXISTS (
      SELECT 1 FROM agg_full_daily a WHERE a.patient_id = s.patient_id AND a.metric = s.metric AND a.day = s.day
  )
  AND NOT EXISTS (
      SELECT 1 FROM patient_wearable_readings r
      WHERE s.metric <> 'glucose' AND r.patient_id = s.patient_id AND r.metric = s.metric
        AND r.measured_at >= (s.day::timestamp AT TIME ZONE {zone})
        AND r.measured_at < ((s.day + 1)::timestamp AT TIME ZONE {zone})
  )
  AND NOT EXISTS (
      SELECT 1 FROM patient_glucose_readings g
      WHERE s.metric = 'glucose' AND g.patient_id = s.patient_id
        AND g.measured_at >= (s.day::timestamp AT TIME ZONE p.time_zone)
        AND g.measured_at < ((s.day + 1)::timestamp AT TIME ZONE p.time_zone)
  )
""".replace("{zone}", day_zone_sql("s.metric", "p.time_zone"))


# A chunk with nothing stored yet (a first build) takes a plain insert: a conflict check per row costs
# nearly as much as the insert itself.
_PG_FULL_INSERT = _PG_FULL_UPSERT[: _PG_FULL_UPSERT.index("ON CONFLICT")]


def _pg_write_full_chunk(cursor: Any, params: dict[str, Any], stored: int) -> int:
    if stored:
        return _pg_count(cursor, _PG_FULL_UPSERT, params)
    try:
        with transaction.atomic():
            return _pg_count(cursor, _PG_FULL_INSERT, params)
    except IntegrityError:
        # A sync stored a day of this chunk since it was counted: back to the savepoint, and upsert.
        return _pg_count(cursor, _PG_FULL_UPSERT, params)


def _pg_full_rebuild(patient_ids: list[int], result: AggregateResult) -> None:
    now = timezone.now()
    params: dict[str, Any] = {"raw_from": raw_horizon(now), "first_day": first_complete_day(now)}
    with transaction.atomic(), db.cursor() as cursor:
        _tune_session()
        cursor.execute("DROP TABLE IF EXISTS agg_full_marks, agg_full_daily")
        # Marks first, scan second: a batch committed in between leaves a newer mark version, kept.
        cursor.execute(_PG_FULL_MARKS)
        cursor.execute(_PG_FULL_SCAN, params)
        # Days before the first complete one are partial (retention has started on them): the stored rows
        # stay. Filtered here, not in the scan: a filter on the day would evaluate its expression twice.
        cursor.execute("DELETE FROM agg_full_daily WHERE day < %(first_day)s", params)
        # No ANALYZE: the chunks read it by patient range through this index, whatever its statistics.
        cursor.execute("CREATE INDEX ON agg_full_daily (patient_id)")
    try:
        for chunk in _chunks(patient_ids, CHUNK_PATIENTS):
            # Chunks are runs of consecutive ids, so BETWEEN covers exactly them (and reads by range).
            chunk_params = {**params, "lo": chunk[0], "hi": chunk[-1]}
            within = "d.patient_id BETWEEN %(lo)s AND %(hi)s"
            with transaction.atomic(), db.cursor() as cursor:
                _tune_session()
                cursor.execute(_PG_KEYS_TABLE)
                cursor.execute("TRUNCATE agg_keys")
                cursor.execute(_PG_SNAPSHOT.format(marks="agg_full_marks", where=within), chunk_params)
                result.marks_read += cursor.rowcount
                cursor.execute("ANALYZE agg_keys")
                # Marked days before the frozen horizon are final: their marks are consumed, nothing recomputed.
                cursor.execute(
                    "SELECT (SELECT count(*) FROM agg_full_daily WHERE patient_id BETWEEN %(lo)s AND %(hi)s), "
                    "(SELECT count(*) FROM patient_wearable_daily_stats WHERE patient_id BETWEEN %(lo)s AND %(hi)s)",
                    chunk_params,
                )
                daily, stored = cursor.fetchone()
                if stored:
                    result.daily_rows_changed += _pg_count(cursor, _PG_FULL_DELETE_STALE, chunk_params)
                # Rows written carry both their daily values and rolling averages: counted once, as daily.
                result.daily_rows_changed += _pg_write_full_chunk(cursor, chunk_params, stored)
                result.daily_rows_recomputed += daily
                result.rolling_rows_recomputed += max(stored, daily)
                glucose_metrics.rebuild_glucose_days(chunk)
                result.marks_cleared += _pg_count(cursor, _PG_CLEAR_MARKS, None)
    finally:
        with db.cursor() as cursor:
            cursor.execute("DROP TABLE IF EXISTS agg_full_marks, agg_full_daily")
