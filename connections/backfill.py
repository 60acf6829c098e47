"""Backfill on connect: a new connection's history, as deep as the provider allows and BACKFILL_DAYS caps,
fetched in chunks, newest first (the app has recent data at once), within the provider's shared budget.

    connect (oauth.complete_oauth, oauth.connect_libre, a new Junction user) ──> plan_backfill: a Backfill row
        (pending) ──on commit──> django-q2 tasks.run_backfill_task ──> run_backfill:
    session advisory lock (one worker per backfill; released by PostgreSQL if the worker dies)
    while next_end > range_start: window [max(range_start, next_end − chunk), next_end)
        provider.fetch(window=…) (the engine's per-connection retries; the HTTP layer's gate: budget, breaker)
        ONE transaction: the rows (engine.store_batch_and_cursor, the cursor untouched) + next_end, chunks_done
    done ──> SyncEvent kind "backfill.completed" (rows stored, the range)

A worker killed mid-chunk loses only that chunk's uncommitted work: the queue delivers the task again, the
row says where to resume, and the repeated chunk's upserts are no-ops. A provider failure after the retries
marks the backfill failed with the reason (scrubbed); `resume_backfill` (admin, command) starts it again where
it stopped.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection as db
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from connections.engine import UserSyncSummary, run_with_retries, store_batch_and_cursor
from connections.models import (
    Backfill,
    BackfillStatus,
    Connection,
    ConnectionStatus,
    SyncEvent,
    SyncEventKind,
    SyncStatus,
    SyncTrigger,
)
from connections.providers.contract import Batch, PartialFetch, SyncProvider
from connections.providers.registry import PROVIDERS, open_provider
from connections.tokens import TokenSession

logger = logging.getLogger("loopsync.backfill")

# pg_try_advisory_lock's first key: this module's namespace (the second is the backfill's id).
_LOCK_NAMESPACE = 160_016


def backfill_depth(provider: str) -> timedelta:
    """How far back a new connection's backfill reaches: the setting, capped by what the provider holds."""
    provider_type = PROVIDERS[provider]
    depth = timedelta(days=float(settings.BACKFILL_DAYS.get(provider, 0)))
    if provider_type.history_limit is not None:
        depth = min(depth, provider_type.history_limit)
    return depth


def plan_backfill(
    connection: Connection, *, start: datetime | None = None, end: datetime | None = None
) -> Backfill | None:
    """The connection's backfill (re)planned as pending over [start, end) (default: the provider's depth up to
    now); None when the provider's depth is zero."""
    provider_type = PROVIDERS[connection.provider]
    end = end or timezone.now()
    if start is None:
        depth = backfill_depth(connection.provider)
        if depth <= timedelta(0):
            return None
        start = end - depth
    chunk = provider_type.backfill_chunk
    backfill, _ = Backfill.objects.update_or_create(
        connection=connection,
        defaults={
            "status": BackfillStatus.PENDING,
            "range_start": start,
            "range_end": end,
            "next_end": end,
            "chunk_seconds": int(chunk.total_seconds()),
            "chunks_total": max(1, math.ceil((end - start) / chunk)),
            "chunks_done": 0,
            "rows_stored": 0,
            "reason": "",
            "attempts": 0,
            "started_at": None,
            "finished_at": None,
        },
    )
    return backfill


def enqueue_backfill(backfill_id: int) -> None:
    """Run the backfill in a django-q2 worker once the current transaction commits."""
    from django_q.tasks import async_task

    transaction.on_commit(lambda: async_task("connections.tasks.run_backfill_task", backfill_id))


def start_backfill_on_commit(connection: Connection) -> Backfill | None:
    """On connect: plan the connection's backfill and queue it on commit (BACKFILL_ON_CONNECT)."""
    if not settings.BACKFILL_ON_CONNECT:
        return None
    backfill = plan_backfill(connection)
    if backfill is not None:
        enqueue_backfill(backfill.pk)
    return backfill


def resume_backfill(backfill: Backfill) -> None:
    """A failed (or stalled) backfill queued again; it resumes at its last stored chunk."""
    Backfill.objects.filter(pk=backfill.pk).exclude(status=BackfillStatus.DONE).update(
        status=BackfillStatus.PENDING, reason=""
    )
    enqueue_backfill(backfill.pk)


def mark_junction_backfill_complete(
    connection: Connection, resource: str, window: tuple[datetime, datetime]
) -> Backfill | None:
    """The hook for Junction's `historical.data.<resource>.created` event (the webhook processor calls it): the
    provider finished its historical pull of `resource` over `window`. The part of the window the connection's
    backfill has not fetched is fetched now (older than its range: the range is extended and the backfill
    resumes; a finished backfill is planned again over the missing part only)."""
    start, end = window
    with transaction.atomic():
        backfill = Backfill.objects.select_for_update().filter(connection=connection).first()
        if backfill is None:
            backfill = plan_backfill(connection, start=start, end=min(end, timezone.now()))
        elif start < backfill.range_start:
            if backfill.status == BackfillStatus.DONE:
                backfill = plan_backfill(connection, start=start, end=backfill.range_start)
            else:
                backfill.range_start = start
                backfill.chunks_total = backfill.chunks_done + max(
                    1, math.ceil((backfill.next_end - start) / timedelta(seconds=backfill.chunk_seconds))
                )
                backfill.status = BackfillStatus.PENDING
                backfill.save(update_fields=["range_start", "chunks_total", "status"])
        else:
            logger.info("junction historical data already covered", extra={"resource": resource[:40]})
            return backfill
        if backfill is not None:
            enqueue_backfill(backfill.pk)
    return backfill


class _Claimed:
    """A session-level advisory lock on the backfill: one worker at a time, released if the worker dies."""

    def __init__(self, backfill_id: int) -> None:
        self.backfill_id = backfill_id
        self.held = False

    def __enter__(self) -> bool:
        with db.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [_LOCK_NAMESPACE, self.backfill_id])
            self.held = bool(cursor.fetchone()[0])
        return self.held

    def __exit__(self, *exc: object) -> None:
        if self.held:
            with db.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [_LOCK_NAMESPACE, self.backfill_id])


def run_backfill(
    backfill_id: int,
    *,
    provider: SyncProvider | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Backfill:
    """Fetch the backfill's remaining chunks, newest first; returns the row as it ended (done, failed, or as
    another worker holds it)."""
    with _Claimed(backfill_id) as claimed:
        backfill = Backfill.objects.select_related("connection__patient").get(pk=backfill_id)
        if not claimed or backfill.status == BackfillStatus.DONE:
            return backfill
        connection = backfill.connection
        if connection.status != ConnectionStatus.ACTIVE:
            return _fail(backfill, "the connection is inactive")
        Backfill.objects.filter(pk=backfill_id).update(
            status=BackfillStatus.RUNNING,
            started_at=backfill.started_at or timezone.now(),
            attempts=F("attempts") + 1,
            reason="",
        )
        if provider is not None:
            return _run(backfill, connection, provider, sleep)
        with open_provider(connection.provider) as opened:
            return _run(backfill, connection, opened, sleep)


def _run(
    backfill: Backfill, connection: Connection, provider: SyncProvider, sleep: Callable[[float], None]
) -> Backfill:
    chunk = timedelta(seconds=backfill.chunk_seconds)
    refresher = provider.refresher()
    writer = provider.writer()
    next_end = backfill.next_end
    while next_end > backfill.range_start:
        lower = max(backfill.range_start, next_end - chunk)
        window = (lower, next_end)
        summary = UserSyncSummary(user_id=provider.user_label(connection))

        def fetch(window: tuple[datetime, datetime] = window) -> Batch:
            session = (
                TokenSession(
                    connection, refresher, margin=provider.token_margin(), trigger=SyncTrigger.BACKFILL
                )
                if refresher is not None
                else None
            )
            try:
                return provider.fetch(connection, None, session=session, window=window)
            except PartialFetch as partial:
                # A chunk is stored whole or not at all: the part that came is fetched again with the rest.
                raise partial.cause from None

        batch = run_with_retries(summary, fetch, sleep=sleep)
        if batch is None:
            return _fail(backfill, summary.errors[-1] if summary.errors else "the provider failed")
        with transaction.atomic():
            written = store_batch_and_cursor(connection, batch, writer, complete=False)
            moved = Backfill.objects.filter(pk=backfill.pk, next_end=next_end).update(
                next_end=lower, chunks_done=F("chunks_done") + 1, rows_stored=F("rows_stored") + written
            )
            if not moved:
                # Re-planned meanwhile (a Junction event extended it): start again from the row.
                transaction.set_rollback(True)
        backfill.refresh_from_db()
        next_end = backfill.next_end
    return _finish(backfill, connection)


def _fail(backfill: Backfill, reason: str) -> Backfill:
    Backfill.objects.filter(pk=backfill.pk).update(
        status=BackfillStatus.FAILED, reason=reason[:2000], finished_at=timezone.now()
    )
    logger.warning(
        "backfill failed", extra={"backfill_id": backfill.pk, "connection_id": backfill.connection_id}
    )
    backfill.refresh_from_db()
    return backfill


def _finish(backfill: Backfill, connection: Connection) -> Backfill:
    now = timezone.now()
    with transaction.atomic():
        done = Backfill.objects.filter(pk=backfill.pk).exclude(status=BackfillStatus.DONE)
        if done.update(status=BackfillStatus.DONE, finished_at=now, reason=""):
            backfill.refresh_from_db()
            SyncEvent.objects.create(
                connection=connection,
                patient_id=connection.patient_id,
                provider=connection.provider,
                trigger=SyncTrigger.BACKFILL,
                kind=SyncEventKind.BACKFILL_COMPLETED,
                status=SyncStatus.SUCCESS,
                started_at=backfill.started_at or now,
                finished_at=now,
                window_start=backfill.range_start,
                window_end=backfill.range_end,
                records_stored=min(backfill.rows_stored, 2**31 - 1),
                note=f"{backfill.chunks_done} chunks",
            )
    logger.info(
        "backfill completed",
        extra={
            "backfill_id": backfill.pk,
            "connection_id": connection.pk,
            "rows_stored": backfill.rows_stored,
        },
    )
    backfill.refresh_from_db()
    return backfill
