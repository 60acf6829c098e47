"""django-q2 task entry points: thin wrappers that take ids, re-fetch, and call connections.sync."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django_q.tasks import async_task

from connections.models import Connection, Provider, SyncTrigger
from connections.providers.junction import JunctionClient
from connections.sync import JOB_NAME, _check_runnable, ensure_junction_connections, sync_junction_connection

logger = logging.getLogger("loopsync.tasks")


def wearable_sync_daily() -> dict[str, Any]:
    """The 03:00 UTC schedule: resolve the users, then queue one task per user.

    Fanning out lets every worker on every machine take a share; each user task is safe to run twice
    (natural-key upserts, the connection row lock, the cursor moving only with its data).
    """
    config = settings.JUNCTION_SYNC
    _check_runnable(config)
    with JunctionClient.from_config(config) as client:
        connections = ensure_junction_connections(config, client)
    queued = 0
    for connection in connections:
        async_task(
            "connections.tasks.sync_junction_user",
            connection.pk,
            SyncTrigger.SCHEDULE,
            group=JOB_NAME,
            task_name=f"{JOB_NAME}:{connection.pk}",
        )
        queued += 1
    logger.info("%s queued %d user syncs", JOB_NAME, queued, extra={"job": JOB_NAME, "users_queued": queued})
    return {"job": JOB_NAME, "users_queued": queued}


def sync_junction_user(connection_id: int, trigger: str = SyncTrigger.SCHEDULE) -> dict[str, Any]:
    connection = (
        Connection.objects.select_related("patient")
        .filter(pk=connection_id, provider=Provider.JUNCTION)
        .first()
    )
    if connection is None:
        return {"connection_id": connection_id, "status": "gone"}
    config = settings.JUNCTION_SYNC
    with JunctionClient.from_config(config) as client:
        summary = sync_junction_connection(connection, config, client, trigger=trigger)
    return summary.as_dict()


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
