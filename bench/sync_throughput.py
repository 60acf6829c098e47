#!/usr/bin/env python
"""Sync throughput on PostgreSQL, as ratios against references measured in the same run.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/loopsync_bench \
        .venv/bin/python bench/sync_throughput.py --users 100 --days 7 --json

Figures (rows = wearable + glucose readings the sync stored):
- sync_rows_per_s     end-to-end sync into empty tables: HTTP fetch from the sandbox (its own process, like
                      a remote provider), parse, validate, store, aggregate
- resync_rows_per_s   the same sync again over unchanged data (rows covered per second)
- copy_rows_per_s     a raw COPY of the same rows into the same (emptied) tables: the limit
- naive_rows_per_s    a per-row Django ORM save() loop on a sample
- peak_rss_mb         this process's peak resident memory
Targets: sync/copy >= 0.5, resync >= 3 x sync, sync >= 20 x naive, peak RSS < 300 MB.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "loopsync.settings")
os.environ.setdefault("DEBUG", "true")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/loopsync_bench")
os.environ.setdefault("LOG_LEVEL", "warning")


from pgdb import ensure_database  # noqa: E402  (bench/ is on sys.path when a script runs)


def start_sandbox(users: int, seed: int, days: int) -> tuple[subprocess.Popen[str], str, str]:
    """The fake provider in its own process, like a remote API. Its data is pre-generated (warmed) so the
    figures measure our sync, not the sandbox's generator."""
    api_key = "sk_us_bench"
    command = [sys.executable, "-m", "sandbox", "--port", "0", "--users", str(users), "--seed", str(seed)]
    command += ["--api-key", api_key, "--warm-days", str(days + 1)]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    url = next((word for word in line.split() if word.startswith("http://")), "")
    if not url:
        proc.kill()
        raise SystemExit(f"sandbox did not start: {line!r}")
    return proc, url.rstrip("/"), api_key


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--concurrency", type=int, default=2, help="users synced in parallel")
    parser.add_argument("--naive-sample", type=int, default=3000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    ensure_database(os.environ["DATABASE_URL"])
    import django

    django.setup()
    import orjson
    from django.core.management import call_command
    from django.db import connection as db

    from connections.config import JunctionSyncConfig
    from connections.engine import run_sync_job
    from connections.models import Connection, Patient, SyncEvent, SyncFingerprint
    from connections.providers.junction.provider import JunctionProvider
    from readings.models import DailyStat, GlucoseReading, WearableReading

    call_command("migrate", verbosity=0)
    for model in (
        WearableReading,
        GlucoseReading,
        DailyStat,
        SyncFingerprint,
        SyncEvent,
        Connection,
        Patient,
    ):
        with db.cursor() as cursor:
            cursor.execute(f"TRUNCATE {model._meta.db_table} CASCADE")

    sandbox, url, api_key = start_sandbox(args.users, args.seed, args.days)
    try:
        import httpx

        user_ids = [
            u["user_id"]
            for u in httpx.get(
                f"{url}/junction/v2/user", params={"limit": 500}, headers={"x-vital-api-key": api_key}
            ).json()["users"]
        ][: args.users]
        config = JunctionSyncConfig(
            api_key=api_key,
            base_url_override=f"{url}/junction",
            user_ids=tuple(user_ids),
            lookback_days=args.days,
        )
        t0 = time.perf_counter()
        first = run_sync_job(
            JunctionProvider.job, configs={JunctionProvider.key: config}, concurrency=args.concurrency
        )
        sync_s = time.perf_counter() - t0
        rows = WearableReading.objects.count() + GlucoseReading.objects.count()
        if first.users_failed:
            raise SystemExit(f"sync failed for {first.users_failed} users: {first.errors[:3]}")

        t0 = time.perf_counter()
        second = run_sync_job(
            JunctionProvider.job, configs={JunctionProvider.key: config}, concurrency=args.concurrency
        )
        resync_s = time.perf_counter() - t0
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=10)

    copy_s = measure_copy(db)
    naive_s, naive_rows = measure_naive(args.naive_sample)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    result = {
        "users": args.users,
        "days": args.days,
        "concurrency": args.concurrency,
        "rows": rows,
        "sync_seconds": round(sync_s, 3),
        "resync_seconds": round(resync_s, 3),
        "resync_rows_written": second.records_stored,
        "copy_rows_per_s": round(rows / copy_s),
        "sync_rows_per_s": round(rows / sync_s),
        "resync_rows_per_s": round(rows / resync_s),
        "naive_rows_per_s": round(naive_rows / naive_s),
        "peak_rss_mb": round(peak_rss_mb, 1),
    }
    result["sync_vs_copy"] = round(result["sync_rows_per_s"] / result["copy_rows_per_s"], 3)
    result["resync_vs_sync"] = round(result["resync_rows_per_s"] / result["sync_rows_per_s"], 2)
    result["sync_vs_naive"] = round(result["sync_rows_per_s"] / result["naive_rows_per_s"], 1)
    if args.json:
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
    else:
        for key, value in result.items():
            print(f"{key:>22}: {value}")
    return 0


def measure_copy(db) -> float:  # noqa: ANN001
    """Dump the synced rows, empty the tables, and COPY the same rows back in: the write-path limit."""
    tables = {
        "patient_wearable_readings": "patient_id, metric, source, source_type, measured_at, end_at, value, unit, "
        "connection_id, ingested_at",
        "patient_glucose_readings": "patient_id, source, measured_at, value_mg_dl, original_value, original_unit, "
        "trend, trend_rate, device, connection_id, ingested_at",
    }
    dumps: dict[str, bytes] = {}
    with db.cursor() as cursor:
        pg = cursor.cursor
        for table, columns in tables.items():
            buffer = io.BytesIO()
            with pg.copy(f"COPY (SELECT {columns} FROM {table}) TO STDOUT") as copy:
                for chunk in copy:
                    buffer.write(chunk)
            dumps[table] = buffer.getvalue()
            pg.execute(f"TRUNCATE {table}")
    db.commit() if not db.get_autocommit() else None
    started = time.perf_counter()
    with db.cursor() as cursor:
        pg = cursor.cursor
        for table, columns in tables.items():
            with pg.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                data = dumps[table]
                for offset in range(0, len(data), 1 << 20):
                    copy.write(data[offset : offset + (1 << 20)])
    return time.perf_counter() - started


def measure_naive(sample: int) -> tuple[float, int]:
    """The row-at-a-time ORM path the project never uses on a hot path."""
    from datetime import UTC, datetime, timedelta

    from connections.models import Patient
    from readings.models import WearableReading

    patient = Patient.objects.create(junction_user_id="bench-naive", time_zone="UTC")
    start = datetime(2020, 1, 1, tzinfo=UTC)
    started = time.perf_counter()
    for n in range(sample):
        WearableReading(
            patient=patient,
            metric="heart_rate",
            source="bench",
            source_type="",
            measured_at=start + timedelta(minutes=n),
            value=60.0,
            unit="bpm",
        ).save()
    return time.perf_counter() - started, sample


if __name__ == "__main__":
    sys.exit(main())
