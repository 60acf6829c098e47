"""kill -9 in the middle of a sync, at seeded random moments, then a rerun: the tables equal a clean run's, and no
sync event is left running (issue 18). The sync runs in a child process against this test's database and the
session's sandbox, as a worker would."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.utils import timezone

from connections.config import JunctionSyncConfig
from connections.engine import close_interrupted_events
from connections.models import Connection, Patient, SyncEvent, SyncFingerprint, SyncStatus
from readings.models import DailyStat, GlucoseReading, WearableReading
from sandbox import SandboxServer
from tests.child_process import ROOT, child_env
from tests.conftest import FROZEN_NOW

KILLS = 10
SEED = 20261206

# The child syncs as the scheduled job does; its clock starts at the sandbox's frozen instant so every run asks
# for the same window and gets the same data.
CHILD = f"""
import time_machine, datetime
with time_machine.travel(datetime.datetime.fromisoformat("{FROZEN_NOW.isoformat()}"), tick=True):
    import os, django
    django.setup()
    from connections.engine import run_sync_job
    if not os.environ.get("CRASH_PROBE"):
        run_sync_job("wearable-sync-daily", trigger="command")
"""

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("frozen_time")]


def run_child(env: dict[str, str], kill_after: float | None = None) -> float:
    """Run the child to its end, or SIGKILL it after `kill_after` seconds; its wall time (real seconds: this
    test's own clock is frozen, and so is time.monotonic, which Popen.wait's timeout would use)."""
    clock = time_machine.escape_hatch.time.monotonic
    started = clock()
    child = subprocess.Popen([sys.executable, "-c", CHILD], cwd=ROOT, env=env)
    if kill_after is not None:
        time.sleep(kill_after)
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
    assert child.wait() in (0, -signal.SIGKILL)
    return clock() - started


def snapshot() -> dict[str, Any]:
    user = "patient__junction_user_id"
    return {
        "readings": sorted(
            WearableReading.objects.values_list(
                user, "metric", "source", "source_type", "measured_at", "end_at", "value", "unit"
            )
        ),
        "glucose": sorted(
            GlucoseReading.objects.values_list(
                user, "source", "measured_at", "value_mg_dl", "trend", "device"
            )
        ),
        # PostgreSQL sums floats in the order it reads the rows, which a crash and a rerun may change: the
        # statistics are compared to 9 significant digits, far below any unit stored.
        "daily": sorted(
            (*key, *(float(f"{v:.9g}") for v in values), count)
            for *key, count, values in (
                (u, m, d, n, (a, lo, hi, s))
                for u, m, d, a, lo, hi, s, n in DailyStat.objects.values_list(
                    user, "metric", "day", "avg", "min", "max", "sum", "count"
                )
            )
        ),
        "fingerprints": sorted(
            SyncFingerprint.objects.values_list("connection__" + user, "resource", "day", "digest", "records")
        ),
    }


def forget_everything() -> None:
    for model in (
        WearableReading,
        GlucoseReading,
        DailyStat,
        SyncFingerprint,
        SyncEvent,
        Connection,
        Patient,
    ):
        model.objects.all().delete()


def test_a_sync_killed_at_ten_random_moments_and_run_again_leaves_what_a_clean_run_leaves(
    junction_config: JunctionSyncConfig, clean_sandbox: SandboxServer
) -> None:
    env = child_env(junction_config.replace(lookback_days=2))
    # Every request takes a moment, as over a real network: the sync's own time is what the kills aim at.
    clean_sandbox.faults.add({"provider": "junction", "kind": "slow", "delay": 0.1, "count": -1})
    clean_seconds = run_child(env)
    expected = snapshot()
    assert expected["readings"] and expected["daily"]
    forget_everything()

    startup_seconds = run_child({**env, "CRASH_PROBE": "1"})
    sync_seconds = max(clean_seconds - startup_seconds, 0.2)
    rng = random.Random(SEED)
    interrupted = 0
    for _ in range(KILLS):
        before = SyncEvent.objects.filter(status=SyncStatus.RUNNING).count()
        run_child(env, kill_after=startup_seconds + rng.uniform(0, sync_seconds))
        interrupted += SyncEvent.objects.filter(status=SyncStatus.RUNNING).count() > before
    # The kills must land inside syncs, or this test proves nothing.
    assert interrupted >= 2, f"only {interrupted} of {KILLS} kills interrupted a sync"
    run_child(env)  # the next scheduled run

    assert snapshot() == expected
    # The killed runs' events are closed by the sweep of any run past the task retry horizon.
    later = timezone.now() + timedelta(hours=1)
    close_interrupted_events(now=later)
    assert not SyncEvent.objects.filter(status=SyncStatus.RUNNING).exists()
    assert SyncEvent.objects.filter(status=SyncStatus.SUCCESS).count() >= 3
