"""Actions on connections that views, admin buttons, commands and tasks all call.

Each function owns its transaction and its audit row (a SyncEvent); callers stay thin.
"""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from connections.models import Connection, ConnectionStatus, Provider, SyncTrigger
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


def do_deactivate_connection(connection: Connection, *, reason: str) -> bool:
    """Mark a connection inactive; schedules stop syncing it. Returns False if it already was."""
    with transaction.atomic():
        updated = Connection.objects.filter(pk=connection.pk, status=ConnectionStatus.ACTIVE).update(
            status=ConnectionStatus.INACTIVE, status_reason=reason[:500], updated_at=timezone.now()
        )
    return updated == 1
