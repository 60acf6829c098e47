"""Shared provider budgets and circuit breakers (issue 16): every provider request passes one gate in the
database, shared by every worker process, so the app's limit holds at the provider whatever the number of
workers; a provider failing every request stops being called, and a run against it ends at once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest
import time_machine
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from connections import budgets
from connections.config import DirectProvidersConfig, JunctionSyncConfig
from connections.models import BreakerState, Connection, JobRun, Provider, ProviderBreaker, ProviderBudget
from connections.oauth import connect_libre
from connections.providers.base import ProviderRateLimited
from connections.providers.libre.client import LibreLoginRefused
from sandbox import SandboxServer
from tests.child_process import ROOT, child_env
from tests.conftest import FROZEN_NOW
from tests.direct_helpers import WHOOP_JOB, connect, requests_to, run_direct_job

CLOCK = f"""
import time_machine, datetime
time_machine.travel(datetime.datetime.fromisoformat("{FROZEN_NOW.isoformat()}"), tick=True).start()
"""


def real_seconds() -> float:
    return time_machine.escape_hatch.time.monotonic()


def most_in_any_window(times: list[float], window: float) -> int:
    """The largest number of `times` inside any half-open window (t - window, t]: the sandbox's own count."""
    ordered = sorted(times)
    best, first = 0, 0
    for last, moment in enumerate(ordered):
        while ordered[first] <= moment - window:
            first += 1
        best = max(best, last - first + 1)
    return best


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("frozen_time")
def test_two_worker_processes_sharing_whoops_budget_never_exceed_its_limit_at_the_provider(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer, junction_config: JunctionSyncConfig
) -> None:
    # WHOOP's app limit, scaled down: 20 requests in any 3 s (the sandbox counts as WHOOP does, per app).
    clean_sandbox.whoop.per_minute = 20
    clean_sandbox.whoop.minute_seconds = 3.0
    ids = [connect(clean_sandbox, direct_config, Provider.WHOOP, i).pk for i in range(1, 7)]
    clean_sandbox.requests.clear()
    budgets.reset_all()  # the connects' requests spent the default budgets; the children use the scaled one
    env = child_env(
        junction_config,
        WHOOP_API_URL=direct_config.whoop_api_url,
        WHOOP_CLIENT_ID=direct_config.whoop_client_id,
        WHOOP_CLIENT_SECRET=direct_config.whoop_client_secret,
        PROVIDER_BUDGETS=json.dumps({"whoop": [{"limit": 20, "window": 3}]}),
        WHOOP_SYNC_INITIAL_DAYS="30",  # two pages of most collections
    )
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                CLOCK
                + f"""
import django
django.setup()
from connections.engine import run_sync_job
for _ in range(2):
    result = run_sync_job("{WHOOP_JOB}", connection_ids={half}, concurrency=3)
    assert result.ok, result.errors
""",
            ],
            cwd=ROOT,
            env=env,
        )
        for half in (ids[0::2], ids[1::2])
    ]
    for worker in workers:
        assert worker.wait(timeout=180) == 0

    served = requests_to(clean_sandbox, "whoop", "/developer/")
    assert len(served) > 40  # enough requests that two unchecked processes would blow the limit
    assert not [r for r in served if r["status"] == 429]
    assert most_in_any_window([r["t"] for r in served], 3.0) <= 20
    assert JobRun.objects.filter(job=WHOOP_JOB, users_synced=3).count() == 4
    budget = ProviderBudget.objects.get(provider="whoop")
    assert budget.granted == len(requests_to(clean_sandbox, "whoop"))  # every request passed the gate


@pytest.mark.django_db
@pytest.mark.usefixtures("frozen_time")
def test_a_provider_failing_every_request_opens_the_breaker_and_the_run_ends_fast_with_connections_marked(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer, settings: Any
) -> None:
    settings.PROVIDER_BREAKER = {**settings.PROVIDER_BREAKER, "min_requests": 4, "cooldown": 600.0}
    settings.SYNC_RETRY_BASE_SECONDS = 0.5  # as in production: retries that would take time
    for i in range(1, 7):
        connect(clean_sandbox, direct_config, Provider.WHOOP, i)
    clean_sandbox.requests.clear()
    budgets.reset_all()  # a fresh window: the connects' successful requests do not dilute the failures
    clean_sandbox.faults.add(
        {"provider": "whoop", "path_contains": "/developer/", "status": 503, "count": -1}
    )

    started = real_seconds()
    result = run_direct_job(WHOOP_JOB, direct_config)
    elapsed = real_seconds() - started

    assert result.users_failed == 6
    # Without the breaker: 6 users x 3 sync attempts x 4 HTTP attempts = 72 requests and their backoff.
    assert len(requests_to(clean_sandbox, "whoop", "/developer/")) == 4
    assert elapsed < 3.0
    breaker = ProviderBreaker.objects.get(provider="whoop")
    assert breaker.state == BreakerState.OPEN and breaker.times_opened == 1
    for connection in Connection.objects.filter(provider=Provider.WHOOP):
        assert connection.failure_streak == 1
        assert "circuit breaker" in connection.last_error or "503" in connection.last_error


@pytest.mark.django_db
@pytest.mark.usefixtures("frozen_time")
def test_after_the_cool_down_one_probe_closes_the_breaker_when_the_provider_is_back(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer, settings: Any
) -> None:
    # A cool-down longer than a run of 3 connections takes, even on a busy machine: one probe per run.
    settings.PROVIDER_BREAKER = {**settings.PROVIDER_BREAKER, "min_requests": 4, "cooldown": 1.5}
    for i in range(1, 4):
        connect(clean_sandbox, direct_config, Provider.WHOOP, i)
    budgets.reset_all()
    fault = clean_sandbox.faults.add(
        {"provider": "whoop", "path_contains": "/developer/", "status": 500, "count": -1}
    )
    run_direct_job(WHOOP_JOB, direct_config)
    assert ProviderBreaker.objects.get(provider="whoop").state == BreakerState.OPEN

    # Still down after the cool-down: the one probe fails and the breaker opens again.
    time.sleep(1.6)
    clean_sandbox.requests.clear()
    assert run_direct_job(WHOOP_JOB, direct_config).users_failed == 3
    assert len(requests_to(clean_sandbox, "whoop", "/developer/")) == 1
    breaker = ProviderBreaker.objects.get(provider="whoop")
    assert breaker.state == BreakerState.OPEN and breaker.times_opened == 2

    clean_sandbox.faults.remove(fault["id"])
    time.sleep(1.6)
    result = run_direct_job(WHOOP_JOB, direct_config)

    assert result.users_synced == 3, result.errors
    assert ProviderBreaker.objects.get(provider="whoop").state == BreakerState.CLOSED


@pytest.mark.django_db
@pytest.mark.usefixtures("frozen_time")
def test_libre_logins_stop_before_the_lock_out_and_say_how_long_to_wait(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:
    from connections.models import Patient

    user = clean_sandbox.libre.user(2)
    patient = Patient.objects.create()
    for _ in range(2):
        with pytest.raises(LibreLoginRefused):
            connect_libre(patient, user.email, "wrong", direct_config)
    for password in ("wrong", user.password):  # even the right one waits: a third failure would lock
        with pytest.raises(ProviderRateLimited) as refused:
            connect_libre(patient, user.email, password, direct_config)
        assert 50 < (refused.value.retry_after or 0) <= 62

    logins = requests_to(clean_sandbox, "libre", "/llu/auth/login")
    assert len(logins) == 2 and all(r["status"] == 200 for r in logins)  # never "locked" (429)


@pytest.mark.django_db
@pytest.mark.usefixtures("frozen_time")
def test_a_successful_login_does_not_count_towards_the_guard(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:
    from connections.models import Patient

    user = clean_sandbox.libre.user(3)
    for _ in range(4):
        connect_libre(Patient.objects.create(), user.email, user.password, direct_config)
    with pytest.raises(LibreLoginRefused):
        connect_libre(Patient.objects.create(), user.email, "wrong", direct_config)


@pytest.mark.django_db
@pytest.mark.usefixtures("frozen_time")
def test_job_health_shows_each_providers_budget_use_and_breaker_state(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer, settings: Any, ops_user: User
) -> None:
    settings.PROVIDER_BREAKER = {**settings.PROVIDER_BREAKER, "min_requests": 4, "cooldown": 600.0}
    connect(clean_sandbox, direct_config, Provider.WHOOP, 1)
    budgets.reset_all()  # the connect counted as successes; a fresh window
    connect(clean_sandbox, direct_config, Provider.DEXCOM, 1)
    clean_sandbox.faults.add(
        {"provider": "whoop", "path_contains": "/developer/", "status": 502, "count": -1}
    )
    run_direct_job(WHOOP_JOB, direct_config)
    client = Client()
    client.force_login(ops_user)

    page = client.get(reverse("admin:connections_jobhealth_changelist")).content.decode()

    assert "Provider budgets and circuit breakers" in page
    assert "whoop@127.0.0.1" in page and "100 per 60 s" in page and "10000 per 86400 s" in page
    assert "dexcom@127.0.0.1" in page and "60000 per 3600 s" in page
    assert 'class="ls-breaker-open"' in page


def test_a_bucket_never_allows_more_than_the_limit_in_any_window() -> None:
    for limit, window in ((100, 60.0), (10_000, 86_400.0), (20, 3.0), (60_000, 3600.0), (2, 1.0)):
        bucket = budgets.Limit(limit, window, "app")
        assert bucket.capacity + bucket.rate * window <= limit - max(1, limit // 50) + 1e-6 or limit <= 2
        assert bucket.rate * window >= 0.9 * limit or limit < 50  # and keeps most of it usable


@pytest.mark.django_db(transaction=True)
def test_a_finished_threads_gate_connection_is_closed_not_left_open() -> None:
    """Pool threads come and go (the Junction fetch pool lives one job run); each one's gate connection must
    go with it, or a worker running many syncs and backfills exhausts PostgreSQL's max_connections."""
    import gc
    import threading

    from django.db import connection

    def open_connections() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"
            )
            return cursor.fetchone()[0]

    budgets.close_connections()
    before = open_connections()

    def claim() -> None:
        budgets._execute("SELECT 1", None)

    for _ in range(3):
        threads = [threading.Thread(target=claim) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    gc.collect()
    deadline = time.monotonic() + 5
    while open_connections() > before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert open_connections() == before
    assert len(budgets._opened) == 0
