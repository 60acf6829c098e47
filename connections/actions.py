"""Actions on connections that views, admin buttons, commands and tasks all call.

Each function owns its transaction and its audit row (a SyncEvent); callers stay thin.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.utils import timezone
from django_q.tasks import async_task

from connections.engine import ConnectionInactive, sync_connection
from connections.models import (
    ACTIVE_SYNC_REQUEST_STATUSES,
    Connection,
    ConnectionStatus,
    DataGap,
    GapStatus,
    Patient,
    Provider,
    SyncEvent,
    SyncEventKind,
    SyncRequest,
    SyncRequestStatus,
    SyncStatus,
    SyncTrigger,
)
from connections.providers.base import ProviderError, ProviderRateLimited, RetryPolicy
from connections.providers.contract import ConnectMethod
from connections.providers.junction.client import JunctionClient
from connections.providers.registry import PROVIDERS, open_provider

logger = logging.getLogger("loopsync.actions")


def _audit(connection: Connection, *, kind: str, actor: str, trigger: str, note: str = "") -> SyncEvent:
    now = timezone.now()
    return SyncEvent.objects.create(
        connection=connection,
        patient_id=connection.patient_id,
        provider=connection.provider,
        trigger=trigger,
        status=SyncStatus.SUCCESS,
        kind=kind,
        started_at=now,
        finished_at=now,
        actor=actor[:150],
        note=note[:500],
    )


def do_request_resync(
    connection: Connection, *, actor: str, trigger: str = SyncTrigger.ADMIN
) -> SyncEvent | None:
    """Queue a forced sync of one connection (fingerprints ignored) and record who asked.

    Returns the audit event, or None when the connection is inactive (reactivate it first). The task is
    queued on commit: a rolled-back request never syncs, and the worker always finds the audit row.
    Two requests in a row queue two syncs; the second stores nothing new (the sync is idempotent).
    """
    with transaction.atomic():
        if not Connection.objects.filter(pk=connection.pk, status=ConnectionStatus.ACTIVE).exists():
            return None
        event = _audit(connection, kind=SyncEventKind.RESYNC_REQUESTED, actor=actor, trigger=trigger)
        connection_id = connection.pk
        transaction.on_commit(
            lambda: async_task(
                "connections.tasks.sync_connection_now_task",
                connection_id,
                trigger,
                actor,
                True,
                group="connection-resync",
                task_name=f"connection-resync:{connection_id}",
            )
        )
    return event


def do_deactivate_connection(
    connection: Connection, *, reason: str, actor: str = "", trigger: str = SyncTrigger.ADMIN
) -> bool:
    """Mark a connection inactive; schedules stop syncing it. Returns False if it already was."""
    with transaction.atomic():
        updated = Connection.objects.filter(pk=connection.pk, status=ConnectionStatus.ACTIVE).update(
            status=ConnectionStatus.INACTIVE, status_reason=reason[:500], updated_at=timezone.now()
        )
        if updated == 1:
            _audit(connection, kind=SyncEventKind.DEACTIVATED, actor=actor, trigger=trigger, note=reason)
    return updated == 1


def do_reactivate_connection(connection: Connection, *, actor: str, trigger: str = SyncTrigger.ADMIN) -> bool:
    """Mark an inactive connection active again with a clean failure streak. False if it already was active."""
    with transaction.atomic():
        updated = (
            Connection.objects.filter(pk=connection.pk)
            .exclude(status=ConnectionStatus.ACTIVE)
            .update(
                status=ConnectionStatus.ACTIVE,
                status_reason="",
                failure_streak=0,
                last_error="",
                updated_at=timezone.now(),
            )
        )
        if updated == 1:
            _audit(connection, kind=SyncEventKind.REACTIVATED, actor=actor, trigger=trigger)
    return updated == 1


# --- Manual sync from the REST API ------------------------------------------------------------------------


# Sources a patient can ask to sync: the registered direct providers (by key), and every provider Junction
# documents (a patient reaches those through their Junction connection). A direct connection wins where a name
# is both.
def direct_sources() -> frozenset[str]:
    return frozenset(key for key, p in PROVIDERS.items() if p.connect is not ConnectMethod.AGGREGATOR)


JUNCTION_SOURCES: frozenset[str] = frozenset(
    """oura fitbit garmin whoop strava renpho peloton wahoo zwift freestyle_libre abbott_libreview tandem_source
    freestyle_libre_ble eight_sleep withings apple_health_kit manual ihealth google_fit beurer_api beurer_ble omron
    omron_ble onetouch_ble accuchek_ble contour_ble dexcom dexcom_v3 hammerhead my_fitness_pal health_connect
    samsung_health polar cronometer kardia whoop_v2 ultrahuman my_fitness_pal_v2 map_my_fitness runkeeper
    google_health""".split()
)


def accepted_sources() -> tuple[str, ...]:
    return tuple(sorted(direct_sources() | JUNCTION_SOURCES))


# Which providers a Junction user has connected, asked at request time: cached, and asked with a short
# timeout and no retries so a slow Junction never holds a web worker.
JUNCTION_SOURCES_CACHE_SECONDS = 600
JUNCTION_LOOKUP_TIMEOUT_SECONDS = 3.0
MANUAL_SYNC_WINDOW = timedelta(hours=1)
MANUAL_SYNC_GROUP = "manual-sync"


class UnknownSource(ValueError):
    pass


class NoConnection(LookupError):
    pass


class IdempotencyKeyReused(ValueError):
    pass


class ManualSyncRateLimited(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"manual sync limit reached; retry in {retry_after:.0f} s")
        self.retry_after = retry_after


@dataclass
class ManualSyncOutcome:
    request: SyncRequest
    # False when an active request for the same source, or the same Idempotency-Key, was returned instead.
    created: bool


def normalise_source(source: str) -> str:
    name = source.strip().lower()
    if name not in direct_sources() and name not in JUNCTION_SOURCES:
        raise UnknownSource(name)
    return name


def junction_sources_cache_key(connection_id: int) -> str:
    return f"loopsync:junction-sources:{connection_id}"


def junction_connected_sources(connection: Connection) -> frozenset[str] | None:
    """The provider slugs connected under this Junction user; None when Junction cannot say right now."""
    key = junction_sources_cache_key(connection.pk)
    cached = cache.get(key)
    if cached is not None:
        return frozenset(cached)
    config = settings.JUNCTION_SYNC
    user_id = connection.patient.junction_user_id
    if not (config.api_key and user_id):
        return None
    client = JunctionClient(
        config.base_url,
        config.api_key,
        timeout=JUNCTION_LOOKUP_TIMEOUT_SECONDS,
        policy=RetryPolicy(attempts=1),
    )
    try:
        with client:
            slugs = frozenset(
                str(p.get("slug")) for p in client.connected_providers(user_id) if p.get("slug")
            )
    except ProviderError as exc:
        logger.warning("junction provider lookup failed", extra={"error": str(exc)})
        return None
    cache.set(key, sorted(slugs), JUNCTION_SOURCES_CACHE_SECONDS)
    return slugs


def resolve_source_connection(patient: Patient, source: str) -> Connection:
    """The active connection that syncs `source` for this patient, or NoConnection."""
    connections = {
        c.provider: c
        for c in Connection.objects.select_related("patient").filter(
            patient=patient, status=ConnectionStatus.ACTIVE
        )
    }
    if source in direct_sources() and source in connections:
        return connections[source]
    junction = connections.get(Provider.JUNCTION)
    if source in JUNCTION_SOURCES and junction is not None and junction.patient.junction_user_id:
        connected = junction_connected_sources(junction)
        # Unknown (Junction unreachable): accept; the task checks again and fails the request cleanly.
        if connected is None or source in connected:
            return junction
    raise NoConnection(source)


def request_manual_sync(
    patient: Patient, source: str, *, idempotency_key: str | None = None
) -> ManualSyncOutcome:
    """Queue a manual sync of one source, or return the one already queued or running.

    Single flight is the partial unique index on (patient, source) for active requests; the patient row lock
    additionally serialises one patient's requests so the hourly limit counts exactly.
    """
    source = normalise_source(source)
    if idempotency_key:
        replay = _replay(patient, source, idempotency_key)
        if replay is not None:
            return replay
    now = timezone.now()
    stale_after = timedelta(seconds=settings.MANUAL_SYNC_STALE_SECONDS)
    # The common case (the app polls by POSTing again) is one indexed read: no row lock, no commit to wait
    # for, and no source resolution (the sync pending was resolved when it was queued; if its connection has
    # gone since, the task fails it cleanly).
    active = _active_sync_request(patient.pk, source)
    if active is not None and now - active.created_at < stale_after:
        return ManualSyncOutcome(active, created=False)
    connection = resolve_source_connection(patient, source)
    with transaction.atomic():
        Patient.objects.select_for_update().filter(pk=patient.pk).values_list("pk").first()
        if idempotency_key:
            replay = _replay(patient, source, idempotency_key)
            if replay is not None:
                return replay
        active = _active_sync_request(patient.pk, source)
        if active is not None:
            if now - active.created_at < stale_after:
                return ManualSyncOutcome(active, created=False)
            # Its task was lost (a worker died before taking it): fail it so this request can run.
            SyncRequest.objects.filter(pk=active.pk, status__in=ACTIVE_SYNC_REQUEST_STATUSES).update(
                status=SyncRequestStatus.FAILED, finished_at=now, error="abandoned: the sync never finished"
            )
        recent = list(
            SyncRequest.objects.filter(patient=patient, created_at__gt=now - MANUAL_SYNC_WINDOW)
            .order_by("-created_at")
            .values_list("created_at", flat=True)[: settings.MANUAL_SYNC_PER_HOUR]
        )
        if len(recent) >= settings.MANUAL_SYNC_PER_HOUR:
            oldest_counted = recent[-1]
            raise ManualSyncRateLimited(max(1.0, (oldest_counted + MANUAL_SYNC_WINDOW - now).total_seconds()))
        try:
            with transaction.atomic():
                request = SyncRequest.objects.create(
                    patient=patient,
                    source=source,
                    connection=connection,
                    idempotency_key=idempotency_key or None,
                    created_at=now,
                )
        except IntegrityError:
            # Another process inserted first (the index is the guarantee where the row lock is not).
            winner = SyncRequest.objects.filter(
                patient=patient, source=source, status__in=ACTIVE_SYNC_REQUEST_STATUSES
            ).first()
            if winner is None and idempotency_key:
                winner = SyncRequest.objects.filter(patient=patient, idempotency_key=idempotency_key).first()
            if winner is None:
                raise
            return ManualSyncOutcome(winner, created=False)
        request_id = request.pk
        transaction.on_commit(lambda: _enqueue_manual_sync(request_id))
    logger.info(
        "manual sync queued",
        extra={"sync_request_id": request.pk, "source": source, "patient_id": patient.pk},
    )
    return ManualSyncOutcome(request, created=True)


def _active_sync_request(patient_id: int, source: str) -> SyncRequest | None:
    """The patient's queued or running sync of `source`: the partial unique index allows one, and is the
    index this read uses (get() adds no ORDER BY, which could steer the plan to the primary key)."""
    try:
        return SyncRequest.objects.get(
            patient_id=patient_id, source=source, status__in=ACTIVE_SYNC_REQUEST_STATUSES
        )
    except SyncRequest.DoesNotExist:
        return None


def _replay(patient: Patient, source: str, idempotency_key: str) -> ManualSyncOutcome | None:
    previous = SyncRequest.objects.filter(patient=patient, idempotency_key=idempotency_key).first()
    if previous is None:
        return None
    if previous.source != source:
        raise IdempotencyKeyReused(idempotency_key)
    return ManualSyncOutcome(previous, created=False)


def _enqueue_manual_sync(request_id: int) -> None:
    from django_q.tasks import async_task

    async_task(
        "connections.tasks.run_manual_sync",
        request_id,
        group=MANUAL_SYNC_GROUP,
        task_name=f"{MANUAL_SYNC_GROUP}:{request_id}",
    )


def do_manual_sync(request_id: int) -> SyncRequest | None:
    """Run a queued manual sync once: claim it, refresh at Junction when it is a Junction source, sync."""
    started = timezone.now()
    claimed = SyncRequest.objects.filter(pk=request_id, status=SyncRequestStatus.QUEUED).update(
        status=SyncRequestStatus.RUNNING, started_at=started
    )
    request = SyncRequest.objects.select_related("connection__patient").filter(pk=request_id).first()
    if not claimed or request is None:
        return request  # delivered twice, or already taken over: the first delivery owns it
    connection = request.connection
    event: SyncEvent | None = None
    error = ""
    try:
        if connection is None or connection.status != ConnectionStatus.ACTIVE:
            error = "the connection was removed or deactivated"
        elif connection.provider == Provider.JUNCTION:
            event, request.junction_refresh, error = _manual_junction_sync(request, connection)
        else:
            event = sync_connection(connection, trigger=SyncTrigger.MANUAL, actor="patient")
    except ConnectionInactive:
        error = "the connection was removed or deactivated"
    except Exception as exc:  # noqa: BLE001 - the request must end failed, never stay running
        logger.exception("manual sync crashed", extra={"sync_request_id": request_id})
        error = f"internal error: {type(exc).__name__}"
    request.finished_at = timezone.now()
    if event is not None:
        # The event the engine wrote for this very sync (two manual syncs can never swap events).
        request.sync_event = event
        request.records_fetched = event.records_fetched
        request.records_stored = event.records_stored
        request.records_skipped = event.records_skipped
        if event.status != SyncStatus.SUCCESS:
            error = error or event.error.replace("\n", "; ") or event.status
    request.status = SyncRequestStatus.FAILED if error else SyncRequestStatus.SUCCESS
    request.error = error[:2000]
    request.save(
        update_fields=[
            "status",
            "junction_refresh",
            "records_fetched",
            "records_stored",
            "records_skipped",
            "sync_event",
            "error",
            "finished_at",
        ]
    )
    logger.info(
        "manual sync finished",
        extra={
            "sync_request_id": request_id,
            "status": request.status,
            "records_stored": request.records_stored,
        },
    )
    return request


def _manual_junction_sync(request: SyncRequest, connection: Connection) -> tuple[SyncEvent | None, str, str]:
    """(event, refresh outcome, error) of a Junction source: refresh the user, then sync its window."""
    user_id = connection.patient.junction_user_id or ""
    with open_provider(Provider.JUNCTION) as junction:
        client = junction.client  # type: ignore[attr-defined]
        try:
            connected = {str(p.get("slug")) for p in client.connected_providers(user_id)}
        except ProviderError as exc:
            return None, "", str(exc)
        cache.set(
            junction_sources_cache_key(connection.pk), sorted(connected), JUNCTION_SOURCES_CACHE_SECONDS
        )
        if request.source not in connected:
            return None, "", f"{request.source} is not connected through Junction"
        # Junction allows 8 refreshes an hour per user: a 429 means a recent refresh already pulled, so the
        # sync goes on and fetches what Junction has.
        try:
            body = client.refresh_user(user_id)
            refresh = "refreshed" if isinstance(body, dict) and body.get("success") else "failed"
        except ProviderRateLimited:
            refresh = "rate_limited"
        except ProviderError as exc:
            logger.warning("junction refresh failed", extra={"error": str(exc)})
            refresh = "failed"
        event = sync_connection(connection, trigger=SyncTrigger.MANUAL, actor="patient", provider=junction)
    return event, refresh, ""


def do_repair_gap(gap: DataGap, *, actor: str, trigger: str = SyncTrigger.ADMIN) -> SyncEvent | None:
    """Queue the targeted repair of one open gap (exactly its window) and record who asked; None when the gap
    is not open (already repairing, closed, or not available at the provider)."""
    with transaction.atomic():
        locked = DataGap.objects.select_for_update().select_related("connection").filter(pk=gap.pk).first()
        if locked is None or locked.status != GapStatus.OPEN:
            return None
        event = _audit(
            locked.connection,
            kind=SyncEventKind.GAP_REPAIR_REQUESTED,
            actor=actor,
            trigger=trigger,
            note=f"gap {locked.pk}: {locked.start:%Y-%m-%d %H:%M} to {locked.end:%Y-%m-%d %H:%M} UTC",
        )
        gap_id = locked.pk
        transaction.on_commit(
            lambda: async_task(
                "connections.tasks.repair_gap_task",
                gap_id,
                group="gap-repair",
                task_name=f"gap-repair:{gap_id}",
            )
        )
    return event
