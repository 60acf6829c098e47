"""Actions on connections that views, admin buttons, commands and tasks all call.

Each function owns its transaction and its audit row (a SyncEvent); callers stay thin.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone
from django_q.tasks import async_task

from connections.engine import ConnectionInactive, sync_connection
from connections.jobruns import JobSummary, log_summary
from connections.models import (
    ACTIVE_SYNC_REQUEST_STATUSES,
    Connection,
    ConnectionStatus,
    DataGap,
    GapStatus,
    Patient,
    Provider,
    SyncErrorCode,
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
from connections.sync_errors import sync_error_code

logger = logging.getLogger("loopsync.actions")
RESYNC_GROUP = "connection-resync"


def _audit(
    connection: Connection,
    *,
    kind: str,
    actor: str,
    trigger: str,
    note: str = "",
    status: str = SyncStatus.SUCCESS,
) -> SyncEvent:
    """The audit row of a staff action: done at once (success), or queued and finished later."""
    now = timezone.now()
    return SyncEvent.objects.create(
        connection=connection,
        patient_id=connection.patient_id,
        provider=connection.provider,
        trigger=trigger,
        status=status,
        kind=kind,
        started_at=now,
        finished_at=now if status == SyncStatus.SUCCESS else None,
        actor=actor[:150],
        note=note[:500],
    )


def do_request_resync(
    connection: Connection, *, actor: str, trigger: str = SyncTrigger.ADMIN
) -> SyncEvent | None:
    """Queue a forced sync of one connection (fingerprints ignored) and record who asked.

    Returns the audit event, or None when the connection is inactive (reactivate it first). The audit row
    says what is true: queued now, running once a worker takes it, then the result of the sync it caused
    (`result_event`, the engine's own SyncEvent). The task is queued on commit: a rolled-back request never
    syncs, and the worker always finds the audit row. Two requests in a row queue two syncs; the second
    stores nothing new (the sync is idempotent).
    """
    with transaction.atomic():
        if not Connection.objects.filter(pk=connection.pk, status=ConnectionStatus.ACTIVE).exists():
            return None
        event = _audit(
            connection,
            kind=SyncEventKind.RESYNC_REQUESTED,
            actor=actor,
            trigger=trigger,
            status=SyncStatus.QUEUED,
        )
        connection_id, event_id = connection.pk, event.pk
        transaction.on_commit(lambda: _enqueue_resync(connection_id, event_id, trigger, actor))
    return event


def _enqueue_resync(connection_id: int, request_event_id: int, trigger: str, actor: str) -> None:
    task_id = async_task(
        "connections.tasks.sync_connection_now_task",
        connection_id,
        trigger,
        actor,
        True,
        request_event_id,
        group=RESYNC_GROUP,
        task_name=f"{RESYNC_GROUP}:{connection_id}",
    )
    SyncEvent.objects.filter(pk=request_event_id).update(task_id=str(task_id or "")[:32])


def do_run_resync(
    connection_id: int,
    *,
    trigger: str = SyncTrigger.ADMIN,
    actor: str = "",
    force: bool = True,
    request_event_id: int | None = None,
) -> SyncEvent | None:
    """Run a queued Force resync and move its audit row: queued → running → the sync's result.

    Returns the sync run's event (None when there was nothing to sync). A database failure leaves the row
    running and goes up: the queue delivers the task again, and the next delivery finishes the row.
    """
    requests = SyncEvent.objects.filter(pk=request_event_id, kind=SyncEventKind.RESYNC_REQUESTED)
    if request_event_id is not None:
        requests.filter(status=SyncStatus.QUEUED).update(status=SyncStatus.RUNNING)
    event: SyncEvent | None = None
    error = ""
    try:
        connection = Connection.objects.select_related("patient").filter(pk=connection_id).first()
        if connection is None:
            error = "the connection no longer exists"
        else:
            event = sync_connection(connection, trigger=trigger, actor=actor, force=force)
    except ConnectionInactive:
        error = "the connection was deactivated before the sync ran"
    except DatabaseError:
        raise
    except Exception as exc:
        error = f"internal error: {type(exc).__name__}"
        _finish_resync_request(requests, event, error)
        raise
    _finish_resync_request(requests, event, error)
    return event


def _finish_resync_request(requests: Any, event: SyncEvent | None, error: str) -> None:
    failed = bool(error) or event is None or event.status != SyncStatus.SUCCESS
    log_summary(
        JobSummary(
            job=RESYNC_GROUP,
            status=SyncStatus.FAILED if failed else SyncStatus.SUCCESS,
            duration_s=(event.duration_seconds or 0.0) if event is not None else 0.0,
            users_expected=1,
            users_synced=int(not failed),
            users_failed=int(failed),
            records_stored=event.records_stored if event is not None else 0,
        )
    )
    requests.update(
        status=SyncStatus.FAILED if failed else SyncStatus.SUCCESS,
        finished_at=timezone.now(),
        result_event=event,
        error=(error or (event.error if event is not None else ""))[:2000],
        records_stored=event.records_stored if event is not None else 0,
    )


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
                last_error_code="",
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
def do_change_time_zone(patient: Patient, time_zone: str, *, actor: str) -> None:
    """Move a patient to another IANA zone: the one path for every zone change (admin form, commands, code).
    Re-buckets the patient's days and rebuilds exactly the affected statistics in one transaction
    (readings.aggregate.change_patient_time_zone)."""
    from readings.aggregate import change_patient_time_zone

    result = change_patient_time_zone(patient.pk, time_zone)
    logger.info(
        "patient time zone changed",
        extra={
            "patient_id": patient.pk,
            "actor": actor[:150],
            "daily_rows_changed": result.daily_rows_changed,
        },
    )


def do_rebuild_patient_statistics(patient: Patient, *, actor: str) -> None:
    """Rebuild a patient's statistics inside the horizon after their route priorities changed (which copy of a
    measurement counts), in one transaction (readings.aggregate.rebuild_patient_days)."""
    from readings.aggregate import rebuild_patient_days

    result = rebuild_patient_days(patient.pk)
    logger.info(
        "patient statistics rebuilt",
        extra={
            "patient_id": patient.pk,
            "actor": actor[:150],
            "daily_rows_changed": result.daily_rows_changed,
        },
    )


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
                status=SyncRequestStatus.FAILED,
                finished_at=now,
                error="abandoned: the sync never finished",
                error_code=SyncErrorCode.INTERRUPTED,
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
    error, code = "", ""
    inactive = "the connection was removed or deactivated", SyncErrorCode.CONNECTION_INACTIVE
    try:
        if connection is None or connection.status != ConnectionStatus.ACTIVE:
            error, code = inactive
        elif connection.provider == Provider.JUNCTION:
            event, request.junction_refresh, error, code = _manual_junction_sync(request, connection)
        else:
            event = sync_connection(connection, trigger=SyncTrigger.MANUAL, actor="patient")
    except ConnectionInactive:
        error, code = inactive
    except Exception as exc:  # noqa: BLE001 - the request must end failed, never stay running
        logger.exception("manual sync crashed", extra={"sync_request_id": request_id})
        error, code = f"internal error: {type(exc).__name__}", sync_error_code(exc)
    request.finished_at = timezone.now()
    if event is not None:
        # The event the engine wrote for this very sync (two manual syncs can never swap events).
        request.sync_event = event
        request.records_fetched = event.records_fetched
        request.records_stored = event.records_stored
        request.records_skipped = event.records_skipped
        if event.status != SyncStatus.SUCCESS:
            error = error or event.error.replace("\n", "; ") or event.status
            code = code or event.error_code or SyncErrorCode.INTERNAL_ERROR
    request.status = SyncRequestStatus.FAILED if error else SyncRequestStatus.SUCCESS
    request.error = error[:2000]
    request.error_code = code if error else ""
    request.save(
        update_fields=[
            "status",
            "junction_refresh",
            "records_fetched",
            "records_stored",
            "records_skipped",
            "sync_event",
            "error",
            "error_code",
            "finished_at",
        ]
    )
    # A manual sync is a job of one user: the same summary line as every job.
    log_summary(
        JobSummary(
            job=MANUAL_SYNC_GROUP,
            status=request.status,
            duration_s=(request.finished_at - started).total_seconds(),
            users_expected=1,
            users_synced=int(request.status == SyncRequestStatus.SUCCESS),
            users_failed=int(request.status == SyncRequestStatus.FAILED),
            records_stored=request.records_stored,
        )
    )
    return request


def _manual_junction_sync(
    request: SyncRequest, connection: Connection
) -> tuple[SyncEvent | None, str, str, str]:
    """(event, refresh outcome, error, error code) of a Junction source: refresh the user, then sync its
    window."""
    user_id = connection.patient.junction_user_id or ""
    with open_provider(Provider.JUNCTION) as junction:
        client = junction.client  # type: ignore[attr-defined]
        try:
            connected = {str(p.get("slug")) for p in client.connected_providers(user_id)}
        except ProviderError as exc:
            return None, "", str(exc), sync_error_code(exc)
        cache.set(
            junction_sources_cache_key(connection.pk), sorted(connected), JUNCTION_SOURCES_CACHE_SECONDS
        )
        if request.source not in connected:
            return (
                None,
                "",
                f"{request.source} is not connected through Junction",
                SyncErrorCode.SOURCE_NOT_CONNECTED,
            )
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
    return event, refresh, "", ""


# --- The webhook inbox ------------------------------------------------------------------------------------


def do_replay_webhook(event_id: int, *, actor: str, trigger: str = SyncTrigger.ADMIN) -> bool:
    """Process one inbox event again (a failed one, an unmatched one whose user now exists, or a processed one
    whose data was lost downstream) and record who asked. False when the event is gone or is being processed.

    Safe whatever its state: processing is idempotent (natural-key upserts, newer record versions kept).
    """
    from connections.inbox import queue_processing
    from connections.models import WebhookEvent, WebhookStatus

    with transaction.atomic():
        event = WebhookEvent.objects.select_for_update(skip_locked=True).filter(pk=event_id).first()
        if event is None:
            return False
        event.status, event.error, event.processed_at = WebhookStatus.RECEIVED, "", None
        event.save(update_fields=["status", "error", "processed_at"])
        now = timezone.now()
        SyncEvent.objects.create(
            connection_id=event.connection_id,
            patient_id=event.connection.patient_id if event.connection_id else None,
            provider=event.provider,
            trigger=trigger,
            status=SyncStatus.SUCCESS,
            kind=SyncEventKind.WEBHOOK_REPLAYED,
            started_at=now,
            finished_at=now,
            actor=actor[:150],
            note=f"webhook inbox event {event.pk} ({event.event_type})"[:500],
        )
        transaction.on_commit(lambda: queue_processing(event_id))
    return True


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
