"""django-q2 task entry points: thin wrappers that take ids, re-fetch, and call the engine."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from typing import Any

from django.db import DatabaseError
from django_q.tasks import async_task

from connections.engine import ConnectionInactive, close_interrupted_events, sync_connection
from connections.jobruns import UNIT_FAILED, UNIT_SKIPPED, record_unit, track_job
from connections.models import Connection, SyncTrigger
from connections.providers.registry import PROVIDERS, open_provider, provider_jobs

logger = logging.getLogger("loopsync.tasks")


def sync_job(job: str) -> dict[str, Any]:
    """A provider job's schedule: find its connections, then queue one task per connection.

    Fanning out lets every worker on every machine take a share; each connection's task is safe to run twice
    (natural-key upserts, the connection row lock, the cursor moving only with its data). The JobRun stays
    open until every task has reported (connections/jobruns.py).
    """
    close_interrupted_events()
    with track_job(job) as run, ExitStack() as stack:
        connections: list[Connection] = []
        for provider_type in provider_jobs()[job].providers:
            provider = stack.enter_context(open_provider(provider_type.key))
            provider.check_configured()
            connections += provider.job_connections()
        run.expect_units(len(connections))
        for connection in connections:
            async_task(
                "connections.tasks.sync_connection_task",
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


def sync_connection_task(
    connection_id: int, trigger: str = SyncTrigger.SCHEDULE, job_run_id: int | None = None
) -> dict[str, Any]:
    """One connection of a fanned-out job.

    A database or broker failure is not this connection's outcome: nothing is reported and the error goes
    to the queue, which delivers the task again (Q_CLUSTER max_attempts); the run counts the unit once.
    """
    outcome: str | None = UNIT_FAILED
    stored = 0
    try:
        connection = (
            Connection.objects.select_related("patient")
            .filter(pk=connection_id, provider__in=list(PROVIDERS))
            .first()
        )
        if connection is None:
            outcome = UNIT_SKIPPED
            return {"connection_id": connection_id, "status": "gone"}
        try:
            event = sync_connection(connection, trigger=trigger, job_run_id=job_run_id)
        except ConnectionInactive:
            outcome = UNIT_SKIPPED
            return {"connection_id": connection_id, "status": "skipped"}
        outcome, stored = event.status, event.records_stored
        if event.status == "success":
            # The gap ledger learns of days below the expected share as soon as a sync has seen them.
            from connections.gaps import detect_gaps

            detect_gaps(connection)
        return {"connection_id": connection_id, "sync_event_id": event.pk, "status": event.status}
    except DatabaseError:
        outcome = None
        raise
    finally:
        # Also when the sync raised a bug: the run must learn this connection is done, or it never finishes.
        if outcome is not None:
            record_unit(job_run_id, outcome, records_stored=stored, unit=connection_id)


def sync_connection_now_task(
    connection_id: int,
    trigger: str = SyncTrigger.ADMIN,
    actor: str = "",
    force: bool = True,
    request_event_id: int | None = None,
) -> dict[str, Any]:
    """One connection now, whatever its provider: the admin's Force resync queues this.

    The returned status is the sync's own (django-q2 lists the task as successful whenever it returned)."""
    from connections.actions import do_run_resync

    event = do_run_resync(
        connection_id, trigger=trigger, actor=actor, force=force, request_event_id=request_event_id
    )
    if event is None:
        return {"connection_id": connection_id, "status": "skipped"}
    return {"connection_id": connection_id, "sync_event_id": event.pk, "status": event.status}


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


def process_webhook_task(event_id: int) -> dict[str, Any]:
    """One inbox event (queued by the receiver on commit); a redelivered task finds it done and does nothing."""
    from connections.inbox import process_event

    return {"webhook_event_id": event_id, "status": process_event(event_id) or "nothing to do"}


def process_delivery_task(provider: str, delivery_id: str) -> dict[str, Any]:
    """One delivery, queued by the receiver in the statement that wrote its inbox row."""
    from connections.inbox import process_event
    from connections.models import WebhookEvent

    event_id = (
        WebhookEvent.objects.filter(provider=provider, delivery_id=delivery_id)
        .values_list("pk", flat=True)
        .first()
    )
    if event_id is None:
        return {"delivery_id": delivery_id, "status": "gone"}
    return {"webhook_event_id": event_id, "status": process_event(event_id) or "nothing to do"}


def process_webhook_inbox() -> dict[str, Any]:
    """The process-webhook-inbox schedule: events whose task was lost, failed ones, users who appeared."""
    from connections.inbox import sweep

    return sweep()


def run_backfill_task(backfill_id: int) -> dict[str, Any]:
    """A connection's backfill (connections.backfill): delivered again after a worker died, it resumes at the
    last stored chunk. A database failure raises, so the queue delivers it again."""
    from connections.backfill import run_backfill
    from connections.models import Backfill

    try:
        backfill = run_backfill(backfill_id)
    except Backfill.DoesNotExist:
        return {"backfill_id": backfill_id, "status": "gone"}
    return {"backfill_id": backfill_id, "status": backfill.status, "rows_stored": backfill.rows_stored}


def repair_gap_task(gap_id: int) -> dict[str, Any]:
    """Re-fetch exactly a gap's window (connections.gaps.repair_gap): the admin's Repair button, a reconnect."""
    from connections.gaps import repair_gap
    from connections.models import DataGap

    try:
        gap = repair_gap(gap_id)
    except DataGap.DoesNotExist:
        return {"gap_id": gap_id, "status": "gone"}
    return {"gap_id": gap_id, "status": gap.status, "rows_repaired": gap.rows_repaired}
