"""The one sync engine: any provider's connection, pulled and stored the same way, one SyncEvent per run.

    event = sync_connection(connection, trigger=SyncTrigger.ADMIN, actor="ops")

One connection's run:
1. A SyncEvent is opened (the audit row; `sync_connection` returns it).
2. Credentials: a provider with tokens gets a TokenSession (connections.tokens: refreshed before expiry under
   the credential's row lock, once on a 401; a dead grant marks the connection inactive).
3. Fetch: `provider.fetch(connection, since=cursor)` returns a Batch (rows, records skipped, the new cursor,
   provider state such as Junction's fingerprints).
4. Store, in ONE transaction: the connection row locked, the rows through the writer (idempotent upserts on
   natural keys), the provider state, and the cursor (never backwards, never past now plus the clock skew).
   A remote writer (PATIENT_GRAPH_API_URL) cannot join it: it writes first and the cursor moves after.
5. Transient failures (5xx, timeouts, 429 after the HTTP layer's own retries, an unusable page) retry the
   whole connection up to SYNC_USER_ATTEMPTS times with backoff; refused credentials are never retried.
6. The event is finished (and a failure counted on the connection and reported to Sentry).

Jobs: `run_sync_job` syncs every connection of a scheduled job inline (run_job, sync_wearables, tests);
connections.tasks fans the same job out as one django-q2 task per connection. Both record a JobRun.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.db import connections as db_connections
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from connections.budgets import close_thread_connection as close_gate_connection
from connections.models import (
    Connection,
    ConnectionStatus,
    SyncErrorCode,
    SyncEvent,
    SyncEventKind,
    SyncStatus,
    SyncTrigger,
)
from connections.providers.base import MAX_RETRY_AFTER_SECONDS, ProviderError, RetryPolicy
from connections.providers.contract import (
    Batch,
    InvalidPayload,
    PartialFetch,
    SyncProvider,
    latest_plausible,
)
from connections.providers.registry import open_provider, provider_jobs
from connections.sync_errors import sync_error_code
from connections.tokens import TokenSession
from loopsync.sentry import capture_sync_failure
from readings.horizon import drop_past_horizon
from readings.writers import ReadingsWriter

logger = logging.getLogger("loopsync.sync")
T = TypeVar("T")


class ConnectionInactive(ValueError):
    """The connection is not active (ops deactivated it, or its credentials were refused): nothing is synced."""


@dataclass
class UserSyncSummary:
    user_id: str
    status: str = "pending"  # success | failed | skipped
    records_fetched: int = 0
    records_stored: int = 0
    records_skipped: int = 0
    attempts: int = 0
    errors: list[str] = field(default_factory=list)
    # The last failure's stable code (SyncErrorCode), set only by fail().
    error_code: str = ""
    unchanged_days: int = 0
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fail(self, exc: BaseException, message: str) -> None:
        """Record a failure: its scrubbed message (ops) and its stable code (the API), classified here only."""
        self.errors.append(message)
        self.error_code = sync_error_code(exc)


@dataclass
class JobResult:
    job: str
    started_at: datetime
    finished_at: datetime | None = None
    users: list[UserSyncSummary] = field(default_factory=list)
    job_run_id: int | None = None

    @property
    def users_synced(self) -> int:
        return sum(1 for u in self.users if u.status == "success")

    @property
    def users_failed(self) -> int:
        return sum(1 for u in self.users if u.status == "failed")

    @property
    def records_stored(self) -> int:
        return sum(u.records_stored for u in self.users)

    @property
    def errors(self) -> list[str]:
        return [f"{u.user_id}: {e}" for u in self.users for e in u.errors]

    @property
    def ok(self) -> bool:
        return self.users_failed == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "job_run_id": self.job_run_id,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "duration_s": round((self.finished_at - self.started_at).total_seconds(), 3)
            if self.finished_at
            else None,
            "users_total": len(self.users),
            "users_synced": self.users_synced,
            "users_failed": self.users_failed,
            "users_skipped": sum(1 for u in self.users if u.status == "skipped"),
            "records_fetched": sum(u.records_fetched for u in self.users),
            "records_stored": self.records_stored,
            "records_skipped": sum(u.records_skipped for u in self.users),
            "errors": self.errors,
            "users": [u.as_dict() for u in self.users],
        }


# --- Store ---------------------------------------------------------------------------------------------------


def advance_cursor(stored: datetime | None, candidate: datetime, now: datetime) -> datetime:
    """The cursor after a run that reached `candidate`: never backwards, never past now plus the clock skew.

    A stored cursor already beyond that ceiling came from a reading with a broken clock (before readings
    were checked); it is pulled back, or every later run would ask for nothing and report success.
    """
    ceiling = latest_plausible(now)
    candidate = min(candidate, ceiling)
    if stored is None or stored > ceiling:
        return candidate
    return max(stored, candidate)


def newest_reading(batch: Batch, now: datetime) -> datetime | None:
    """The newest reading a batch holds (the admin's "newest reading"), never later than now.

    A batch's rows come from one provider's parser, which writes one canonical UTC form, so the string max
    is the time max. Day summaries are stamped at 00:00 UTC of their date, which can be later than now.
    """
    newest_raw = max(
        max((row[3] for row in batch.readings), default=""),
        max((row[1] for row in batch.glucose), default=""),
    )
    return min(datetime.fromisoformat(newest_raw), now) if newest_raw else None


def store_batch_and_cursor(
    connection: Connection, batch: Batch, writer: ReadingsWriter, *, complete: bool = True
) -> int:
    """Rows, provider state and cursor in one transaction; returns the rows written.

    `complete=False`: the completed part of a failed fetch, stored with its provider state; the run has not
    succeeded, so the connection's failure record is left for the run's end to update.

    A remote writer (the patient-graph API) cannot join the transaction: the rows go first, and the state
    and cursor commit only once the API has accepted them (a failure leaves them where they were, and the
    idempotent ingest makes the retry harmless).
    """
    # Past the frozen horizon a reading would recompute a day from partial raw rows: skipped, counted.
    batch.readings, batch.glucose, too_old = drop_past_horizon(batch.readings, batch.glucose)
    batch.skipped += too_old
    remote_written = None
    if not writer.in_transaction and (batch.readings or batch.glucose):
        remote_written = writer.store(connection, batch.readings, batch.glucose)
    with transaction.atomic():
        # The row lock serialises two workers storing the same connection: the second one's writes become
        # no-ops against the first one's rows, and the cursor never moves backwards.
        locked = Connection.objects.select_for_update().select_related("patient").get(pk=connection.pk)
        if writer.in_transaction:
            written = writer.store(locked, batch.readings, batch.glucose)
        else:
            written = remote_written or 0
        if batch.save_state is not None:
            batch.save_state(locked)
        now = timezone.now()
        if batch.cursor is not None:
            locked.last_sync_at = advance_cursor(locked.last_sync_at, batch.cursor, now)
        newest = newest_reading(batch, now)
        if newest is not None and (locked.latest_reading_at is None or newest > locked.latest_reading_at):
            locked.latest_reading_at = newest
        locked.last_attempt_at = now
        if complete:
            locked.failure_streak = 0
            locked.last_error = locked.last_error_code = ""
            locked.last_success_at = now
        locked.save(
            update_fields=[
                "last_sync_at",
                "last_success_at",
                "latest_reading_at",
                "last_attempt_at",
                "failure_streak",
                "last_error",
                "last_error_code",
                "updated_at",
            ]
        )
    connection.last_sync_at = locked.last_sync_at
    return written


# --- One connection ------------------------------------------------------------------------------------------


def run_with_retries(
    summary: UserSyncSummary, attempt: Callable[[], T], *, sleep: Callable[[float], None] = time.sleep
) -> T | None:
    """Run one connection's fetch-and-store up to SYNC_USER_ATTEMPTS times with exponential backoff.

    Only failures that can pass (retryable provider errors, an unusable page) are retried, after the HTTP
    layer's own retries gave up; each is recorded in the summary. Returns the successful attempt's result,
    or None with `summary.status = "failed"`.
    """
    policy = RetryPolicy(
        attempts=settings.SYNC_USER_ATTEMPTS, base=settings.SYNC_RETRY_BASE_SECONDS, cap=60.0
    )
    for number in range(1, policy.attempts + 1):
        summary.attempts = number
        try:
            return attempt()
        except (ProviderError, InvalidPayload) as exc:
            summary.fail(exc, f"attempt {number}: {exc}")
            retryable = isinstance(exc, InvalidPayload) or exc.retryable
            retry_after = getattr(exc, "retry_after", None)
            if retry_after is not None and retry_after > MAX_RETRY_AFTER_SECONDS:
                # The provider asked for a pause longer than a worker may wait: this connection is skipped for
                # this run with the provider's reason, and the next scheduled run tries again.
                summary.errors.append(
                    f"rate limited: the provider asks to retry after {round(retry_after)} s"
                )
                retryable = False
            if not retryable or number == policy.attempts:
                summary.status = "failed"
                return None
            delay = policy.backoff(number, retry_after)
            logger.info("connection sync retry", extra={"attempt": number, "delay_s": round(delay, 2)})
            sleep(delay)
    return None


def sync_connection(
    connection: Connection,
    *,
    trigger: str = SyncTrigger.SCHEDULE,
    actor: str = "",
    window: tuple[datetime, datetime] | None = None,
    force: bool = False,
    provider: SyncProvider | None = None,
    sleep: Callable[[float], None] = time.sleep,
    job_run_id: int | None = None,
) -> SyncEvent:
    """Sync one connection of any provider and return the finished SyncEvent it wrote.

    `window` fetches exactly that span (and leaves the cursor); `force` re-reads what the provider would skip
    as unchanged; `provider` is an open instance to reuse (a job run), else one is opened for this call.
    ConnectionInactive when the connection is not active.
    """
    if connection.status != ConnectionStatus.ACTIVE:
        raise ConnectionInactive(f"connection {connection.pk} is inactive")
    with ExitStack() as stack:
        if provider is None:
            provider = stack.enter_context(open_provider(connection.provider))
        return _sync_with(connection, provider, trigger, actor, window, force, sleep, job_run_id)[0]


def close_interrupted_events(now: datetime | None = None, *, connection_id: int | None = None) -> int:
    """Finish as failed ("interrupted") the sync events still running past the task retry horizon.

    Their worker died (kill -9, a lost machine, a deploy) between opening the event and finishing it; django-q2
    has redelivered or dropped the task by then, so nothing will ever finish them. Each one counts as a failed
    run on its connection, so the admin's health shows it. Returns how many were closed.
    """
    now = now or timezone.now()
    stale = SyncEvent.objects.filter(
        status=SyncStatus.RUNNING,
        kind=SyncEventKind.SYNC,
        started_at__lt=now - timedelta(seconds=settings.Q_CLUSTER["retry"]),
    )
    if connection_id is not None:
        stale = stale.filter(connection_id=connection_id)
    with transaction.atomic():
        closed = list(stale.select_for_update(skip_locked=True).values_list("pk", "connection_id"))
        if not closed:
            return 0
        reason = "interrupted: the worker stopped before the sync finished"
        code = SyncErrorCode.INTERRUPTED
        SyncEvent.objects.filter(pk__in=[pk for pk, _ in closed]).update(
            status=SyncStatus.FAILED, finished_at=now, error=reason, error_code=code
        )
        for connection in {c for _, c in closed if c is not None}:
            Connection.objects.filter(pk=connection).update(
                failure_streak=F("failure_streak") + 1,
                last_error=reason,
                last_error_code=code,
                last_attempt_at=now,
                updated_at=now,
            )
    logger.warning("interrupted sync events closed", extra={"sync_events": len(closed)})
    return len(closed)


def _sync_with(
    connection: Connection,
    provider: SyncProvider,
    trigger: str,
    actor: str,
    window: tuple[datetime, datetime] | None,
    force: bool,
    sleep: Callable[[float], None],
    job_run_id: int | None = None,
) -> tuple[SyncEvent, UserSyncSummary]:
    started = time.monotonic()
    close_interrupted_events(connection_id=connection.pk)
    event = SyncEvent.objects.create(
        connection=connection,
        patient_id=connection.patient_id,
        provider=connection.provider,
        trigger=trigger,
        actor=actor[:150],
        started_at=timezone.now(),
        job_run_id=job_run_id,
    )
    summary = UserSyncSummary(user_id=provider.user_label(connection))
    refresher = provider.refresher()
    batch: Batch | None = None
    partly_stored = 0

    def attempt() -> int:
        nonlocal batch, partly_stored
        session = (
            TokenSession(connection, refresher, margin=provider.token_margin(), trigger=trigger)
            if refresher is not None
            else None
        )
        try:
            batch = provider.fetch(
                connection, connection.last_sync_at, session=session, window=window, force=force
            )
        except PartialFetch as partial:
            # Keep what completed (a retry then recognises it as unchanged), then fail like any failure.
            batch = partial.batch
            partly_stored += store_batch_and_cursor(
                connection, partial.batch, provider.writer(), complete=False
            )
            raise partial.cause from None
        return partly_stored + store_batch_and_cursor(connection, batch, provider.writer())

    try:
        stored = run_with_retries(summary, attempt, sleep=sleep)
    except Exception as exc:
        # A bug must not leave the event running: it is finished as failed, then the error goes on up.
        summary.status = "failed"
        summary.fail(exc, f"internal error: {type(exc).__name__}")
        _finish_event(event, connection, summary, batch, started)
        raise
    if stored is not None and batch is not None:
        summary.status = "success"
        summary.records_fetched = batch.fetched
        summary.records_skipped = batch.skipped
        summary.records_stored = stored
        summary.unchanged_days = batch.unchanged_parts
    else:
        summary.records_stored = partly_stored
    _finish_event(event, connection, summary, batch, started)
    return event, summary


def _finish_event(
    event: SyncEvent, connection: Connection, summary: UserSyncSummary, batch: Batch | None, started: float
) -> None:
    now = timezone.now()
    summary.duration_s = round(time.monotonic() - started, 3)
    event.finished_at = now
    event.status = SyncStatus.SUCCESS if summary.status == "success" else SyncStatus.FAILED
    event.attempts = summary.attempts
    event.records_fetched = summary.records_fetched
    event.records_stored = summary.records_stored
    event.records_skipped = summary.records_skipped
    event.error = "\n".join(summary.errors)[:2000]
    event.error_code = summary.error_code if summary.status == "failed" else ""
    if batch is not None:
        event.window_start, event.window_end = batch.window_start, batch.window_end
    event.save(
        update_fields=[
            "finished_at",
            "status",
            "attempts",
            "records_fetched",
            "records_stored",
            "records_skipped",
            "error",
            "error_code",
            "window_start",
            "window_end",
        ]
    )
    if summary.status == "failed":
        capture_sync_failure(
            provider=connection.provider,
            trigger=event.trigger,
            connection_id=connection.pk,
            error=summary.errors[-1] if summary.errors else "",
        )
        Connection.objects.filter(pk=connection.pk).update(
            last_attempt_at=now,
            failure_streak=F("failure_streak") + 1,
            last_error=(summary.errors[-1] if summary.errors else "")[:2000],
            last_error_code=summary.error_code,
            updated_at=now,
        )
    logger.info(
        "user sync finished",
        extra={
            "connection_id": connection.pk,
            "status": summary.status,
            "attempts": summary.attempts,
            "records_fetched": summary.records_fetched,
            "records_stored": summary.records_stored,
            "records_skipped": summary.records_skipped,
            "duration_s": summary.duration_s,
        },
    )


def sync_summary(
    connection: Connection,
    provider: SyncProvider,
    *,
    trigger: str = SyncTrigger.SCHEDULE,
    actor: str = "",
    force: bool = False,
    sleep: Callable[[float], None] = time.sleep,
    job_run_id: int | None = None,
) -> UserSyncSummary:
    """One connection of a job run: its summary, "skipped" when inactive, "failed" when the sync crashed."""
    if connection.status != ConnectionStatus.ACTIVE:
        return UserSyncSummary(
            user_id=provider.user_label(connection), status="skipped", errors=["connection is inactive"]
        )
    try:
        return _sync_with(connection, provider, trigger, actor, None, force, sleep, job_run_id)[1]
    except Exception as exc:  # noqa: BLE001 - one user's bug must not stop the others
        logger.exception("user sync crashed", extra={"connection_id": connection.pk})
        crashed = UserSyncSummary(user_id=provider.user_label(connection), status="failed")
        crashed.fail(exc, f"internal error: {type(exc).__name__}")
        return crashed


# --- Jobs ----------------------------------------------------------------------------------------------------


def run_sync_job(
    job: str,
    *,
    configs: Mapping[str, Any] | None = None,
    trigger: str = SyncTrigger.SCHEDULE,
    connection_ids: list[int] | None = None,
    concurrency: int = 1,
    force: bool = False,
    progress: Callable[[int, int, UserSyncSummary], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> JobResult:
    """Run a provider job inline over all its connections, recorded as a JobRun like a scheduled run.

    `configs` replaces providers' settings by provider key (tests, --sandbox). With `concurrency` > 1
    connections sync in parallel threads, each with its own database connection.
    """
    from connections.jobruns import track_job

    definition = provider_jobs()[job]
    configs = configs or {}
    close_interrupted_events()
    result = JobResult(job=job, started_at=timezone.now())
    with track_job(job, scheduled=False) as run, ExitStack() as stack:
        result.job_run_id = run.id
        work: list[tuple[Connection, SyncProvider]] = []
        for provider_type in definition.providers:
            provider = stack.enter_context(
                open_provider(provider_type.key, configs.get(provider_type.key), concurrency=concurrency)
            )
            provider.check_configured()
            work += [(c, provider) for c in provider.job_connections(connection_ids)]
        total = len(work)

        def one(item: tuple[Connection, SyncProvider]) -> UserSyncSummary:
            return sync_summary(
                item[0], item[1], trigger=trigger, force=force, sleep=sleep, job_run_id=run.id
            )

        if concurrency <= 1:
            summaries = map(one, work)
        else:

            def threaded(item: tuple[Connection, SyncProvider]) -> UserSyncSummary:
                try:
                    return one(item)
                finally:
                    db_connections.close_all()  # this thread's own connection
                    close_gate_connection()  # and its provider gate's (connections.budgets)

            pool = stack.enter_context(ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="sync"))
            summaries = pool.map(threaded, work)
        for done, summary in enumerate(summaries, start=1):
            result.users.append(summary)
            if progress:
                progress(done, total, summary)
        result.finished_at = timezone.now()
        run.record_summary(result.as_dict())
    # The summary line is track_job's, the same for every job (connections.jobruns.JobSummary).
    return result
