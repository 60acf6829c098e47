"""django-q2 task entry points: thin wrappers that take ids, re-fetch, and call connections.sync."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django_q.tasks import async_task

from connections.actions import sync_connection_now
from connections.jobruns import UNIT_FAILED, UNIT_SKIPPED, record_unit, track_job
from connections.models import Connection, Provider, SyncTrigger
from connections.providers.junction import JunctionClient
from connections.sync import JOB_NAME, _check_runnable, ensure_junction_connections, sync_junction_connection

logger = logging.getLogger("loopsync.tasks")


def wearable_sync_daily() -> dict[str, Any]:
    """The 03:00 UTC schedule: resolve the users, then queue one task per user.

    Fanning out lets every worker on every machine take a share; each user task is safe to run twice
    (natural-key upserts, the connection row lock, the cursor moving only with its data). The JobRun stays
    open until every user task has reported (connections/jobruns.py).
    """
    with track_job(JOB_NAME) as run:
        config = settings.JUNCTION_SYNC
        _check_runnable(config)
        with JunctionClient.from_config(config) as client:
            connections = ensure_junction_connections(config, client)
        run.expect_units(len(connections))
        queued = 0
        for connection in connections:
            async_task(
                "connections.tasks.sync_junction_user",
                connection.pk,
                SyncTrigger.SCHEDULE,
                run.id,
                group=JOB_NAME,
                task_name=f"{JOB_NAME}:{connection.pk}",
            )
            queued += 1
        logger.info(
            "%s queued %d user syncs",
            JOB_NAME,
            queued,
            extra={"job": JOB_NAME, "job_run_id": run.id, "users_queued": queued},
        )
        return {"job": JOB_NAME, "job_run_id": run.id, "users_queued": queued}


def sync_junction_user(
    connection_id: int, trigger: str = SyncTrigger.SCHEDULE, job_run_id: int | None = None
) -> dict[str, Any]:
    outcome, stored = UNIT_FAILED, 0
    try:
        connection = (
            Connection.objects.select_related("patient")
            .filter(pk=connection_id, provider=Provider.JUNCTION)
            .first()
        )
        if connection is None:
            outcome = UNIT_SKIPPED
            return {"connection_id": connection_id, "status": "gone"}
        config = settings.JUNCTION_SYNC
        with JunctionClient.from_config(config) as client:
            summary = sync_junction_connection(connection, config, client, trigger=trigger)
        outcome, stored = summary.status, summary.records_stored
        return summary.as_dict()
    finally:
        # Also when the sync raised: the run must learn this user is done, or it never finishes.
        record_unit(job_run_id, outcome, records_stored=stored)


def sync_connection(
    connection_id: int, trigger: str = SyncTrigger.ADMIN, actor: str = "", force: bool = True
) -> dict[str, Any]:
    """One connection now, whatever its provider: the admin's Force resync queues this."""
    connection = Connection.objects.select_related("patient").filter(pk=connection_id).first()
    if connection is None:
        return {"connection_id": connection_id, "status": "gone"}
    summary = sync_connection_now(connection, trigger=trigger, actor=actor, force=force)
    logger.info(
        "connection sync finished",
        extra={
            "connection_id": connection_id,
            "provider": connection.provider,
            "trigger": trigger,
            "status": summary.status,
            "records_stored": summary.records_stored,
            "duration_s": summary.duration_s,
        },
    )
    return summary.as_dict()


# --- Direct providers: sync-whoop-data (daily) and sync-cgm-readings (every 30 minutes) ----------------------


def _fan_out(job: str) -> dict[str, Any]:
    """Queue one task per active connection of the job's providers; inactive ones are not even queued.

    Tracked like wearable-sync-daily: the JobRun stays open until every connection's task has reported.
    """
    from connections.sync_direct import active_connections

    with track_job(job) as run:
        connections = list(active_connections(job))
        run.expect_units(len(connections))
        for connection in connections:
            async_task(
                "connections.tasks.sync_direct_connection_task",
                connection.pk,
                SyncTrigger.SCHEDULE,
                run.id,
                group=job,
                task_name=f"{job}:{connection.pk}",
            )
        logger.info(
            "%s queued %d connection syncs",
            job,
            len(connections),
            extra={"job": job, "job_run_id": run.id, "connections_queued": len(connections)},
        )
        return {"job": job, "job_run_id": run.id, "connections_queued": len(connections)}


def sync_whoop_data() -> dict[str, Any]:
    from connections.sync_direct import WHOOP_JOB

    return _fan_out(WHOOP_JOB)


def sync_cgm_readings() -> dict[str, Any]:
    from connections.sync_direct import CGM_JOB

    return _fan_out(CGM_JOB)


def sync_direct_connection_task(
    connection_id: int, trigger: str = SyncTrigger.SCHEDULE, job_run_id: int | None = None
) -> dict[str, Any]:
    from connections.sync_direct import FETCHERS, DirectClients, sync_direct_connection

    outcome, stored = UNIT_FAILED, 0
    try:
        connection = (
            Connection.objects.select_related("patient")
            .filter(pk=connection_id, provider__in=list(FETCHERS))
            .first()
        )
        if connection is None:
            outcome = UNIT_SKIPPED
            return {"connection_id": connection_id, "status": "gone"}
        with DirectClients(settings.DIRECT_PROVIDERS) as clients:
            summary = sync_direct_connection(connection, clients, trigger=trigger)
        outcome, stored = summary.status, summary.records_stored
        return summary.as_dict()
    finally:
        # Also when the sync raised: the run must learn this connection is done, or it never finishes.
        record_unit(job_run_id, outcome, records_stored=stored)


def run_manual_sync(sync_request_id: int) -> dict[str, Any]:
    """A patient's manual sync (queued by the REST API); safe to deliver twice (the first claim wins)."""
    from connections.actions import do_manual_sync

    request = do_manual_sync(sync_request_id)
    if request is None:
        return {"sync_request_id": sync_request_id, "status": "gone"}
    return {
        "sync_request_id": sync_request_id,
        "status": request.status,
        "records_stored": request.records_stored,
    }
