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


def provider_job(job: str) -> JobRunner:
    """run_job's runner of a provider job: every connection synced inline, recorded as a JobRun."""

    def run(sandbox: SandboxServer | None) -> dict[str, Any]:
        from connections.engine import run_sync_job
        from connections.models import SyncTrigger
        from connections.sandbox_setup import sandbox_job_setup

        configs, connection_ids = sandbox_job_setup(sandbox, job) if sandbox is not None else ({}, None)
        return run_sync_job(
            job,
            configs=configs,
            trigger=SyncTrigger.COMMAND,
            connection_ids=connection_ids,
            concurrency=settings.SYNC_JOB_CONCURRENCY,
        ).as_dict()

    return run


def aggregate_wearable_data(sandbox: SandboxServer | None, *, full: bool = False) -> dict[str, Any]:
    from connections.jobruns import track_job
    from readings.aggregate import run_aggregation

    with track_job("aggregate-wearable-data", scheduled=False) as run:
        summary = run_aggregation(full=full).as_dict()
        run.record_summary(summary)
    return {"job_run_id": run.id, **summary}


def cleanup_wearable_data(sandbox: SandboxServer | None, *, dry_run: bool = False) -> dict[str, Any]:
    from connections.jobruns import track_job
    from readings.retention import run_cleanup

    with track_job("cleanup-wearable-data", scheduled=False) as run:
        result = run_cleanup(dry_run=dry_run)
    return {"job_run_id": run.id, **result.as_dict(), "report_lines": result.table_lines()}


READINGS_JOBS: dict[str, JobRunner] = {
    "aggregate-wearable-data": aggregate_wearable_data,
    "cleanup-wearable-data": cleanup_wearable_data,
}


def all_jobs() -> dict[str, JobRunner]:
    """Every job by its schedule name: the providers' (from the registry), then the readings jobs."""
    from connections.providers.registry import provider_jobs

    return {**{name: provider_job(name) for name in provider_jobs()}, **READINGS_JOBS}


# run_job flags each job accepts (passed as keyword arguments).
JOB_OPTIONS: dict[str, tuple[str, ...]] = {
    "aggregate-wearable-data": ("full",),
    "cleanup-wearable-data": ("dry_run",),
}
