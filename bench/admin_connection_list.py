"""The admin connection list stays fast as connections grow: page time at N connections vs at 1,000.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/loopsync_bench .venv/bin/python bench/admin_connection_list.py

Creates a throwaway test database, 1,000 connections, measures the list (unfiltered, `?health=failing`, a search
by identifier) as the median of 5 renders, grows to --connections, measures again and prints the ratios. The
page's queries never touch the readings tables (tests/test_ops_admin.py asserts it), so readings volume does
not enter; what grows is the connections table itself (the count, the health filter's CASE).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "loopsync.settings_test")

import django  # noqa: E402

django.setup()

from django.contrib.auth.models import Group, User  # noqa: E402
from django.db import connection as db  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402
from django.utils import timezone  # noqa: E402

from connections.models import Connection, Patient, Provider  # noqa: E402

PAGES = {
    "list": "/admin/connections/connection/",
    "failing": "/admin/connections/connection/?health=failing",
    "search": "/admin/connections/connection/?q=user-0000500",
}
PROVIDERS = [Provider.JUNCTION, Provider.WHOOP, Provider.DEXCOM, Provider.LIBRE]


def grow(to: int, start: int) -> None:
    now = timezone.now()
    batch = 5000
    for first in range(start, to, batch):
        ids = range(first, min(first + batch, to))
        patients = Patient.objects.bulk_create([Patient(junction_user_id=f"user-{i:07d}") for i in ids])
        Connection.objects.bulk_create(
            [
                Connection(
                    patient=p,
                    provider=PROVIDERS[i % 4],
                    last_sync_at=now - timedelta(hours=i % 50),
                    failure_streak=i % 5 // 4,
                    last_error="junction: GET /v2/summary/sleep/{id} answered 503" if i % 5 == 4 else "",
                )
                for i, p in zip(ids, patients, strict=True)
            ]
        )
    with db.cursor() as cursor:
        cursor.execute("ANALYZE")


def measure(client: Client) -> dict[str, float]:
    result = {}
    for name, url in PAGES.items():
        client.get(url)
        samples = []
        for _ in range(5):
            t0 = time.perf_counter()
            response = client.get(url)
            samples.append(time.perf_counter() - t0)
            assert response.status_code == 200
        result[name] = statistics.median(samples)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=100_000)
    args = parser.parse_args()
    setup_test_environment()
    old_name = db.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        user = User.objects.create_user("bench-ops", password="bench-password", is_staff=True)
        user.groups.add(Group.objects.get(name="ops"))
        client = Client()
        client.force_login(user)
        grow(1000, 0)
        small = measure(client)
        grow(args.connections, 1000)
        large = measure(client)
        print(f"admin connection list on {db.vendor}: 1,000 vs {args.connections:,} connections")
        for name in PAGES:
            print(
                f"  {name:8s} {small[name] * 1000:7.1f} ms -> {large[name] * 1000:7.1f} ms"
                f"  ratio {large[name] / small[name]:5.2f}x  (connections x{args.connections / 1000:.0f})"
            )
    finally:
        db.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main()
