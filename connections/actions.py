"""Actions on connections that views, admin buttons, commands and tasks all call.

Each function owns its transaction and its audit row (a SyncEvent); callers stay thin.
"""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django_q.tasks import async_task

from connections.models import (
    Connection,
    ConnectionStatus,
    Provider,
    SyncEvent,
    SyncEventKind,
    SyncStatus,
    SyncTrigger,
)
from connections.providers.junction import JunctionClient
from connections.sync import UserSyncSummary, sync_junction_connection


def sync_connection_now(
    connection: Connection, *, trigger: str = SyncTrigger.SCHEDULE, actor: str = "", force: bool = False
) -> UserSyncSummary:
    """Run one connection's sync in this process, whatever its provider."""
    if connection.provider == Provider.JUNCTION:
        config = settings.JUNCTION_SYNC
        with JunctionClient.from_config(config) as client:
            return sync_junction_connection(
                connection, config, client, trigger=trigger, actor=actor, force=force
            )
    if connection.provider in (Provider.WHOOP, Provider.DEXCOM, Provider.LIBRE):
        from connections.sync_direct import DirectClients, sync_direct_connection

        with DirectClients(settings.DIRECT_PROVIDERS) as clients:
            return sync_direct_connection(connection, clients, trigger=trigger, actor=actor)
    raise NotImplementedError(f"no sync for provider {connection.provider!r} yet")


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
                "connections.tasks.sync_connection",
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
