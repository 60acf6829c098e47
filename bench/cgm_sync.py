#!/usr/bin/env python
"""`sync-cgm-readings` over many sandbox CGM connections on PostgreSQL: does one run fit its 30-minute slot?

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/loopsync_bench_cgm \
        .venv/bin/python bench/cgm_sync.py --connections 2000 --json

Half the connections are Dexcom, half FreeStyle Libre (LibreLinkUp), all connected through the real OAuth /
login flows against the sandbox running in its own process (like a remote provider). Then the job runs twice:
- first run: Dexcom `dataRange` + the first day of EGVs, Libre's 12-hour graph (the initial backfill);
- steady run: the same job again, as every 30 minutes: readings since the cursor minus the overlap.
Figures: wall time, connections/s, HTTP requests per connection (from the sandbox's request log), rows stored.
Target (issue 3): a run within 5% of the 30-minute interval, i.e. under 90 s, for 2,000 connections; the
reference is that interval, so `budget_ratio` = run seconds / 90 (must stay below 1).
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
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/loopsync_bench_cgm")
os.environ.setdefault("LOG_LEVEL", "warning")
BUDGET_SECONDS = 90.0


from pgdb import ensure_database  # noqa: E402  (bench/ is on sys.path when a script runs)


def start_sandbox(users: int) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "--port", "0", "--users", str(users), "--seed", "11"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
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
        from sandbox.libre import LibreSandbox
        from sandbox.whoop import WhoopSandbox

        self.base_url = base_url
        # Same seed and sizes as the subprocess: ids and credentials are deterministic.
        self.whoop = WhoopSandbox(users=users, seed=11)
        self.dexcom = DexcomSandbox(users=users, seed=11)
        self.libre = LibreSandbox(users=users, seed=11)
        self.whoop_url, self.dexcom_url, self.libre_url = (
            f"{base_url}/whoop",
            f"{base_url}/dexcom",
            f"{base_url}/libre",
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    ensure_database(os.environ["DATABASE_URL"])

    import django

    django.setup()
    import httpx
    from django.conf import settings
    from django.core.management import call_command

    from connections.engine import run_sync_job
    from connections.models import Connection, OAuthState, Patient
    from connections.providers.dexcom.provider import DexcomProvider
    from connections.providers.libre.provider import LibreProvider
    from connections.sandbox_setup import connect_sandbox_user, sandbox_config
    from readings.models import DailyStat, GlucoseReading

    call_command("migrate", verbosity=0)
    GlucoseReading.objects.all().delete()
    DailyStat.objects.all().delete()
    Connection.objects.all().delete()
    OAuthState.objects.all().delete()
    Patient.objects.all().delete()

    per_provider = args.connections // 2
    proc, url = start_sandbox(per_provider)
    try:
        sandbox = RemoteSandbox(url, per_provider)
        config = sandbox_config(sandbox, settings.DIRECT_PROVIDERS)  # type: ignore[arg-type]
        started = time.perf_counter()
        from concurrent.futures import ThreadPoolExecutor

        from django.db import connections as db_connections

        def connect(item: tuple[str, int]) -> int:
            try:
                return connect_sandbox_user(sandbox, config, item[0], item[1]).pk  # type: ignore[arg-type]
            finally:
                db_connections.close_all()

        work = [(provider, index) for provider in ("dexcom", "libre") for index in range(1, per_provider + 1)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            ids = list(pool.map(connect, work))
        connect_s = time.perf_counter() - started
        figures: dict[str, object] = {
            "connections": len(ids),
            "concurrency": args.concurrency,
            "connect_s": round(connect_s, 1),
        }
        for label in ("first", "steady"):
            httpx.delete(f"{url}/_sandbox/requests")
            started = time.perf_counter()
            result = run_sync_job(
                DexcomProvider.job,
                configs={DexcomProvider.key: config, LibreProvider.key: config},
                connection_ids=ids,
                concurrency=args.concurrency,
            )
            seconds = time.perf_counter() - started
            requests = len(httpx.get(f"{url}/_sandbox/requests", timeout=60).json()["requests"])
            figures[label] = {
                "seconds": round(seconds, 2),
                "connections_per_s": round(len(ids) / seconds, 1),
                "http_requests_per_connection": round(requests / len(ids), 2),
                "rows_stored": result.records_stored,
                "failed": result.users_failed,
                "budget_ratio": round(seconds / BUDGET_SECONDS, 3),
            }
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key}: {value}")
    ok = all(
        isinstance(figures[k], dict) and figures[k]["budget_ratio"] < 1 and not figures[k]["failed"]
        for k in ("first", "steady")
    )  # type: ignore[index]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
