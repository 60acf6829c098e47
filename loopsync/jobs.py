"""Every job `manage.py run_job NAME` can run now, by the name its schedule carries.

A job here runs inline (no fan-out) and returns its summary as a JSON-able dict; `sandbox` is a running
SandboxServer to point the provider clients at, or None for the configured providers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.conf import settings

if TYPE_CHECKING:
    from sandbox.server import SandboxServer

JobRunner = Callable[..., dict[str, Any]]  # (sandbox, **job options)


def wearable_sync_daily(sandbox: SandboxServer | None) -> dict[str, Any]:
    from connections.models import SyncTrigger
    from connections.sync import run_wearable_sync_job

    config = settings.JUNCTION_SYNC
    if sandbox is not None:
        config = config.replace(
            base_url_override=sandbox.junction_url,
            api_key=sandbox.api_key,
            environment="sandbox",
            user_ids=config.user_ids or tuple(sandbox.junction.user_ids),
        )
    return run_wearable_sync_job(config, trigger=SyncTrigger.COMMAND).as_dict()


def _direct_job(job: str, sandbox: SandboxServer | None) -> dict[str, Any]:
    from connections.models import SyncTrigger
    from connections.sandbox_setup import ensure_sandbox_connections, sandbox_config
    from connections.sync_direct import JOB_PROVIDERS, run_direct_job

    config = settings.DIRECT_PROVIDERS
    connection_ids = None
    if sandbox is not None:
        # Sandbox-backed connections (connected through the real OAuth / login flows); only they are synced.
        config = sandbox_config(sandbox, config)
        connection_ids = ensure_sandbox_connections(
            sandbox, config, JOB_PROVIDERS[job], len(sandbox.libre.users)
        )
    return run_direct_job(
        job,
        config,
        trigger=SyncTrigger.COMMAND,
        connection_ids=connection_ids,
        concurrency=settings.DIRECT_SYNC_CONCURRENCY,
    ).as_dict()


def sync_whoop_data(sandbox: SandboxServer | None) -> dict[str, Any]:
    return _direct_job("sync-whoop-data", sandbox)


def sync_cgm_readings(sandbox: SandboxServer | None) -> dict[str, Any]:
    return _direct_job("sync-cgm-readings", sandbox)


def aggregate_wearable_data(sandbox: SandboxServer | None, *, full: bool = False) -> dict[str, Any]:
    from readings.aggregate import run_aggregation

    return run_aggregation(full=full).as_dict()


def cleanup_wearable_data(sandbox: SandboxServer | None, *, dry_run: bool = False) -> dict[str, Any]:
    from readings.retention import run_cleanup

    result = run_cleanup(dry_run=dry_run)
    return {**result.as_dict(), "report_lines": result.table_lines()}


JOBS: dict[str, JobRunner] = {
    "wearable-sync-daily": wearable_sync_daily,
    "sync-whoop-data": sync_whoop_data,
    "sync-cgm-readings": sync_cgm_readings,
    "aggregate-wearable-data": aggregate_wearable_data,
    "cleanup-wearable-data": cleanup_wearable_data,
}

# run_job flags each job accepts (passed as keyword arguments).
JOB_OPTIONS: dict[str, tuple[str, ...]] = {
    "aggregate-wearable-data": ("full",),
    "cleanup-wearable-data": ("dry_run",),
}
