"""The direct-provider syncs: `sync-whoop-data` (daily) and `sync-cgm-readings` (every 30 minutes).

One connection's run:
1. Token: a valid access token, refreshed first when it expires within the margin (connections.tokens: row lock,
   re-check, save before commit). A 401 on a data call refreshes once and repeats the call.
2. Window:
   - WHOOP: from the cursor minus an overlap, or from the oldest record that was not final last time
     (PENDING_SCORE, the open cycle), so such records are fetched again until scored; first sync: the last
     WHOOP_SYNC_INITIAL_DAYS. Cycles, recoveries, sleeps and workouts, `limit` 25, following `next_token`.
   - Dexcom: from the newest stored reading minus CGM_SYNC_OVERLAP_MINUTES (Dexcom delays data by 1-3 h, so the
     cursor is the newest reading received, not the wall clock); first sync from `dataRange`; windows <= 30 days.
   - Libre: the graph (about the last 12 h), readings since the cursor minus the overlap.
3. Parse and validate; an invalid record is logged without values and skipped.
4. Store in ONE transaction: the connection row locked, rows through readings.store (idempotent upserts keyed by
   the reading; a re-scored WHOOP record updates its rows in place), the cursor `last_sync_at` (never backwards)
   and WHOOP's `pending_since`.
5. Transient failures (5xx, timeouts, 429 after the HTTP layer's own retries) retry the connection up to
   SYNC_USER_ATTEMPTS times, then the connection is skipped until the next run. Revoked credentials mark the
   connection inactive and are never retried. One SyncEvent per connection run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.db import connections as db_connections
from django.db import transaction
from django.utils import timezone

from connections.config import DirectProvidersConfig
from connections.models import (
    Connection,
    ConnectionStatus,
    Provider,
    ProviderCredential,
    SyncEvent,
    SyncTrigger,
)
from connections.providers.base import ProviderAuthError
from connections.providers.contract import GlucoseRow, WearableRow, latest_plausible
from connections.providers.dexcom import DexcomClient, ParsedGlucose, newest_egv, parse_egvs, windows
from connections.providers.libre import LibreClient, LibreSession, parse_graph
from connections.providers.oauth2 import TokenSet
from connections.providers.whoop import COLLECTIONS, WhoopClient, WhoopParsed, parse_records
from connections.sync import JobResult, UserSyncSummary, _finish_event, log_job_summary, run_with_retries
from connections.tokens import Refresher, access_token
from readings.writers import DATABASE_WRITER, ReadingsWriter, writer_for

logger = logging.getLogger("loopsync.sync_direct")

WHOOP_JOB = "sync-whoop-data"
CGM_JOB = "sync-cgm-readings"
JOB_PROVIDERS: dict[str, tuple[str, ...]] = {
    WHOOP_JOB: (Provider.WHOOP,),
    CGM_JOB: (Provider.DEXCOM, Provider.LIBRE),
}
T = TypeVar("T")


class DirectClients:
    """One client per provider for a whole job run (httpx pools are thread-safe and reused)."""

    def __init__(self, config: DirectProvidersConfig) -> None:
        self.config = config
        self._whoop: WhoopClient | None = None
        self._dexcom: DexcomClient | None = None
        self._libre: LibreClient | None = None
        self._lock = threading.Lock()  # worker threads share one client per provider

    @property
    def whoop(self) -> WhoopClient:
        with self._lock:
            if self._whoop is None:
                self._whoop = WhoopClient.from_config(self.config)
            return self._whoop

    @property
    def dexcom(self) -> DexcomClient:
        with self._lock:
            if self._dexcom is None:
                self._dexcom = DexcomClient.from_config(self.config)
            return self._dexcom

    @property
    def libre(self) -> LibreClient:
        with self._lock:
            if self._libre is None:
                self._libre = LibreClient(self.config)
            return self._libre

    def close(self) -> None:
        for client in (self._whoop, self._dexcom, self._libre):
            if client is not None:
                client.close()

    def __enter__(self) -> DirectClients:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Fetched:
    window_start: datetime
    window_end: datetime
    readings: list[WearableRow] = field(default_factory=list)
    glucose: list[GlucoseRow] = field(default_factory=list)
    skipped: int = 0
    cursor: datetime | None = None
    # WHOOP only: the new pending_since (None = nothing unsettled), written with the data.
    pending_since: datetime | None = None
    update_pending: bool = False


class TokenSession:
    """The connection's current access token; a 401 refreshes it once and repeats the call."""

    def __init__(
        self,
        connection: Connection,
        refresher: Refresher,
        config: DirectProvidersConfig,
        trigger: str,
        credential: ProviderCredential | None = None,
    ):
        self.connection = connection
        self.refresher = refresher
        self.margin = timedelta(seconds=config.token_refresh_margin_seconds)
        self.trigger = trigger
        self.token = access_token(
            connection, refresher, margin=self.margin, trigger=trigger, credential=credential
        )

    def call(self, fn: Callable[[str], T]) -> T:
        try:
            return fn(self.token)
        except ProviderAuthError as exc:
            if exc.status != 401:
                raise
            self.token = access_token(
                self.connection,
                self.refresher,
                margin=self.margin,
                stale_token=self.token,
                trigger=self.trigger,
            )
            return fn(self.token)


def _oauth_refresher(client: WhoopClient | DexcomClient) -> Refresher:
    def refresh(credential: ProviderCredential) -> TokenSet:
        if not credential.refresh_token:
            from connections.providers.oauth2 import OAuthGrantError

            raise OAuthGrantError(client.provider, "invalid_grant", status=None)
        return client.refresh(credential.refresh_token)

    return refresh


def libre_refresher(client: LibreClient) -> Refresher:
    def login(credential: ProviderCredential) -> TokenSet:
        session = client.login(credential.libre_email, credential.libre_password, credential.region)
        return TokenSet(access_token=session.token, refresh_token="", expires_at=session.expires_at)

    return login


# --- Fetch, per provider ------------------------------------------------------------------------------------


def fetch_whoop(connection: Connection, clients: DirectClients, trigger: str) -> Fetched:
    config = clients.config
    client = clients.whoop
    now = timezone.now()
    credential = ProviderCredential.objects.get(connection_id=connection.pk)
    if connection.last_sync_at is None:
        start = now - timedelta(days=config.whoop_initial_days)
    else:
        start = cursor_start(connection.last_sync_at, timedelta(hours=config.whoop_overlap_hours), now)
        if credential.pending_since is not None:
            start = min(start, credential.pending_since)
    start = max(start, now - timedelta(days=config.whoop_max_lookback_days))
    session = TokenSession(connection, _oauth_refresher(client), config, trigger, credential)
    parsed = WhoopParsed()
    for name in COLLECTIONS:
        records = session.call(lambda token, name=name: client.collection(name, lambda: token, start, now))
        parse_records(name, records, parsed)
    return Fetched(
        window_start=start,
        window_end=now,
        readings=parsed.readings,
        skipped=parsed.skipped,
        cursor=now,
        pending_since=parsed.unsettled_since,
        update_pending=True,
    )


def fetch_dexcom(connection: Connection, clients: DirectClients, trigger: str) -> Fetched:
    config = clients.config
    client = clients.dexcom
    now = timezone.now()
    session = TokenSession(connection, _oauth_refresher(client), config, trigger)
    if connection.last_sync_at is None:
        newest = newest_egv(session.call(client.data_range))
        start = (newest or now) - timedelta(days=config.cgm_initial_days)
    else:
        start = cursor_start(connection.last_sync_at, timedelta(minutes=config.cgm_overlap_minutes), now)
    start = max(start, now - timedelta(days=config.cgm_max_lookback_days))
    parsed = ParsedGlucose()
    for lower, upper in windows(start, now):
        body = session.call(lambda token, lower=lower, upper=upper: client.egvs(token, lower, upper))
        parse_egvs(body, parsed)
    return Fetched(
        window_start=start,
        window_end=now,
        glucose=parsed.glucose,
        skipped=parsed.skipped,
        cursor=parsed.newest,
    )


def fetch_libre(connection: Connection, clients: DirectClients, trigger: str) -> Fetched:
    config = clients.config
    client = clients.libre
    now = timezone.now()
    credential = ProviderCredential.objects.get(connection_id=connection.pk)
    session = TokenSession(connection, libre_refresher(client), config, trigger, credential)
    since = (
        cursor_start(connection.last_sync_at, timedelta(minutes=config.cgm_overlap_minutes), now)
        if connection.last_sync_at
        else None
    )

    def graph(token: str) -> dict[str, Any]:
        libre = LibreSession(token, now, credential.external_user_id, credential.region or "us")
        return client.graph(libre, credential.libre_patient_id)

    parsed = parse_graph(session.call(graph), since=since)
    return Fetched(
        window_start=since or now - timedelta(hours=12),
        window_end=now,
        glucose=parsed.glucose,
        skipped=parsed.skipped,
        cursor=parsed.newest,
    )


FETCHERS: dict[str, Callable[[Connection, DirectClients, str], Fetched]] = {
    Provider.WHOOP: fetch_whoop,
    Provider.DEXCOM: fetch_dexcom,
    Provider.LIBRE: fetch_libre,
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


def cursor_start(stored: datetime, overlap: timedelta, now: datetime) -> datetime:
    """Where an incremental fetch starts: the cursor minus the overlap, and never after now."""
    return min(stored, now) - overlap


def store_fetched(connection: Connection, fetched: Fetched, writer: ReadingsWriter = DATABASE_WRITER) -> int:
    """Rows, the cursor and WHOOP's pending_since in one transaction; returns rows written.

    A remote writer (the patient-graph API, PATIENT_GRAPH_API_URL) cannot join the transaction: the rows go
    first, and the cursor moves only once the API has accepted them (a failure leaves it where it was, and
    the idempotent ingest makes the retry harmless).
    """
    remote_written = None
    if not writer.in_transaction and (fetched.readings or fetched.glucose):
        remote_written = writer.store(connection, fetched.readings, fetched.glucose)
    with transaction.atomic():
        # The row lock serialises two workers storing the same connection; the cursor never moves backwards.
        locked = Connection.objects.select_for_update().select_related("patient").get(pk=connection.pk)
        if writer.in_transaction:
            written = writer.store(locked, fetched.readings, fetched.glucose)
        else:
            written = remote_written or 0
        now = timezone.now()
        if fetched.cursor is not None:
            locked.last_sync_at = advance_cursor(locked.last_sync_at, fetched.cursor, now)
        locked.last_attempt_at = now
        locked.failure_streak = 0
        locked.last_error = ""
        locked.save(
            update_fields=["last_sync_at", "last_attempt_at", "failure_streak", "last_error", "updated_at"]
        )
        if fetched.update_pending:
            ProviderCredential.objects.filter(connection_id=locked.pk).update(
                pending_since=fetched.pending_since, updated_at=now
            )
    connection.last_sync_at = locked.last_sync_at
    return written


# --- One connection --------------------------------------------------------------------------------------


def sync_direct_connection(
    connection: Connection,
    clients: DirectClients,
    *,
    trigger: str = SyncTrigger.SCHEDULE,
    actor: str = "",
    sleep: Callable[[float], None] = time.sleep,
) -> UserSyncSummary:
    """Sync one WHOOP, Dexcom or Libre connection; retries transient failures, never revoked credentials."""
    summary = UserSyncSummary(user_id=str(connection.pk))
    fetcher = FETCHERS.get(connection.provider)
    if fetcher is None:
        raise ValueError(f"{connection.provider!r} is not a direct provider")
    if connection.status != ConnectionStatus.ACTIVE:
        summary.status = "skipped"
        summary.errors.append("connection is inactive")
        return summary
    started = time.monotonic()
    now = timezone.now()
    event = SyncEvent.objects.create(
        connection=connection,
        patient_id=connection.patient_id,
        provider=connection.provider,
        trigger=trigger,
        actor=actor,
        started_at=now,
    )
    fetched: Fetched | None = None

    def attempt() -> int:
        nonlocal fetched
        fetched = fetcher(connection, clients, trigger)
        return store_fetched(connection, fetched, writer_for(settings.JUNCTION_SYNC))

    # A revoked connection (ConnectionRevoked) is not retryable: it fails on the first attempt.
    stored = run_with_retries(summary, attempt, sleep=sleep)
    if stored is not None and fetched is not None:
        summary.status = "success"
        # As for Junction: the readings the payload yields plus the records skipped, so stored <= fetched.
        summary.records_fetched = len(fetched.readings) + len(fetched.glucose) + fetched.skipped
        summary.records_skipped = fetched.skipped
        summary.records_stored = stored
    summary.duration_s = round(time.monotonic() - started, 3)
    if fetched is not None:
        event.window_start, event.window_end = fetched.window_start, fetched.window_end
        event.save(update_fields=["window_start", "window_end"])
    _finish_event(event, connection, summary)
    return summary


# --- The jobs ------------------------------------------------------------------------------------------------


def active_connections(job: str, connection_ids: list[int] | None = None) -> list[Connection]:
    """The job's active connections (an inactive one is skipped without a request or an event)."""
    query = Connection.objects.select_related("patient").filter(
        provider__in=JOB_PROVIDERS[job], status=ConnectionStatus.ACTIVE, credential__isnull=False
    )
    if connection_ids is not None:
        query = query.filter(pk__in=connection_ids)
    return list(query.order_by("pk"))


def run_direct_job(
    job: str,
    config: DirectProvidersConfig,
    *,
    trigger: str = SyncTrigger.SCHEDULE,
    connection_ids: list[int] | None = None,
    concurrency: int = 1,
    sleep: Callable[[float], None] = time.sleep,
) -> JobResult:
    """Run `sync-whoop-data` or `sync-cgm-readings` inline over every active connection of its providers."""
    result = JobResult(job=job, started_at=timezone.now())
    connections = active_connections(job, connection_ids)

    with DirectClients(config) as clients:

        def one(connection: Connection) -> UserSyncSummary:
            try:
                return sync_direct_connection(connection, clients, trigger=trigger, sleep=sleep)
            except Exception as exc:  # noqa: BLE001 - one connection's bug must not stop the others
                logger.exception("connection sync crashed", extra={"connection_id": connection.pk})
                return UserSyncSummary(
                    user_id=str(connection.pk),
                    status="failed",
                    errors=[f"internal error: {type(exc).__name__}"],
                )

        if concurrency <= 1:
            result.users.extend(one(c) for c in connections)
        else:

            def threaded(connection: Connection) -> UserSyncSummary:
                try:
                    return one(connection)
                finally:
                    db_connections.close_all()  # this thread's own connection

            with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=job) as pool:
                result.users.extend(pool.map(threaded, connections))
    result.finished_at = timezone.now()
    log_job_summary(result)
    return result
