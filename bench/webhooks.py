#!/usr/bin/env python
"""Webhook receiver under sustained signed deliveries, and end-to-end freshness with a django-q2 cluster.

    .venv/bin/python bench/webhooks.py [--deliveries 3000] [--concurrency 8] [--rounds 3] [--rate 20 --seconds 30]

gunicorn serves the app on PostgreSQL (production settings, DEBUG off, the ORM broker).
1. Acknowledgement: --deliveries Svix-signed Junction `daily.data.*` deliveries (real sandbox payloads, each its own
   svix-id, signed at send time) POSTed by --concurrency client threads to /webhooks/junction: verify, inbox row
   (encrypted body), queue row, 202. The reference, measured in the same run with the same client: GET /api/ping
   (a trivial DRF view, no database). Rounds interleave the two; each ratio is taken within its round.
   Target: receiver events/s >= 0.5 x ping's requests/s.
2. Freshness: a django-q2 cluster (manage.py qcluster, Q_WORKERS workers) running; the sandbox's feed sends the
   events of what arrives for --users connected users at --rate deliveries a second for --seconds; freshness of
   each = its inbox row's processed_at (the commit of its readings) - the moment the sandbox sent it.
   Target: p99 < 5 s.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "loopsync.settings")
os.environ.setdefault("DEBUG", "true")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/loopsync_webhooks_bench")
os.environ.setdefault("LOG_LEVEL", "warning")

from pgdb import ensure_database  # noqa: E402  (bench/ is on sys.path when a script runs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered)) - 1))]


def wait_for_port(port: int, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit(f"{what} did not start") from None
            time.sleep(0.2)


def load(count: int, concurrency: int, request: Callable[..., int]) -> dict[str, float]:
    """`count` requests from `concurrency` threads, each with its own keep-alive client."""
    import httpx

    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    counter = iter(range(count))

    def worker() -> None:
        nonlocal errors
        with httpx.Client(timeout=30) as client:
            while True:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                started = time.perf_counter()
                status = request(client, index)
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    errors += not 200 <= status < 300

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {
        "per_s": count / wall,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deliveries", type=int, default=3000, help="signed deliveries per round")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=3, help="gunicorn worker processes (render.yaml: 3)")
    parser.add_argument("--threads", type=int, default=1, help="gunicorn threads per worker (render.yaml: 1)")
    parser.add_argument("--q-workers", type=int, default=2, help="django-q2 cluster workers")
    parser.add_argument("--users", type=int, default=5)
    parser.add_argument("--rate", type=float, default=20.0, help="deliveries a second in the freshness phase")
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    ensure_database(os.environ["DATABASE_URL"])

    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection as db

    call_command("migrate", "--noinput", verbosity=0)
    from connections.models import Connection, Patient, WebhookEvent, WebhookStatus
    from sandbox import SandboxServer
    from sandbox.webhooks import DEFAULT_JUNCTION_SECRET, WebhookEmitter, WebhookFeed, svix_signature

    with db.cursor() as cursor:
        cursor.execute(
            "TRUNCATE webhook_inbox, django_q_ormq, patient_wearable_readings, patient_glucose_readings"
        )
    with SandboxServer(port=0, users=max(args.users, 20), seed=23, api_key="sk_us_bench") as sandbox:
        # Real payloads: every timeseries and summary event of the last day of 20 users, hour by hour.
        now = datetime.now(UTC)
        bodies: list[bytes] = []
        maker = WebhookEmitter(seed=1)
        for user in sandbox.junction.users[:20]:
            for hour in range(24):
                since = now - timedelta(hours=24 - hour)
                for event_type, data in sandbox.junction.arrivals(
                    user.user_id, since, since + timedelta(hours=1)
                ):
                    bodies.append(maker.junction_message(event_type, user.user_id, data).body)
        port = free_port()
        env = {
            **os.environ,
            "DEBUG": "false",
            "SECRET_KEY": "bench-only-secret",
            "FIELD_ENCRYPTION_KEYS": "YmVuY2gtb25seS1maWVsZC1lbmNyeXB0aW9uLWtleSE=",
            "ALLOWED_HOSTS": "127.0.0.1",
            "DB_CONN_MAX_AGE": "600",
            "CLERK_JWT_KEY": sandbox.clerk.public_pem(),
            "CLERK_ISSUER": sandbox.clerk.issuer,
            "CLERK_AUTHORIZED_PARTIES": "http://localhost:3000",
            "JUNCTION_API_KEY": "sk_us_bench",
            "JUNCTION_BASE_URL": sandbox.junction_url,
            "JUNCTION_WEBHOOK_SECRET": DEFAULT_JUNCTION_SECRET,
            "Q_WORKERS": str(args.q_workers),
            "LOG_LEVEL": "warning",
        }
        gunicorn = subprocess.Popen(
            [str(Path(sys.executable).parent / "gunicorn"), "loopsync.wsgi", "-b", f"127.0.0.1:{port}"]
            + ["-w", str(args.workers), "--threads", str(args.threads), "--log-level", "warning"],
            cwd=ROOT,
            env=env,
        )
        cluster: subprocess.Popen | None = None
        try:
            wait_for_port(port, gunicorn, "gunicorn")
            base = f"http://127.0.0.1:{port}"
            sequence = iter(range(10**9))

            def deliver(client, index: int) -> int:  # type: ignore[no-untyped-def]
                body = bodies[index % len(bodies)]
                msg_id = f"msg_bench_{next(sequence)}_{os.getpid()}"
                stamp = int(time.time())
                headers = {
                    "svix-id": msg_id,
                    "svix-timestamp": str(stamp),
                    "svix-signature": svix_signature(DEFAULT_JUNCTION_SECRET, msg_id, stamp, body),
                    "content-type": "application/json",
                }
                return client.post(f"{base}/webhooks/junction", content=body, headers=headers).status_code

            def ping(client, index: int) -> int:  # type: ignore[no-untyped-def]
                return client.get(f"{base}/api/ping").status_code

            load(200, args.concurrency, deliver)  # warm-up: imports, connections
            load(200, args.concurrency, ping)
            rounds = []
            for n in range(args.rounds):
                order = [("ping", ping), ("receiver", deliver)]
                if n % 2:
                    order.reverse()
                measured = {name: load(args.deliveries, args.concurrency, fn) for name, fn in order}
                measured["receiver"]["ratio"] = measured["receiver"]["per_s"] / measured["ping"]["per_s"]
                rounds.append(measured)
            stored = WebhookEvent.objects.count()

            # --- freshness, with a cluster draining the queue ---
            with db.cursor() as cursor:
                cursor.execute("TRUNCATE webhook_inbox, django_q_ormq")
            users = sandbox.junction.users[: args.users]
            for user in users:
                patient, _ = Patient.objects.get_or_create(
                    junction_user_id=user.user_id, defaults={"time_zone": user.time_zone}
                )
                Connection.objects.get_or_create(patient=patient, provider="junction")
            cluster = subprocess.Popen(
                [sys.executable, "manage.py", "qcluster"], cwd=ROOT, env=env, start_new_session=True
            )
            time.sleep(3)  # its workers start
            emitter = WebhookEmitter(junction_url=f"{base}/webhooks/junction", seed=None)
            feed = WebhookFeed(sandbox, emitter, junction_users=[u.user_id for u in users], whoop_users=[])
            hour = now - timedelta(days=2)
            pending = []
            while len(pending) < args.rate * args.seconds:
                pending += feed.messages(hour, hour + timedelta(hours=1))
                hour += timedelta(hours=1)
            pending = pending[: int(args.rate * args.seconds)]
            sent_at: dict[str, float] = {}
            interval = 1 / args.rate
            next_send = time.time()
            with ThreadPoolExecutor(max_workers=4) as pool:
                for message in pending:
                    delay = next_send - time.time()
                    if delay > 0:
                        time.sleep(delay)
                    next_send += interval
                    sent_at[message.message_id] = time.time()
                    pool.submit(emitter.send, message)
            deadline = time.time() + 60
            while (
                time.time() < deadline and WebhookEvent.objects.filter(status=WebhookStatus.RECEIVED).exists()
            ):
                time.sleep(0.5)
            processed = dict(
                WebhookEvent.objects.filter(status=WebhookStatus.PROCESSED).values_list(
                    "delivery_id", "processed_at"
                )
            )
            freshness = [processed[m].timestamp() - sent_at[m] for m in sent_at if m in processed]
            ignored = WebhookEvent.objects.filter(status=WebhookStatus.IGNORED).count()
            emitter.close()
        finally:
            if cluster is not None:
                cluster.terminate()
                cluster.wait(timeout=30)
            gunicorn.terminate()
            gunicorn.wait(timeout=30)

    print(
        f"gunicorn -w {args.workers} --threads {args.threads} on PostgreSQL; {args.concurrency} client threads; {args.deliveries} requests per "
        f"endpoint and round, {args.rounds} interleaved rounds; {stored} deliveries stored"
    )
    print(f"{'endpoint':<10} {'per s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'x ping':>7}")
    for name in ("ping", "receiver"):
        figures = [r[name] for r in rounds]
        ratio = statistics.median(r["receiver"]["ratio"] for r in rounds) if name == "receiver" else 1.0
        print(
            f"{name:<10} {statistics.median(f['per_s'] for f in figures):>8.0f}"
            f" {statistics.median(f['p50_ms'] for f in figures):>8.2f}"
            f" {statistics.median(f['p99_ms'] for f in figures):>8.2f}"
            f" {sum(f['errors'] for f in figures):>7} {ratio:>7.2f}"
            + (
                f"  (rounds: {', '.join(format(r['receiver']['ratio'], '.2f') for r in rounds)})"
                if name == "receiver"
                else ""
            )
        )
    if freshness:
        print(
            f"freshness (sandbox sent -> readings committed), django-q2 cluster of {args.q_workers} workers, "
            f"{len(freshness)} processed of {len(sent_at)} sent ({ignored} ignored types) at {args.rate}/s: "
            f"p50 {percentile(freshness, 50):.2f} s, p99 {percentile(freshness, 99):.2f} s, "
            f"max {max(freshness):.2f} s"
        )
    else:
        print("freshness: no event was processed")


if __name__ == "__main__":
    main()
