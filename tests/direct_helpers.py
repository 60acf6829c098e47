"""Shared helpers for the direct-provider tests (WHOOP, Dexcom, Libre) over real HTTP against the sandbox."""

from __future__ import annotations

from connections.config import DirectProvidersConfig
from connections.models import Connection, ProviderCredential
from connections.sandbox_setup import connect_sandbox_user
from connections.sync_direct import DirectClients, sync_direct_connection
from sandbox import SandboxServer


def connect(sandbox: SandboxServer, config: DirectProvidersConfig, provider: str, index: int) -> Connection:
    return connect_sandbox_user(sandbox, config, provider, index)


def sync(connection: Connection, config: DirectProvidersConfig, **kwargs):  # type: ignore[no-untyped-def]
    connection.refresh_from_db()
    with DirectClients(config) as clients:
        return sync_direct_connection(connection, clients, **kwargs)


def expire_stored_token(connection: Connection) -> None:
    """The stored access token looks expired to us (and is expired at the provider)."""
    from datetime import UTC, datetime

    ProviderCredential.objects.filter(connection=connection).update(
        expires_at=datetime(2000, 1, 1, tzinfo=UTC)
    )


def requests_to(
    sandbox: SandboxServer, provider: str, path_contains: str = "", method: str | None = None
) -> list[dict]:
    return sandbox.requests.snapshot(provider=provider, path_contains=path_contains or None, method=method)
