"""The django-q2 cluster killed (`kill -9`, every process) in the middle of a fan-out, then started again: every
user is synced exactly once in effect, and the job's run closes with the right counts (issue 18). A real cluster
runs in child processes against this test's database and the session's sandbox."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import time_machine

from connections.config import JunctionSyncConfig
from connections.models import JobRun, JobRunStatus, JobRunUnit, Patient, SyncStatus
from readings.models import WearableReading
from sandbox import SandboxServer
from tests.child_process import ROOT, child_env
from tests.conftest import FROZEN_NOW
from tests.direct_helpers import JUNCTION_JOB

# The child's clock starts at the sandbox's frozen instant, so every delivery asks for the same window.
CLOCK = f"""
import time_machine, datetime
time_machine.travel(datetime.datetime.fromisoformat("{FROZEN_NOW.isoformat()}"), tick=True).start()
"""
SCHEDULE = (
    CLOCK
    + f"""
import django
django.setup()
from connections.tasks import sync_job
sync_job("{JUNCTION_JOB}")
"""
)
CLUSTER = (
    CLOCK
    + """
import sys
from django.core.management import execute_from_command_line
execute_from_command_line(["manage.py", "qcluster"])
"""
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("frozen_time")]


def real_seconds() -> float:
    return time_machine.escape_hatch.time.monotonic()


def wait_for(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = real_seconds() + timeout
    while not condition():
        assert real_seconds() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_cluster_killed_mid_fan_out_and_restarted_syncs_each_user_once_and_closes_the_run(
    junction_config: JunctionSyncConfig, clean_sandbox: SandboxServer
) -> None:
    # A real queue, and a task left by a dead worker delivered again within seconds, not 20 minutes.
    env = child_env(
        junction_config.replace(lookback_days=2),
        Q_SYNC="false",
        Q_WORKERS="2",
        Q_TIMEOUT="20",
        Q_RETRY="25",
    )
    # Every request takes a moment, so the kill finds syncs in flight.
    clean_sandbox.faults.add({"provider": "junction", "kind": "slow", "delay": 0.2, "count": -1})
    subprocess.run([sys.executable, "-c", SCHEDULE], cwd=ROOT, env=env, check=True, timeout=120)
    run = JobRun.objects.get(job=JUNCTION_JOB)
    assert run.users_expected == 3

    cluster = subprocess.Popen([sys.executable, "-c", CLUSTER], cwd=ROOT, env=env, start_new_session=True)
    try:
        # Killed once the first user has reported and the others are being synced.
        wait_for(lambda: JobRunUnit.objects.filter(job_run=run).exists(), 90, "a first unit")
        os.killpg(cluster.pid, signal.SIGKILL)
        cluster.wait(timeout=30)
        killed_with = JobRunUnit.objects.filter(job_run=run).count()
        assert killed_with < 3, "the cluster finished before the kill: the test proves nothing"

        cluster = subprocess.Popen([sys.executable, "-c", CLUSTER], cwd=ROOT, env=env, start_new_session=True)
        wait_for(
            lambda: JobRun.objects.get(pk=run.pk).status != JobRunStatus.RUNNING, 120, "the run to close"
        )
    finally:
        if cluster.poll() is None:
            os.killpg(cluster.pid, signal.SIGKILL)
            cluster.wait(timeout=30)

    run.refresh_from_db()
    assert (run.status, run.users_expected, run.users_synced, run.users_failed, run.users_skipped) == (
        JobRunStatus.SUCCESS,
        3,
        3,
        0,
        0,
    )
    assert JobRunUnit.objects.filter(job_run=run).count() == 3
    # Each user's data once: the natural keys hold, and every user has a finished successful sync.
    for user_id in junction_config.user_ids:
        patient = Patient.objects.get(junction_user_id=user_id)
        assert WearableReading.objects.filter(patient=patient).exists()
        events = patient.connections.get().sync_events.filter(status=SyncStatus.SUCCESS)
        assert events.exists()
