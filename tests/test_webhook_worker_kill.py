"""The production path with a real django-q2 cluster: the receiver writes each inbox row and its task in one
statement; the cluster, killed (`kill -9`, every process) while processing and started again, processes every
delivery, and the tables are those of processing them once, in order."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django_q.conf import Conf
from django_q.models import OrmQ

from connections.inbox import process_event
from connections.models import WebhookEvent, WebhookStatus
from sandbox import SandboxServer
from sandbox.webhooks import DEFAULT_JUNCTION_SECRET, WebhookEmitter
from tests.child_process import ROOT, child_env
from tests.conftest import FROZEN_NOW
from tests.test_webhooks import deliveries, junction_patient, tables, wipe_readings

CLUSTER = f"""
import time_machine, datetime
time_machine.travel(datetime.datetime.fromisoformat("{FROZEN_NOW.isoformat()}"), tick=True).start()
from django.core.management import execute_from_command_line
execute_from_command_line(["manage.py", "qcluster"])
"""

pytestmark = pytest.mark.django_db(transaction=True)


def real_seconds() -> float:
    return time_machine.escape_hatch.time.monotonic()


def wait_for(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = real_seconds() + timeout
    while not condition():
        assert real_seconds() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def processed() -> int:
    return WebhookEvent.objects.filter(status=WebhookStatus.PROCESSED).count()


def test_a_cluster_killed_while_processing_and_restarted_processes_every_delivery_once(
    live_server: Any, settings: Any, junction_config: Any, clean_sandbox: SandboxServer, monkeypatch: Any
) -> None:
    settings.JUNCTION_WEBHOOK_SECRET = DEFAULT_JUNCTION_SECRET
    monkeypatch.setattr(Conf, "SYNC", False)  # as in production: the receiver queues, a cluster processes
    patient = junction_patient(clean_sandbox, 1)
    emitter = WebhookEmitter(junction_url=f"{live_server.url}/webhooks/junction", retry_scale=0.0, seed=9)
    with time_machine.travel(FROZEN_NOW, tick=False):
        messages = deliveries(
            clean_sandbox, emitter, patient.junction_user_id, FROZEN_NOW - timedelta(hours=8), FROZEN_NOW
        )
        emitter.send_many(messages)
    emitter.close()
    handled = WebhookEvent.objects.filter(status=WebhookStatus.RECEIVED).count()
    assert handled > 3 and OrmQ.objects.count() == handled  # each row with its task, nothing processed yet

    env = child_env(junction_config, Q_SYNC="false", Q_WORKERS="2", Q_TIMEOUT="8", Q_RETRY="10")
    env["JUNCTION_WEBHOOK_SECRET"] = DEFAULT_JUNCTION_SECRET
    cluster = subprocess.Popen([sys.executable, "-c", CLUSTER], cwd=ROOT, env=env, start_new_session=True)
    try:
        wait_for(lambda: processed() >= 1, 60, "the first delivery processed")
        os.killpg(cluster.pid, signal.SIGKILL)
        cluster.wait(timeout=10)
        cluster = subprocess.Popen([sys.executable, "-c", CLUSTER], cwd=ROOT, env=env, start_new_session=True)
        wait_for(lambda: processed() == handled, 90, "every delivery processed after the restart")
    finally:
        if cluster.poll() is None:
            os.killpg(cluster.pid, signal.SIGKILL)
            cluster.wait(timeout=10)

    after_crash = tables()
    assert after_crash["readings"]
    # The oracle: the same deliveries processed once each, in order, in this process.
    ids = list(WebhookEvent.objects.filter(status=WebhookStatus.PROCESSED).values_list("pk", flat=True))
    assert len(ids) == handled and process_event(ids[0]) is None  # done: a late redelivery does nothing
    wipe_readings()
    monkeypatch.setattr(Conf, "SYNC", True)
    emitter = WebhookEmitter(junction_url=f"{live_server.url}/webhooks/junction", retry_scale=0.0, seed=10)
    with time_machine.travel(FROZEN_NOW, tick=False):
        emitter.send_many(
            deliveries(
                clean_sandbox, emitter, patient.junction_user_id, FROZEN_NOW - timedelta(hours=8), FROZEN_NOW
            )
        )
    emitter.close()
    assert tables() == after_crash
