"""Issue 17, item 13: `make look`'s pieces. The demo seeds every state and a superuser (idempotently), and with
SANDBOX_URL every provider host is the sandbox, so a Force resync on the demo database never leaves it."""

from __future__ import annotations

import dataclasses
import io
import os
import subprocess
import sys
from typing import Any

import pytest
from django.contrib.auth import authenticate
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from connections import actions
from connections.config import DirectProvidersConfig, JunctionSyncConfig, pointed_at_sandbox
from connections.health import Health, health_of, needs_reconnect
from connections.models import Connection, Patient, Provider, SyncEvent, SyncEventKind, SyncStatus
from sandbox import SandboxServer

pytestmark = [pytest.mark.django_db]

SETTINGS = (
    "import django; django.setup(); from django.conf import settings as s; "
    "print(s.JUNCTION_SYNC.base_url); print(s.DIRECT_PROVIDERS)"
)


def settings_with(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "SANDBOX_ENABLED", "SANDBOX_URL")}
    return subprocess.run(
        [sys.executable, "-c", SETTINGS],
        env={**clean, "DJANGO_SETTINGS_MODULE": "loopsync.settings", "SECRET_KEY": "x" * 50, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_with_sandbox_url_every_provider_host_is_the_sandbox() -> None:
    result = settings_with(DEBUG="true", SANDBOX_URL="http://127.0.0.1:18765/")
    assert result.returncode == 0, result.stderr
    junction, direct = result.stdout.splitlines()[:2]
    assert junction == "http://127.0.0.1:18765/junction"
    urls = [part.split("=", 1)[1].strip("'") for part in direct.split(", ") if "_url" in part.split("=")[0]]
    assert len(urls) == 4 and all(u.startswith("http://127.0.0.1:18765/") for u in urls), direct
    for real in ("whoop.com", "dexcom.com", "libreview.io", "junction.com", "tryvital"):
        assert real not in result.stdout


def test_sandbox_url_is_refused_outside_local_work() -> None:
    result = settings_with(SANDBOX_URL="http://127.0.0.1:18765", DATABASE_URL=os.environ["DATABASE_URL"])
    assert result.returncode != 0 and "SANDBOX_URL is for local work" in result.stderr


def test_a_provider_url_the_sandbox_does_not_serve_is_refused() -> None:
    @dataclasses.dataclass(frozen=True)
    class WithNewProvider(DirectProvidersConfig):
        newprovider_api_url: str = "https://api.newprovider.example"

    with pytest.raises(ImproperlyConfigured, match="NEWPROVIDER_API_URL would not use the sandbox"):
        pointed_at_sandbox("http://127.0.0.1:1", JunctionSyncConfig(), WithNewProvider())


def test_a_force_resync_on_the_demo_database_goes_to_the_sandbox(
    clean_sandbox: SandboxServer, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    junction, direct = pointed_at_sandbox(
        clean_sandbox.base_url, JunctionSyncConfig(lookback_days=1), settings.DIRECT_PROVIDERS
    )
    # The test session's sandbox expects its own key, not the default one `make look`'s sandbox publishes.
    junction = junction.replace(api_key=clean_sandbox.api_key)
    settings.JUNCTION_SYNC, settings.DIRECT_PROVIDERS = junction, direct
    patient = Patient.objects.create(junction_user_id=clean_sandbox.junction.user_ids[0])
    connection = Connection.objects.create(patient=patient, provider=Provider.JUNCTION)
    before = len(clean_sandbox.requests.snapshot(provider="junction"))

    with django_capture_on_commit_callbacks(execute=True):
        request = actions.do_request_resync(connection, actor="admin")

    assert request is not None
    request.refresh_from_db()
    assert request.status == SyncStatus.SUCCESS
    assert len(clean_sandbox.requests.snapshot(provider="junction")) > before


def test_seed_ops_demo_makes_every_state_and_the_superuser_and_can_run_twice(settings: Any) -> None:
    settings.SANDBOX_ENABLED = True
    out = io.StringIO()
    call_command("seed_ops_demo", stdout=out)
    call_command("seed_ops_demo", stdout=io.StringIO())

    assert "user admin  password loopsync-demo" in out.getvalue()
    assert authenticate(username="admin", password="loopsync-demo").is_superuser  # type: ignore[union-attr]
    now = timezone.now()
    states = {c.patient.junction_user_id: c for c in Connection.objects.select_related("patient")}
    assert len(states) == 4
    assert health_of(states["demo-failing-7c1e"], now) == Health.FAILING
    assert health_of(states["demo-stale-3b9a"], now) == Health.STALE
    assert health_of(states["demo-revoked-5d2f"], now) == Health.INACTIVE
    assert needs_reconnect(states["demo-revoked-5d2f"])
    inactive = states["demo-inactive-8e4c"]
    assert health_of(inactive, now) == Health.INACTIVE and not needs_reconnect(inactive)
    # Written once however often it runs.
    assert SyncEvent.objects.filter(kind=SyncEventKind.DEACTIVATED).count() == 1
    assert SyncEvent.objects.filter(kind=SyncEventKind.SYNC).count() == 2


def test_seed_ops_demo_refuses_outside_local_work(settings: Any) -> None:
    settings.SANDBOX_ENABLED = False
    with pytest.raises(CommandError, match="DEBUG=true"):
        call_command("seed_ops_demo", stdout=io.StringIO())


def test_the_demos_sandbox_connections_are_connected_again_to_a_new_sandbox(
    clean_sandbox: SandboxServer, direct_config: DirectProvidersConfig
) -> None:
    from connections.models import ProviderCredential
    from connections.sandbox_setup import SandboxAt, connect_sandbox_user, reconnect_known_sandbox_users
    from tests.direct_helpers import sync

    whoop = connect_sandbox_user(clean_sandbox, direct_config, Provider.WHOOP, 1)
    dexcom = connect_sandbox_user(clean_sandbox, direct_config, Provider.DEXCOM, 2)
    # Tokens the running sandbox never issued (`make demo`'s own sandbox did, and has gone).
    for credential in ProviderCredential.objects.filter(connection__in=[whoop, dexcom]):
        credential.access_token = credential.refresh_token = "issued-by-another-sandbox"
        credential.save()
    connections = Connection.objects.count()
    refused = sync(whoop, direct_config, sleep=lambda _: None)
    assert refused.status == "failed"  # what the demo's first scheduled run would have found

    served = SandboxAt(clean_sandbox.base_url, users=len(clean_sandbox.libre.users), seed=7)
    assert reconnect_known_sandbox_users(served, direct_config) == 2

    assert Connection.objects.count() == connections  # nothing new, the same patients
    for connection in (whoop, dexcom):
        connection.refresh_from_db()
        assert connection.status == "active"
        summary = sync(connection, direct_config)
        assert summary.status == "success", summary.errors


def test_the_seeded_states_never_fail_a_demo_job_run(
    settings: Any, junction_config: JunctionSyncConfig, direct_config: DirectProvidersConfig
) -> None:
    from tests.direct_helpers import CGM_JOB, WHOOP_JOB, run_direct_job, run_wearable_sync_job

    settings.SANDBOX_ENABLED = True
    call_command("seed_ops_demo", stdout=io.StringIO())

    assert run_wearable_sync_job(junction_config).ok
    for job in (WHOOP_JOB, CGM_JOB):
        result = run_direct_job(job, direct_config)
        assert result.ok and not result.users, (
            job
        )  # no sandbox account connected: nothing, and nothing failed
