"""Shared helpers for the sync tests over real HTTP against the sandbox: one connection through the engine,
and a provider job run inline with the providers pointed at a test configuration."""

from __future__ import annotations

from typing import Any

from connections.config import DirectProvidersConfig, JunctionSyncConfig
from connections.engine import JobResult, UserSyncSummary, run_sync_job, sync_summary
from connections.models import Connection, ProviderCredential
from connections.providers.dexcom.provider import DexcomProvider
from connections.providers.junction.provider import JunctionProvider
from connections.providers.registry import open_provider, provider_jobs
from connections.providers.whoop.provider import WhoopProvider
from connections.sandbox_setup import connect_sandbox_user
from sandbox import SandboxServer

CGM_JOB = DexcomProvider.job
WHOOP_JOB = WhoopProvider.job
JUNCTION_JOB = JunctionProvider.job


def connect(sandbox: SandboxServer, config: DirectProvidersConfig, provider: str, index: int) -> Connection:
    return connect_sandbox_user(sandbox, config, provider, index)


def sync(connection: Connection, config: Any, **kwargs: Any) -> UserSyncSummary:
    """One connection through the engine, as a job run syncs it (its summary)."""
    connection.refresh_from_db()
    with open_provider(connection.provider, config) as provider:
        return sync_summary(connection, provider, **kwargs)


def run_direct_job(job: str, config: DirectProvidersConfig, **kwargs: Any) -> JobResult:
    configs = {p.key: config for p in provider_jobs()[job].providers}
    return run_sync_job(job, configs=configs, **kwargs)


def run_wearable_sync_job(config: JunctionSyncConfig, **kwargs: Any) -> JobResult:
    return run_sync_job(JUNCTION_JOB, configs={JunctionProvider.key: config}, **kwargs)


def expire_stored_token(connection: Connection) -> None:
    """The stored access token looks expired to us (and is expired at the provider)."""
    from datetime import UTC, datetime

    ProviderCredential.objects.filter(connection=connection).update(
        expires_at=datetime(2000, 1, 1, tzinfo=UTC)
    )


def requests_to(
    sandbox: SandboxServer, provider: str, path_contains: str = "", method: str | None = None
) -> list[dict]:
    return sandbox.requests.snapshot(provider=provider, path_contains=path_contains or None, method=method)
