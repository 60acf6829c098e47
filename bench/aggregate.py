#!/usr/bin/env python
"""Daily statistics and retention on PostgreSQL, as ratios against references measured in the same run.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/loopsync_i4_bench \
        .venv/bin/python bench/aggregate.py --patients 500 --days 60 --json

Data: `--patients` patients in 8 time zones, `--days` days of heart rate every 15 minutes and CGM glucose
every 20 minutes (168 readings a patient a day: 500 x 60 -> 5.04M rows), loaded with COPY into the
partitioned raw tables, then VACUUM ANALYZE.

Figures:
- full_aggregation_s      `aggregate-wearable-data --full` into an empty stats table: per-patient local days
                          (AT TIME ZONE, DST-safe), avg/min/max/sum/count upserted, rolling 7/30-day averages
- group_by_s              reference: a plain GROUP BY (patient, metric, UTC day) of the same rows with the same
                          aggregates, materialised into a temp table, in the same run
- full_vs_group_by        group_by_s / full_aggregation_s (target >= 0.3)
- group_by_local_day_s    the same GROUP BY by each patient's local day (join patients, AT TIME ZONE): the
                          floor of any correct job; full_vs_local_group_by is the job's own overhead
- full_rerun_s / _changed a second full run: rows it rewrote (must be 0)
- incremental_*           a one-day sync of every patient through the real write path (store_batch), then the
                          incremental run: marks read, daily and rolling rows recomputed, seconds
- drop_s, delete_s        retention of the oldest `--retire-weeks` weeks: dropping their partitions against a
                          DELETE of the same rows (run first, in a transaction rolled back), and the ratio
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "loopsync.settings")
os.environ.setdefault("DEBUG", "true")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/loopsync_i4_bench")
os.environ.setdefault("LOG_LEVEL", "warning")

ZONES = [
    "UTC",
    "Europe/London",
    "America/New_York",
    "America/Los_Angeles",
    "Asia/Kolkata",
    "Australia/Sydney",
    "Asia/Kathmandu",
    "Pacific/Auckland",
]
HR_EVERY_MIN = 15
CGM_EVERY_MIN = 20


from pgdb import ensure_database  # noqa: E402  (bench/ is on sys.path when a script runs)


def day_rows(patient_id: int, day: datetime) -> tuple[list[str], list[str]]:
    """COPY text lines of one patient-day: heart rate every 15 min, glucose every 20 min."""
    wearable, glucose = [], []
    base = patient_id * 7 + day.toordinal()
    for i in range(0, 24 * 60, HR_EVERY_MIN):
        at = (day + timedelta(minutes=i)).isoformat(sep=" ")
        wearable.append(f"{patient_id}\theart_rate\toura\tring\t{at}\t{55 + (base + i) % 40}\tbpm\n")
    for i in range(0, 24 * 60, CGM_EVERY_MIN):
        at = (day + timedelta(minutes=i)).isoformat(sep=" ")
        value = 80 + (base * 3 + i) % 90
        glucose.append(f"{patient_id}\tdexcom\t{at}\t{value}\t{value}\tmg/dL\t\tG7\n")
    return wearable, glucose


def load(db, patient_ids: list[int], first_day: datetime, days: int) -> int:  # noqa: ANN001
    rows = 0
    with db.cursor() as cursor:
        pg = cursor.cursor
        # Bulk load only: skip the per-row deferred FK checks (the generated patient ids all exist). The
        # write path itself is measured by the one-day sync below, through store_batch.
        pg.execute("SET session_replication_role = replica")
        for table, columns, index in (
            (
                "patient_wearable_readings",
                "patient_id, metric, source, source_type, measured_at, value, unit",
                0,
            ),
            (
                "patient_glucose_readings",
                "patient_id, source, measured_at, value_mg_dl, original_value, original_unit, trend, device",
                1,
            ),
        ):
            with pg.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for patient_id in patient_ids:
                    buffer = io.StringIO()
                    for d in range(days):
                        lines = day_rows(patient_id, first_day + timedelta(days=d))[index]
                        rows += len(lines)
                        buffer.writelines(lines)
                    copy.write(buffer.getvalue())
        pg.execute("SET session_replication_role = DEFAULT")
    return rows


def timed(fn):  # noqa: ANN001, ANN201
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--retire-weeks", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    ensure_database(os.environ["DATABASE_URL"])
    import django

    django.setup()
    import orjson
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection as db
    from django.db import transaction

    from connections.models import Patient
    from readings import retention
    from readings.aggregate import _tune_session, run_aggregation
    from readings.partitions import ensure_partitions, list_partitions, week_start
    from readings.store import store_batch

    call_command("migrate", verbosity=0)
    with db.cursor() as cursor:
        cursor.execute(
            "TRUNCATE patient_wearable_readings, patient_glucose_readings, patient_wearable_daily_stats, "
            "patient_wearable_daily_stats_dirty, patients CASCADE"
        )
    patients = Patient.objects.bulk_create(
        [Patient(time_zone=ZONES[i % len(ZONES)]) for i in range(args.patients)]
    )
    patient_ids = [p.pk for p in patients]

    # Whole weeks, Monday-aligned like the partitions, ending yesterday: the one-day sync adds today.
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    first_day = week_start(today - timedelta(days=args.days))
    days = (today - first_day).days
    with transaction.atomic():
        ensure_partitions(first_day, today + timedelta(days=7))
    load_s, rows = timed(lambda: load(db, patient_ids, first_day, days))
    db.close()
    with db.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE patient_wearable_readings")
        cursor.execute("VACUUM ANALYZE patient_glucose_readings")

    group_by_sql = """
        CREATE TEMP TABLE ref_daily AS
        SELECT patient_id, metric, date_trunc('day', measured_at) AS day,
               avg(value), min(value), max(value), sum(value), count(*)
        FROM patient_wearable_readings GROUP BY 1, 2, 3
        UNION ALL
        SELECT patient_id, 'glucose', date_trunc('day', measured_at),
               avg(value_mg_dl), min(value_mg_dl), max(value_mg_dl), sum(value_mg_dl), count(*)
        FROM patient_glucose_readings GROUP BY 1, 3
    """

    # The same GROUP BY bucketing by each patient's local day (the least any correct job must do).
    local_sql = (
        group_by_sql.replace("date_trunc('day', measured_at)", "(measured_at AT TIME ZONE p.time_zone)::date")
        .replace(
            "FROM patient_wearable_readings GROUP BY",
            "FROM patient_wearable_readings r JOIN patients p ON p.id = r.patient_id GROUP BY",
        )
        .replace(
            "FROM patient_glucose_readings GROUP BY",
            "FROM patient_glucose_readings g JOIN patients p ON p.id = g.patient_id GROUP BY",
        )
        .replace("ref_daily", "ref_local")
    )

    def group_by_local() -> None:
        with transaction.atomic(), db.cursor() as cursor:
            _tune_session()
            cursor.execute(local_sql)
            cursor.execute("DROP TABLE ref_local")

    def group_by() -> None:
        # The same session settings the job gives itself (work_mem, no JIT): only the SQL differs.
        with transaction.atomic(), db.cursor() as cursor:
            _tune_session()
            cursor.execute("DROP TABLE IF EXISTS ref_daily")
            cursor.execute(group_by_sql)
            cursor.execute("DROP TABLE ref_daily")

    group_by()  # warm the cache for both contenders
    group_by_s, _ = timed(group_by)
    full_s, full = timed(lambda: run_aggregation(full=True))
    group_by_again_s, _ = timed(group_by)
    group_by_s = min(group_by_s, group_by_again_s)
    local_s, _ = timed(group_by_local)
    rerun_s, rerun = timed(lambda: run_aggregation(full=True))
    with db.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM patient_wearable_daily_stats")
        stats_rows = cursor.fetchone()[0]

    # One-day sync: every patient gets today through the real write path, one transaction each.
    def one_day_sync() -> int:
        written = 0
        for patient in patients:
            wearable, glucose = day_rows(patient.pk, today)
            readings = [
                (f[1], f[2], f[3], f[4], None, float(f[5]), f[6])
                for f in (line.rstrip("\n").split("\t") for line in wearable)
            ]
            cgm = [
                (f[1], f[2], float(f[3]), float(f[4]), f[5], "", None, f[7])
                for f in (line.rstrip("\n").split("\t") for line in glucose)
            ]
            with transaction.atomic():
                written += store_batch(
                    patient.pk, patient.time_zone, readings, cgm, connection_id=None
                ).written
        return written

    sync_s, synced = timed(one_day_sync)
    incremental_s, incremental = timed(lambda: run_aggregation())

    # Retention of the oldest weeks: DELETE (rolled back) against dropping the same partitions.
    cutoff = first_day + timedelta(weeks=args.retire_weeks)
    retire = [p.name for t in retention.RAW_TABLES for p in list_partitions(t) if p.end <= cutoff]

    def delete_same_rows() -> int:
        deleted = 0
        with db.cursor() as cursor:
            for table in retention.RAW_TABLES:
                cursor.execute(f"DELETE FROM {table} WHERE measured_at < %s", [cutoff])
                deleted += cursor.rowcount
        return deleted

    class Rollback(Exception):
        pass

    started = time.perf_counter()
    try:
        with transaction.atomic():
            deleted = delete_same_rows()
            delete_s = time.perf_counter() - started
            raise Rollback
    except Rollback:
        pass

    def drop() -> retention.CleanupResult:
        result = retention.CleanupResult()
        for table in retention.RAW_TABLES:
            result.removals.append(retention._retention(table, cutoff, False, result))
        return result

    drop_s, dropped = timed(drop)
    assert sorted(dropped.partitions_dropped) == sorted(retire), (dropped.partitions_dropped, retire)

    result = {
        "patients": args.patients,
        "days": days,
        "rows": rows,
        "load_copy_s": round(load_s, 2),
        "stats_rows": stats_rows,
        "group_by_s": round(group_by_s, 3),
        "full_aggregation_s": round(full_s, 3),
        "full_vs_group_by": round(group_by_s / full_s, 3),
        "group_by_local_day_s": round(local_s, 3),
        "full_vs_local_group_by": round(local_s / full_s, 3),
        "full_rerun_s": round(rerun_s, 3),
        "full_rerun_rows_changed": rerun.daily_rows_changed + rerun.rolling_rows_changed,
        "one_day_sync_rows": synced,
        "one_day_sync_s": round(sync_s, 2),
        "incremental_s": round(incremental_s, 3),
        "incremental_marks": incremental.marks_read,
        "incremental_daily_rows_recomputed": incremental.daily_rows_recomputed,
        "incremental_rolling_rows_recomputed": incremental.rolling_rows_recomputed,
        "incremental_share_of_stats": round(incremental.rolling_rows_recomputed / stats_rows, 4),
        "retired_partitions": len(retire),
        "retired_rows": deleted,
        "delete_s": round(delete_s, 3),
        "drop_s": round(drop_s, 3),
        "delete_vs_drop": round(delete_s / drop_s, 1),
        "retention_days_setting": settings.RAW_READING_RETENTION_DAYS,
        "full_rows_written": full.daily_rows_changed,
    }
    if args.json:
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
    else:
        for key, value in result.items():
            print(f"{key:>36}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
