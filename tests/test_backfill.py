"""Backfill on connect (issue 16): a new connection's history, newest chunk first, in chunks whose progress
commits with their rows, so a killed worker's backfill resumes where it stopped: nothing missing, nothing
twice."""

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
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django_q.conf import Conf

from connections.backfill import mark_junction_backfill_complete, plan_backfill, run_backfill
from connections.config import DirectProvidersConfig, JunctionSyncConfig
from connections.models import (
    Backfill,
    BackfillStatus,
    Provider,
    SyncEvent,
    SyncEventKind,
)
from readings.models import GlucoseReading, WearableReading
from sandbox import SandboxServer
from tests.child_process import ROOT, child_env
from tests.conftest import FROZEN_NOW
from tests.direct_helpers import connect, requests_to

CLUSTER = f"""
import time_machine, datetime
time_machine.travel(datetime.datetime.fromisoformat("{FROZEN_NOW.isoformat()}"), tick=True).start()
from django.core.management import execute_from_command_line
execute_from_command_line(["manage.py", "qcluster"])
"""


def real_seconds() -> float:
    return time_machine.escape_hatch.time.monotonic()


def wait_for(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = real_seconds() + timeout
    while not condition():
        assert real_seconds() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def egv_times(sandbox: SandboxServer, user: int, backfill: Backfill) -> set[str]:
    """The oracle: every EGV the sandbox holds in the backfill's range, as the instants we store."""
    records = sandbox.dexcom.egvs(user, backfill.range_start, backfill.range_end, now=FROZEN_NOW)
    return {r["systemTime"] for r in records}


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("frozen_time")
def test_a_connect_starts_a_backfill_that_completes_across_a_killed_worker_without_gaps_or_doubles(
    direct_config: DirectProvidersConfig,
    clean_sandbox: SandboxServer,
    junction_config: JunctionSyncConfig,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings.BACKFILL_ON_CONNECT = True
    monkeypatch.setattr(Conf, "SYNC", False)  # the connect queues the task; a real cluster runs it
    # Each 30-day chunk takes a moment, so the kill finds the backfill between its first and last chunk.
    clean_sandbox.faults.add(
        {"provider": "dexcom", "path_contains": "/egvs", "kind": "slow", "delay": 0.8, "count": -1}
    )

    connection = connect(clean_sandbox, direct_config, Provider.DEXCOM, 1)

    backfill = Backfill.objects.get(connection=connection)
    assert backfill.status == BackfillStatus.PENDING
    assert backfill.range_end - backfill.range_start == timedelta(days=90) and backfill.chunks_total == 3
    env = child_env(
        junction_config,
        Q_SYNC="false",
        Q_WORKERS="1",
        Q_TIMEOUT="20",
        Q_RETRY="25",
        DEXCOM_API_URL=direct_config.dexcom_api_url,
        DEXCOM_CLIENT_ID=direct_config.dexcom_client_id,
        DEXCOM_CLIENT_SECRET=direct_config.dexcom_client_secret,
    )
    cluster = subprocess.Popen([sys.executable, "-c", CLUSTER], cwd=ROOT, env=env, start_new_session=True)
    try:
        wait_for(lambda: Backfill.objects.get(pk=backfill.pk).chunks_done >= 1, 90, "a first chunk")
        os.killpg(cluster.pid, signal.SIGKILL)
        cluster.wait(timeout=30)
        killed_at = Backfill.objects.get(pk=backfill.pk)
        assert killed_at.status == BackfillStatus.RUNNING and killed_at.chunks_done < 3, (
            "finished before the kill"
        )
        # Newest first: what is stored is the most recent part of the range.
        assert killed_at.next_end < killed_at.range_end

        cluster = subprocess.Popen([sys.executable, "-c", CLUSTER], cwd=ROOT, env=env, start_new_session=True)
        wait_for(
            lambda: Backfill.objects.get(pk=backfill.pk).status == BackfillStatus.DONE, 120, "the backfill"
        )
    finally:
        if cluster.poll() is None:
            os.killpg(cluster.pid, signal.SIGKILL)
            cluster.wait(timeout=30)

    backfill.refresh_from_db()
    assert (backfill.chunks_done, backfill.percent_done, backfill.next_end) == (3, 100, backfill.range_start)
    stored = set(
        GlucoseReading.objects.filter(patient=connection.patient).values_list("measured_at", flat=True)
    )
    expected = egv_times(clean_sandbox, 1, backfill)
    assert len(stored) == len(expected) > 25_000  # every reading of 90 days, each once
    assert {m.strftime("%Y-%m-%dT%H:%M") for m in stored} == {t[:16] for t in expected}
    # Only the chunk in flight at the kill was asked for twice.
    windows = [
        (r["query"]["startDate"], r["query"]["endDate"])
        for r in requests_to(clean_sandbox, "dexcom", "/egvs")
    ]
    assert len(set(windows)) == 3 and len(windows) <= 4
    completed = SyncEvent.objects.filter(connection=connection, kind=SyncEventKind.BACKFILL_COMPLETED)
    assert completed.count() == 1 and completed.get().records_stored == backfill.rows_stored


@pytest.mark.django_db
@pytest.mark.usefixtures("frozen_time")
def test_a_backfill_runs_newest_chunk_first_and_reports_its_status_in_the_api_and_the_admin(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer, settings: Any, ops_user: User
) -> None:
    settings.BACKFILL_DAYS = {**settings.BACKFILL_DAYS, "whoop": 60}
    settings.BACKFILL_ON_CONNECT = True  # planned by the connect; queued on a commit this test never makes
    connection = connect(clean_sandbox, direct_config, Provider.WHOOP, 2)
    backfill = Backfill.objects.get(connection=connection)
    client = Client()
    client.force_login(ops_user)
    changelist = client.get(reverse("admin:connections_connection_changelist")).content.decode()
    assert ">pending<" in changelist

    clean_sandbox.requests.clear()
    done = run_backfill(backfill.pk)

    assert done.status == BackfillStatus.DONE and done.chunks_total == 3 and done.rows_stored > 0
    starts = [r["query"]["start"] for r in requests_to(clean_sandbox, "whoop", "/v2/cycle")]
    assert starts == sorted(starts, reverse=True)  # newest chunk first
    assert WearableReading.objects.filter(patient=connection.patient).count() == done.rows_stored
    page = client.get(reverse("admin:connections_connection_change", args=[connection.pk])).content.decode()
    assert "done" in page


@pytest.mark.django_db
@pytest.mark.usefixtures("frozen_time")
def test_a_failing_provider_marks_the_backfill_failed_with_the_reason_and_a_resume_continues(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer, settings: Any
) -> None:
    connection = connect(clean_sandbox, direct_config, Provider.DEXCOM, 2)
    backfill = plan_backfill(connection)
    assert backfill is not None
    clean_sandbox.faults.add({"provider": "dexcom", "path_contains": "/egvs", "status": 400, "count": 1})

    failed = run_backfill(backfill.pk)

    assert failed.status == BackfillStatus.FAILED and "400" in failed.reason and failed.chunks_done == 0
    assert failed.label.startswith("failed: ")
    done = run_backfill(backfill.pk)
    assert done.status == BackfillStatus.DONE and done.chunks_done == 3


@pytest.mark.django_db
@pytest.mark.usefixtures("frozen_time")
def test_libre_backfills_only_what_librelinkup_still_holds(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:
    connection = connect(clean_sandbox, direct_config, Provider.LIBRE, 1)
    backfill = plan_backfill(connection)
    assert backfill is not None and backfill.range_end - backfill.range_start == timedelta(hours=12)
    assert run_backfill(backfill.pk).status == BackfillStatus.DONE


@pytest.mark.django_db
@pytest.mark.usefixtures("frozen_time")
def test_junctions_historical_event_extends_the_backfill_to_the_window_it_names(
    junction_config: JunctionSyncConfig, settings: Any
) -> None:
    from connections.models import Connection
    from connections.providers.registry import open_provider

    settings.JUNCTION_SYNC = junction_config
    settings.BACKFILL_DAYS = {**settings.BACKFILL_DAYS, "junction": 2}
    with open_provider(Provider.JUNCTION, junction_config) as provider:
        provider.job_connections()
    connection = Connection.objects.filter(provider=Provider.JUNCTION).first()
    backfill = plan_backfill(connection)
    assert backfill is not None
    assert run_backfill(backfill.pk).status == BackfillStatus.DONE
    older = (backfill.range_start - timedelta(days=3), backfill.range_end)

    extended = mark_junction_backfill_complete(connection, "heartrate", older)

    assert extended is not None and extended.status == BackfillStatus.PENDING
    assert (extended.range_start, extended.range_end) == (older[0], backfill.range_start)
    assert run_backfill(extended.pk).status == BackfillStatus.DONE
