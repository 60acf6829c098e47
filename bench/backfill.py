#!/usr/bin/env python
"""Backfill on connect (issue 16) on PostgreSQL, against the sandbox in its own process, in one run:

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/loopsync_bench_backfill \\
        .venv/bin/python bench/backfill.py --json

1. reference: `bench/sync_throughput.py` (the Junction sync benchmark) run first, its `sync_rows_per_s`;
2. WHOOP: 180-day backfills of `--whoop-connections` (500) connections under WHOOP's per-app budget, scaled
   (`--budget LIMIT/SECONDS`, the sandbox enforcing the same limit per app, with 429s): figure `budget_ratio` =
   the backfill's wall time / the time the budget itself needs for the requests made (requests × seconds /
   limit). Target ≤ 1.10 (within 10 % of what the budget allows), and no 429 from the sandbox;
3. Dexcom: 90-day backfills of `--dexcom-connections` (200) connections: `dexcom_rows_per_s`, target
   ≥ 0.5 × the reference's `sync_rows_per_s`.
Connections are made through the real OAuth flows first (not timed); backfills run `--concurrency` at a time,
as django-q2 workers would, each through `connections.backfill.run_backfill`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "loopsync.settings")
os.environ.setdefault("DEBUG", "true")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/loopsync_bench_backfill")
os.environ.setdefault("LOG_LEVEL", "warning")
os.environ["BACKFILL_ON_CONNECT"] = "false"  # the bench plans and runs the backfills itself, timed
SEED = 11

from pgdb import ensure_database  # noqa: E402  (bench/ is on sys.path when a script runs)


def reference_sync_rows_per_s(users: int, days: int) -> float:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "sync_throughput.py"),
            "--users",
            str(users),
            "--days",
            str(days),
        ]
        + ["--json", "--naive-sample", "300"],
        cwd=ROOT,
        env=os.environ,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["sync_rows_per_s"])


def start_sandbox(
    users: int, limit: int, window: float, whoop_days: int, dexcom_days: int
) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "sandbox", "--port", "0", "--users", str(users), "--seed", str(SEED)]
    command += ["--whoop-history-days", str(whoop_days + 2), "--dexcom-history-days", str(dexcom_days + 2)]
    command += ["--whoop-per-minute", str(limit), "--whoop-minute-seconds", str(window)]
    command += ["--whoop-per-day", str(10**9)]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    url = next((word for word in line.split() if word.startswith("http://")), "")
    if not url:
        proc.kill()
        raise SystemExit(f"sandbox did not start: {line!r}")
    return proc, url.rstrip("/")


class RemoteSandbox:
    """Just enough of SandboxServer for sandbox_config/connect helpers, for a sandbox in another process."""

    def __init__(self, base_url: str, users: int) -> None:
        from sandbox.dexcom import DexcomSandbox
        from sandbox.whoop import WhoopSandbox

        self.base_url = base_url
        self.whoop = WhoopSandbox(users=users, seed=SEED)
        self.dexcom = DexcomSandbox(users=users, seed=SEED)
        self.whoop_url, self.dexcom_url = f"{base_url}/whoop", f"{base_url}/dexcom"
        self.libre_url = f"{base_url}/libre"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--whoop-connections", type=int, default=500)
    parser.add_argument("--dexcom-connections", type=int, default=200)
    parser.add_argument("--whoop-days", type=int, default=180)
    parser.add_argument("--dexcom-days", type=int, default=90)
    parser.add_argument("--budget", default="1000/10", help="WHOOP's app limit, scaled: REQUESTS/SECONDS")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--sync-users", type=int, default=30, help="users of the reference sync benchmark")
    parser.add_argument("--sync-days", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    limit, window = int(args.budget.split("/")[0]), float(args.budget.split("/")[1])
    os.environ["PROVIDER_BUDGETS"] = json.dumps({"whoop": [{"limit": limit, "window": window}]})
    ensure_database(os.environ["DATABASE_URL"])
    figures: dict[str, object] = {}
    figures["reference_sync_rows_per_s"] = reference_sync_rows_per_s(args.sync_users, args.sync_days)

    import django

    django.setup()
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection as db
    from django.db import connections as db_connections

    from connections import budgets
    from connections.backfill import plan_backfill, run_backfill
    from connections.models import Backfill, Connection
    from connections.sandbox_setup import connect_sandbox_user, sandbox_config

    call_command("migrate", verbosity=0)
    with db.cursor() as cursor:
        for table in (
            "patient_wearable_readings",
            "patient_glucose_readings",
            "patient_wearable_daily_stats",
        ):
            cursor.execute(f"TRUNCATE {table}")  # noqa: S608 - fixed names
        cursor.execute("TRUNCATE patient_connections, patients CASCADE")
    settings.BACKFILL_DAYS = {**settings.BACKFILL_DAYS, "whoop": args.whoop_days, "dexcom": args.dexcom_days}
    users = max(args.whoop_connections, args.dexcom_connections)
    proc, url = start_sandbox(users, limit, window, args.whoop_days, args.dexcom_days)
    try:
        sandbox = RemoteSandbox(url, users)
        config = sandbox_config(sandbox, settings.DIRECT_PROVIDERS)  # type: ignore[arg-type]
        settings.DIRECT_PROVIDERS = config

        def isolated(function):  # type: ignore[no-untyped-def]
            def run(item):  # type: ignore[no-untyped-def]
                try:
                    return function(item)
                finally:
                    db_connections.close_all()
                    budgets.close_thread_connection()

            return run

        @isolated
        def connect(item: tuple[str, int]) -> int:
            return connect_sandbox_user(sandbox, config, item[0], item[1]).pk  # type: ignore[arg-type]

        work = [("whoop", i) for i in range(1, args.whoop_connections + 1)]
        work += [("dexcom", i) for i in range(1, args.dexcom_connections + 1)]
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(connect, work))
        figures["connect_s"] = round(time.perf_counter() - started, 1)

        @isolated
        def backfill(backfill_id: int) -> str:
            return run_backfill(backfill_id).status

        for provider in ("whoop", "dexcom"):
            ids = [
                plan_backfill(c).pk  # type: ignore[union-attr]
                for c in Connection.objects.select_related("patient").filter(provider=provider).order_by("pk")
            ]
            budgets.reset_all()  # the connects spent some budget; each backfill starts with a full bucket
            httpx.delete(f"{url}/_sandbox/requests")
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
                statuses = list(pool.map(backfill, ids))
            seconds = time.perf_counter() - started
            log = httpx.get(f"{url}/_sandbox/requests", timeout=120).json()["requests"]
            data = [r for r in log if r["provider"] == provider and "/oauth" not in r["path"]]
            rows = sum(b.rows_stored for b in Backfill.objects.filter(pk__in=ids))
            entry: dict[str, object] = {
                "connections": len(ids),
                "seconds": round(seconds, 1),
                "requests": len(data),
                "responses_429": sum(1 for r in data if r["status"] == 429),
                "rows_stored": rows,
                "rows_per_s": round(rows / seconds),
                "failed": sum(1 for s in statuses if s != "done"),
            }
            if provider == "whoop":
                budget_seconds = len(data) * window / limit
                entry["budget_seconds"] = round(budget_seconds, 1)
                entry["budget_ratio"] = round(seconds / budget_seconds, 3)
            else:
                entry["vs_reference_sync"] = round(
                    rows / seconds / float(figures["reference_sync_rows_per_s"]), 2
                )
            figures[provider] = entry
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        budgets.close_connections()
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key}: {value}")
    whoop, dexcom = figures["whoop"], figures["dexcom"]
    ok = (
        whoop["budget_ratio"] <= 1.10  # type: ignore[index,operator]
        and not whoop["responses_429"]  # type: ignore[index]
        and not whoop["failed"]  # type: ignore[index]
        and not dexcom["failed"]  # type: ignore[index]
        and dexcom["vs_reference_sync"] >= 0.5  # type: ignore[index,operator]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
