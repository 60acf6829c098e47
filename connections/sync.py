"""The Junction daily sync: which users, one user's window, and the whole job.

Data flow of one user (docs/ARCHITECTURE.md has the picture):
1. Fetch: the user's connected providers (is there a CGM?), then for every UTC day of the lookback window
   the sleep/activity/workouts/body summaries and the grouped timeseries, following `next_cursor`.
   Requests run concurrently; the HTTP layer retries 429/5xx/timeouts with backoff and Retry-After.
2. Skip what did not change: a day whose bytes hash to the stored fingerprint is not parsed or written.
3. Parse and validate; an invalid record is logged (without values) and counted as skipped.
4. Store in ONE transaction: raw rows (idempotent on their natural key), daily statistics of the days that
   changed, the new fingerprints, and the cursor `last_sync_at`. A crash loses nothing and doubles nothing.
5. A failed user is retried up to SYNC_USER_ATTEMPTS times with exponential backoff, then skipped.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections as db_connections
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from connections.config import JunctionSyncConfig
from connections.models import (
    Connection,
    ConnectionStatus,
    Patient,
    Provider,
    SyncEvent,
    SyncFingerprint,
    SyncStatus,
    SyncTrigger,
)
from connections.providers.base import ProviderError, RetryPolicy
from connections.providers.junction import (
    GLUCOSE_RESOURCE,
    SUMMARY_KINDS,
    TIMESERIES,
    InvalidPayload,
    JunctionClient,
    ParsedPayload,
    fallback_time_zone,
    has_cgm,
    parse_glucose,
    parse_summaries,
    parse_timeseries,
    utc_days,
)
from loopsync.sentry import capture_sync_failure
from readings.writers import DATABASE_WRITER, ReadingsWriter, writer_for

logger = logging.getLogger("loopsync.sync")

JOB_NAME = "wearable-sync-daily"
# Requests in flight per user: enough to hide loopback/WAN latency, small enough to be polite.
FETCH_CONCURRENCY = 8
_SERIES_BY_RESOURCE = {spec.resource: spec for spec in TIMESERIES}


@dataclass
class UserSyncSummary:
    user_id: str
    status: str = "pending"  # success | failed | skipped | queued
    records_fetched: int = 0
    records_stored: int = 0
    records_skipped: int = 0
    attempts: int = 0
    errors: list[str] = field(default_factory=list)
    unchanged_days: int = 0
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class JobResult:
    job: str
    started_at: datetime
    finished_at: datetime | None = None
    users: list[UserSyncSummary] = field(default_factory=list)

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


@dataclass
class FetchedWindow:
    """What one user's window produced before storing."""

    payload: ParsedPayload = field(default_factory=ParsedPayload)
    # (resource, day) -> (digest, records) for the days that changed.
    fingerprints: dict[tuple[str, date], tuple[str, int]] = field(default_factory=dict)
    unchanged_days: int = 0
    unchanged_records: int = 0


# --- Which users ------------------------------------------------------------------------------------------


def ensure_junction_connections(config: JunctionSyncConfig, client: JunctionClient) -> list[Connection]:
    """The union of the configured users and every active Junction connection, each user once.

    A configured user unknown to the database gets a patient (time zone from Junction when it has one)
    and a Junction connection. A configured user whose connection ops deactivated stays deactivated.
    """
    known = {p.junction_user_id: p for p in Patient.objects.filter(junction_user_id__in=config.user_ids)}
    for user_id in config.user_ids:
        patient = known.get(user_id)
        if patient is None:
            patient = _create_patient(user_id, client)
        Connection.objects.get_or_create(patient=patient, provider=Provider.JUNCTION)
    listed = set(config.user_ids)
    connections = list(
        Connection.objects.select_related("patient")
        .filter(provider=Provider.JUNCTION, patient__junction_user_id__isnull=False)
        .filter(status=ConnectionStatus.ACTIVE)
        .order_by("patient__junction_user_id")
    )
    inactive = list(
        Connection.objects.select_related("patient")
        .filter(provider=Provider.JUNCTION, patient__junction_user_id__in=listed)
        .exclude(status=ConnectionStatus.ACTIVE)
    )
    return connections + inactive


def _create_patient(user_id: str, client: JunctionClient) -> Patient:
    time_zone = "UTC"
    try:
        time_zone = fallback_time_zone(client.get_user(user_id)) or "UTC"
    except ProviderError as exc:
        # The sync of this user will report the real problem (unknown user, bad key); creating the patient
        # first keeps the audit trail attached to it.
        logger.warning("junction user lookup failed", extra={"error": str(exc)})
    patient, _ = Patient.objects.get_or_create(junction_user_id=user_id, defaults={"time_zone": time_zone})
    return patient


# --- One user -----------------------------------------------------------------------------------------------


def _digest(pages: Iterable[bytes]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for page in pages:
        h.update(len(page).to_bytes(8, "big"))
        h.update(page)
    return h.hexdigest()


def fetch_junction_window(
    client: JunctionClient,
    user_id: str,
    days: list[date],
    known: dict[tuple[str, date], tuple[str, int]],
    tz: ZoneInfo,
    *,
    executor: ThreadPoolExecutor,
    force: bool = False,
) -> FetchedWindow:
    """Fetch every resource for every day; parse only the days whose bytes changed."""
    cgm = has_cgm(client.connected_providers(user_id))
    resources = [*SUMMARY_KINDS, *(_SERIES_BY_RESOURCE), *([GLUCOSE_RESOURCE] if cgm else [])]
    work = [(resource, day) for day in days for resource in resources]

    def fetch_one(item: tuple[str, date]) -> tuple[str, date, str, ParsedPayload | None]:
        resource, day = item
        if resource in SUMMARY_KINDS:
            pages = [client.summary_bytes(resource, user_id, day, day)]
        else:
            pages = client.timeseries_pages(user_id, resource, day, day)
        digest = _digest(pages)
        previous = known.get(item)
        if previous and previous[0] == digest and not force:
            return resource, day, digest, None
        parsed = ParsedPayload()
        for page in pages:
            body = client.http.decode(resource, page)
            if resource in SUMMARY_KINDS:
                parsed.extend(parse_summaries(resource, body, tz))
            elif resource == GLUCOSE_RESOURCE:
                parsed.extend(parse_glucose(body))
            else:
                parsed.extend(parse_timeseries(_SERIES_BY_RESOURCE[resource], body))
        return resource, day, digest, parsed

    window = FetchedWindow()
    for resource, day, digest, parsed in executor.map(fetch_one, work):
        if parsed is None:
            window.unchanged_days += 1
            window.unchanged_records += known[(resource, day)][1]
            continue
        window.payload.extend(parsed)
        window.fingerprints[(resource, day)] = (digest, parsed.records)
    return window


def store_junction_window(
    connection: Connection,
    window: FetchedWindow,
    window_end: datetime,
    writer: ReadingsWriter = DATABASE_WRITER,
) -> int:
    """Store a fetched window, its fingerprints and the cursor in one transaction; return rows written.

    A remote writer (the patient-graph API) cannot join the transaction: it writes first, and the fingerprints
    and cursor commit only after it succeeded (a crash in between replays idempotent rows).
    """
    remote_written = None if writer.in_transaction else _write_rows(writer, connection, window)
    with transaction.atomic():
        # The row lock serialises two workers syncing the same connection: the second one's writes become
        # no-ops against the first one's rows, and the cursor never moves backwards.
        locked = Connection.objects.select_for_update().select_related("patient").get(pk=connection.pk)
        written = remote_written if remote_written is not None else _write_rows(writer, locked, window)
        if window.fingerprints:
            SyncFingerprint.objects.bulk_create(
                [
                    SyncFingerprint(
                        connection=locked, resource=resource, day=day, digest=digest, records=records
                    )
                    for (resource, day), (digest, records) in window.fingerprints.items()
                ],
                update_conflicts=True,
                unique_fields=["connection", "resource", "day"],
                update_fields=["digest", "records", "updated_at"],
            )
        now = timezone.now()
        locked.last_sync_at = max(locked.last_sync_at or window_end, window_end)
        locked.last_attempt_at = now
        locked.failure_streak = 0
        locked.last_error = ""
        locked.save(
            update_fields=["last_sync_at", "last_attempt_at", "failure_streak", "last_error", "updated_at"]
        )
    return written


def _write_rows(writer: ReadingsWriter, connection: Connection, window: FetchedWindow) -> int:
    return writer.store(connection, window.payload.readings, window.payload.glucose)


def sync_junction_connection(
    connection: Connection,
    config: JunctionSyncConfig,
    client: JunctionClient,
    *,
    trigger: str = SyncTrigger.SCHEDULE,
    actor: str = "",
    executor: ThreadPoolExecutor | None = None,
    force: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> UserSyncSummary:
    """Sync one Junction user's lookback window, retrying the whole user on transient failure."""
    user_id = connection.patient.junction_user_id or ""
    summary = UserSyncSummary(user_id=user_id)
    if connection.status != ConnectionStatus.ACTIVE:
        summary.status = "skipped"
        summary.errors.append("connection is inactive")
        return summary
    started = time.monotonic()
    window_end = timezone.now()
    window_start = window_end - timedelta(days=config.lookback_days)
    days = utc_days(window_start, window_end)
    event = SyncEvent.objects.create(
        connection=connection,
        patient=connection.patient,
        provider=Provider.JUNCTION,
        trigger=trigger,
        actor=actor,
        started_at=window_end,
        window_start=window_start,
        window_end=window_end,
    )
    known = {
        (fp.resource, fp.day): (fp.digest, fp.records)
        for fp in SyncFingerprint.objects.filter(connection=connection, day__in=days)
    }
    tz = ZoneInfo(connection.patient.time_zone)
    own_executor = executor is None
    pool = executor or ThreadPoolExecutor(max_workers=FETCH_CONCURRENCY, thread_name_prefix="junction-fetch")

    def attempt() -> tuple[FetchedWindow, int]:
        window = fetch_junction_window(client, user_id, days, known, tz, executor=pool, force=force)
        return window, store_junction_window(connection, window, window_end, writer_for(config))

    try:
        outcome = run_with_retries(summary, attempt, sleep=sleep)
    finally:
        if own_executor:
            pool.shutdown(wait=True)
    if outcome is not None:
        window, stored = outcome
        summary.status = "success"
        summary.records_fetched = window.payload.records + window.unchanged_records
        summary.records_skipped = window.payload.skipped
        summary.records_stored = stored
        summary.unchanged_days = window.unchanged_days
    summary.duration_s = round(time.monotonic() - started, 3)
    _finish_event(event, connection, summary)
    return summary


T = TypeVar("T")


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
            summary.errors.append(f"attempt {number}: {exc}")
            retryable = isinstance(exc, InvalidPayload) or exc.retryable
            if not retryable or number == policy.attempts:
                summary.status = "failed"
                return None
            delay = policy.backoff(number, getattr(exc, "retry_after", None))
            logger.info("connection sync retry", extra={"attempt": number, "delay_s": round(delay, 2)})
            sleep(delay)
    return None


def _finish_event(event: SyncEvent, connection: Connection, summary: UserSyncSummary) -> None:
    now = timezone.now()
    event.finished_at = now
    event.status = SyncStatus.SUCCESS if summary.status == "success" else SyncStatus.FAILED
    event.attempts = summary.attempts
    event.records_fetched = summary.records_fetched
    event.records_stored = summary.records_stored
    event.records_skipped = summary.records_skipped
    event.error = "\n".join(summary.errors)[:2000]
    event.save(
        update_fields=[
            "finished_at",
            "status",
            "attempts",
            "records_fetched",
            "records_stored",
            "records_skipped",
            "error",
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


# --- The job ------------------------------------------------------------------------------------------------


def run_wearable_sync_job(
    config: JunctionSyncConfig,
    *,
    trigger: str = SyncTrigger.SCHEDULE,
    concurrency: int = 1,
    force: bool = False,
    progress: Callable[[int, int, UserSyncSummary], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> JobResult:
    """`wearable-sync-daily`: sync every configured and active Junction user; one summary per user.

    With `concurrency` > 1 users sync in parallel threads, each with its own database connection.
    """
    _check_runnable(config)
    result = JobResult(job=JOB_NAME, started_at=timezone.now())
    # One fetch pool for the whole job: its threads (and their HTTP connections) are reused user after user.
    fetch_pool = ThreadPoolExecutor(
        max_workers=FETCH_CONCURRENCY * max(1, concurrency), thread_name_prefix="fetch"
    )
    with JunctionClient.from_config(config) as client, fetch_pool:
        connections = ensure_junction_connections(config, client)
        total = len(connections)

        def one(connection: Connection) -> UserSyncSummary:
            try:
                return sync_junction_connection(
                    connection, config, client, trigger=trigger, executor=fetch_pool, force=force, sleep=sleep
                )
            except Exception as exc:  # noqa: BLE001 - one user's bug must not stop the others
                logger.exception("user sync crashed", extra={"connection_id": connection.pk})
                return UserSyncSummary(
                    user_id=connection.patient.junction_user_id or "",
                    status="failed",
                    errors=[f"internal error: {type(exc).__name__}"],
                )

        if concurrency <= 1:
            for done, connection in enumerate(connections, start=1):
                summary = one(connection)
                result.users.append(summary)
                if progress:
                    progress(done, total, summary)
        else:

            def threaded(connection: Connection) -> UserSyncSummary:
                try:
                    return one(connection)
                finally:
                    db_connections.close_all()  # this thread's own connection

            with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="junction-user") as users:
                for done, summary in enumerate(users.map(threaded, connections), start=1):
                    result.users.append(summary)
                    if progress:
                        progress(done, total, summary)
    result.finished_at = timezone.now()
    log_job_summary(result)
    return result


def _check_runnable(config: JunctionSyncConfig) -> None:
    if not config.api_key:
        raise ImproperlyConfigured("JUNCTION_API_KEY is empty: set it, or run with --sandbox")


def log_job_summary(result: JobResult) -> None:
    summary = result.as_dict()
    level = logging.INFO if result.ok else logging.WARNING
    logger.log(
        level,
        "%s finished: %d/%d users synced, %d records stored, %d errors",
        result.job,
        result.users_synced,
        len(result.users),
        result.records_stored,
        len(result.errors),
        extra={
            k: summary[k]
            for k in (
                "job",
                "users_total",
                "users_synced",
                "users_failed",
                "records_fetched",
                "records_stored",
                "records_skipped",
                "duration_s",
            )
        },
    )
