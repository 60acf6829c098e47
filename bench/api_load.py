#!/usr/bin/env python
"""REST API under load: gunicorn serving the app on PostgreSQL, wrk as the load generator, one run.

    .venv/bin/python bench/api_load.py --duration 10 --connections 16 [--json]

Three endpoints on the same server, one after the other, each for --duration seconds:
- ping          GET /api/ping: a trivial DRF view (no auth, no database): the reference
- daily_stats   GET /api/patient-graph/wearables/daily-stats?metric=heart_rate (Clerk JWT verified, 30 rows)
- manual_sync   POST /api/patient-graph/wearables/sync {"source": <the patient's wearable>} (Clerk JWT,
                source resolution, the patient row lock, single flight: the first POST of a patient queues a
                sync, the rest return it)
Each request carries the token of one of --patients patients (random), as the consumer app would.
The three run --rounds times, interleaved, each round starting with another endpoint; each ratio is taken
within its round. Reported: the median over the rounds of req/s, p50 and p99 latency and each endpoint's
throughput / ping's (with every round's ratio), and the total of non-2xx responses.
Target: daily_stats and manual_sync >= 0.45 x ping, every query through Django's cursor.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "loopsync.settings")
os.environ.setdefault("DEBUG", "true")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/loopsync_i5_bench")
os.environ.setdefault("LOG_LEVEL", "warning")


from pgdb import ensure_database  # noqa: E402  (bench/ is on sys.path when a script runs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def seed(sandbox, patients: int, *, queued: bool = True) -> list[tuple[str, str]]:
    """Patients with Clerk ids, Junction connections and 30 days of daily stats; returns (clerk id, source)."""
    from datetime import date, timedelta

    from connections.models import Connection, Patient, SyncRequest
    from readings.models import DailyStat

    SyncRequest.objects.all().delete()
    DailyStat.objects.all().delete()
    Connection.objects.all().delete()
    Patient.objects.all().delete()
    users = sandbox.junction.users[:patients]
    created = Patient.objects.bulk_create(
        [
            Patient(junction_user_id=u.user_id, clerk_user_id=f"user_bench_{i}", time_zone=u.time_zone)
            for i, u in enumerate(users)
        ]
    )
    connections = Connection.objects.bulk_create(
        [Connection(patient=p, provider="junction") for p in created]
    )
    today = date(2026, 3, 10)
    DailyStat.objects.bulk_create(
        [
            DailyStat(
                patient=p,
                metric=metric,
                day=today - timedelta(days=d),
                avg=60.0,
                min=40.0,
                max=120.0,
                sum=6e4,
                count=1000,
            )
            for p in created
            for metric in ("heart_rate", "steps", "hrv_rmssd", "sleep_duration")
            for d in range(30)
        ],
        batch_size=5000,
    )
    # Every patient already has a sync queued (no worker runs in the benchmark): the POSTs measure the steady
    # state of an app that re-POSTs while a sync is pending. A first POST (a new request: the row and
    # django-q2's queue row, two commits) is not what this measures.
    if queued:
        SyncRequest.objects.bulk_create(
            [
                SyncRequest(patient=p, source=u.provider, connection=c)
                for p, u, c in zip(created, users, connections, strict=True)
            ]
        )
    return [(p.clerk_user_id, u.provider) for p, u in zip(created, users, strict=True)]


# Every request is built once, at start-up, so the load generator's own work per request is a table lookup
# for every endpoint alike.
def vacuum_seeded_tables() -> None:
    """Every run deletes and re-inserts its rows: without a vacuum the tables and their indexes grow with each
    run (autovacuum is off on some development servers, and would not have run yet on the others), and the
    endpoints would be measured against dead rows no production table keeps."""
    from django.db import connection

    from connections.models import Connection, Patient, SyncRequest
    from readings.models import DailyStat

    with connection.cursor() as cursor:
        for model in (Patient, Connection, SyncRequest, DailyStat):
            cursor.execute(f'VACUUM (FULL, ANALYZE) "{model._meta.db_table}"')


LUA = """
local tokens = {%(tokens)s}
local sources = {%(sources)s}
local method, path = "%(method)s", "%(path)s"
local requests = {}
math.randomseed(%(seed)d)
for i = 1, #tokens do
  local headers = {}
  local body = nil
  if tokens[i] ~= "" then headers["Authorization"] = "Bearer " .. tokens[i] end
  if method == "POST" then
    headers["Content-Type"] = "application/json"
    body = '{"source": "' .. sources[i] .. '"}'
  end
  requests[i] = wrk.format(method, path, headers, body)
end
request = function()
  return requests[math.random(#requests)]
end
"""


def run_wrk(url: str, method: str, path: str, tokens: list[str], sources: list[str], args) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            LUA
            % {
                "tokens": ",".join(f'"{t}"' for t in tokens),
                "sources": ",".join(f'"{s}"' for s in sources),
                "method": method,
                "path": path,
                "seed": 42,
            }
        )
    command = ["wrk", "-t", str(args.threads), "-c", str(args.connections), "-d", f"{args.duration}s"]
    command += ["--latency", "-s", script.name, url]
    done = subprocess.run(command, capture_output=True, text=True)
    os.unlink(script.name)
    if done.returncode != 0:
        raise SystemExit(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    out = done.stdout

    def latency_ms(label: str) -> float:
        value, unit = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "req_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": latency_ms("50"),
        "p99_ms": latency_ms("99"),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
    }


def median_figures(runs: list[dict]) -> dict:
    """Each figure's median over the rounds (counts are totals: one failed request in any round shows), and
    every round's ratio to ping as measured."""
    totals = {"requests", "non_2xx"}
    figures = {
        key: (sum if key in totals else statistics.median)(run[key] for run in runs) for key in runs[0]
    }
    figures["ratio_to_ping"] = round(figures["ratio_to_ping"], 3)
    figures["ratios"] = [round(run["ratio_to_ping"], 3) for run in runs]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=3, help="gunicorn worker processes")
    parser.add_argument("--gunicorn-args", default="", help="extra gunicorn options, e.g. '--threads 2'")
    parser.add_argument("--patients", type=int, default=100)
    parser.add_argument(
        "--warmup", type=int, default=10, help="seconds of POSTs before measuring (fills caches)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="interleaved rounds, each in another order; each figure is the median over them",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    ensure_database(os.environ["DATABASE_URL"])

    import django

    django.setup()
    from django.core.management import call_command

    from sandbox import SandboxServer

    call_command("migrate", "--noinput", verbosity=0)
    with SandboxServer(port=0, users=args.patients, seed=11, api_key="sk_us_bench") as sandbox:
        pairs = seed(sandbox, args.patients)
        vacuum_seeded_tables()
        tokens = [sandbox.clerk.mint(clerk_id, ttl=3600) for clerk_id, _ in pairs]
        sources = [source for _, source in pairs]
        port = free_port()
        env = {
            **os.environ,
            "DEBUG": "false",
            "SECRET_KEY": "bench-only-secret",
            "FIELD_ENCRYPTION_KEYS": "YmVuY2gtb25seS1maWVsZC1lbmNyeXB0aW9uLWtleSE=",
            "ALLOWED_HOSTS": "127.0.0.1",
            "DB_CONN_MAX_AGE": "600",
            # Networkless verification, as recommended for production (no JWKS round trip).
            "CLERK_JWT_KEY": sandbox.clerk.public_pem(),
            "CLERK_JWKS_URL": "",
            "CLERK_ISSUER": sandbox.clerk.issuer,
            "CLERK_AUTHORIZED_PARTIES": "http://localhost:3000",
            "JUNCTION_API_KEY": "sk_us_bench",
            "JUNCTION_BASE_URL": sandbox.junction_url,
            "MANUAL_SYNC_PER_HOUR": "1000",
            "LOG_LEVEL": "warning",
        }
        server = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "gunicorn"),
                "loopsync.wsgi",
                "-b",
                f"127.0.0.1:{port}",
                "-w",
                str(args.workers),
                *(args.gunicorn_args.split() if args.gunicorn_args else []),
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit("gunicorn did not start") from None
                    time.sleep(0.2)
            # Warm-up: every worker imports, connects, and learns each patient's Junction sources once.
            warm = argparse.Namespace(**{**vars(args), "duration": args.warmup})
            run_wrk(
                f"{base}/api/patient-graph/wearables/sync",
                "POST",
                "/api/patient-graph/wearables/sync",
                tokens,
                sources,
                warm,
            )
            endpoints = {
                "ping": (f"{base}/api/ping", "GET", "/api/ping", [""], [""]),
                "daily_stats": (
                    base,
                    "GET",
                    "/api/patient-graph/wearables/daily-stats?metric=heart_rate&start=2026-02-09&end=2026-03-10",
                    tokens,
                    sources,
                ),
                "manual_sync": (base, "POST", "/api/patient-graph/wearables/sync", tokens, sources),
            }
            # Rounds interleave the endpoints and each ratio is taken within its round: a shared machine's drift
            # between the first and the last run then moves the reference too, instead of showing up as a
            # difference between endpoints.
            rounds: list[dict[str, dict]] = []
            names = list(endpoints)
            for round_index in range(args.rounds):
                # Each round starts with another endpoint, so drift within a round favours none of them.
                order = names[round_index % len(names) :] + names[: round_index % len(names)]
                measured = {name: run_wrk(*endpoints[name], args) for name in order}
                for figures in measured.values():
                    figures["ratio_to_ping"] = figures["req_per_s"] / measured["ping"]["req_per_s"]
                rounds.append(measured)
            junction_lookups = len(sandbox.requests.snapshot(provider="junction"))
        finally:
            server.terminate()
            server.wait(timeout=30)
    results = {name: median_figures([r[name] for r in rounds]) for name in endpoints}
    results["manual_sync"]["junction_lookups"] = junction_lookups
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"gunicorn -w {args.workers} on PostgreSQL; wrk -t{args.threads} -c{args.connections} -d{args.duration}s;"
        f" median of {args.rounds} interleaved rounds"
    )
    print(f"{'endpoint':<12} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'x ping':>7}")
    print(
        f"Junction provider lookups (cache misses) during the run: {results['manual_sync']['junction_lookups']}"
    )
    for name, f in results.items():
        print(
            f"{name:<12} {f['req_per_s']:>9.0f} {f['p50_ms']:>8.2f} {f['p99_ms']:>8.2f} {f['non_2xx']:>8}"
            f" {f['ratio_to_ping']:>7.2f}  (rounds: {', '.join(f'{r:.2f}' for r in f['ratios'])})"
        )


if __name__ == "__main__":
    main()
