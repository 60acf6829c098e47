"""WHOOP as a SyncProvider: OAuth connect, daily pull of cycles, recoveries, sleeps and workouts."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from connections.config import DirectProvidersConfig
from connections.providers.contract import DAILY_CADENCE, Batch, ConnectMethod, SyncProvider
from connections.providers.oauth2 import OAuthClient, OAuthGrantError, TokenSet
from connections.providers.whoop.client import COLLECTIONS, METRICS, WhoopClient, WhoopParsed, parse_records

if TYPE_CHECKING:
    from connections.models import Connection, Patient, ProviderCredential
    from connections.tokens import Refresher, TokenSession
    from sandbox.server import SandboxServer


def oauth_refresher(client: OAuthClient) -> Refresher:
    def refresh(credential: ProviderCredential) -> TokenSet:
        if not credential.refresh_token:
            raise OAuthGrantError(client.provider, "invalid_grant", status=None)
        return client.refresh(credential.refresh_token)

    return refresh


def cursor_start(stored: datetime, overlap: timedelta, now: datetime) -> datetime:
    """Where an incremental fetch starts: the cursor minus the overlap, and never after now."""
    return min(stored, now) - overlap


class WhoopProvider(SyncProvider):
    key = "whoop"
    label = "WHOOP"
    connect = ConnectMethod.OAUTH
    job = "sync-whoop-data"
    # After the night's sleep and recovery are usually scored in the Americas and Europe.
    cron = "0 6 * * *"
    cadence = DAILY_CADENCE
    job_description = (
        "WHOOP: recovery, strain (cycles), sleep and workouts since the cursor; one task per connection."
    )
    metrics = METRICS
    source_family = "whoop"
    source_patterns = ("whoop%",)
    priority = 2
    settings_name = "DIRECT_PROVIDERS"
    config: DirectProvidersConfig

    def __init__(self, config: Any = None, *, concurrency: int = 1) -> None:
        super().__init__(config, concurrency=concurrency)
        # One client for the whole job run: its connection pool is thread-safe and shared by the workers.
        self.client = WhoopClient.from_config(self.config)

    def close(self) -> None:
        self.client.close()

    def oauth_client(self) -> WhoopClient:
        if not self.config.whoop_client_id:
            raise ImproperlyConfigured("WHOOP is not configured (WHOOP_CLIENT_ID)")
        return WhoopClient.from_config(self.config)

    def external_user_id(self, client: OAuthClient, tokens: TokenSet) -> str:
        assert isinstance(client, WhoopClient)
        return str(client.profile(tokens.access_token).get("user_id") or "")

    def refresher(self) -> Refresher:
        return oauth_refresher(self.client)

    def fetch(
        self,
        connection: Connection,
        since: datetime | None,
        *,
        session: TokenSession | None,
        window: tuple[datetime, datetime] | None = None,
        force: bool = False,
    ) -> Batch:
        from connections.models import ProviderCredential

        assert session is not None
        config = self.config
        now = timezone.now()
        credential = ProviderCredential.objects.get(connection_id=connection.pk)
        if window is not None:
            start, end = window
        else:
            end = now
            if since is None:
                start = now - timedelta(days=config.whoop_initial_days)
            else:
                start = cursor_start(since, timedelta(hours=config.whoop_overlap_hours), now)
                if credential.pending_since is not None:
                    start = min(start, credential.pending_since)
            start = max(start, now - timedelta(days=config.whoop_max_lookback_days))
        parsed = WhoopParsed()
        client = self.client
        for name in COLLECTIONS:
            records = session.call(
                lambda token, name=name: client.collection(name, lambda: token, start, end)
            )
            parse_records(name, records, parsed)
        pending_since = parsed.unsettled_since

        def save_pending(locked: Connection) -> None:
            # Written with the rows: the records not scored yet are fetched again from here next time.
            ProviderCredential.objects.filter(connection_id=locked.pk).update(
                pending_since=pending_since, updated_at=timezone.now()
            )

        return Batch(
            readings=parsed.readings,
            skipped=parsed.skipped,
            window_start=start,
            window_end=end,
            cursor=end if window is None else None,
            save_state=save_pending if window is None else None,
        )

    @classmethod
    def sandbox_config(cls, sandbox: SandboxServer, config: DirectProvidersConfig) -> DirectProvidersConfig:
        return config.replace(
            whoop_api_url=sandbox.whoop_url,
            whoop_client_id=sandbox.whoop.oauth.client_id,
            whoop_client_secret=sandbox.whoop.oauth.client_secret,
        )

    def connect_sandbox_user(self, sandbox: SandboxServer, index: int, patient: Patient | None) -> Connection:
        from connections.sandbox_setup import connect_oauth_sandbox_user

        return connect_oauth_sandbox_user(self, sandbox, index, patient)

    def sandbox_external_id(self, sandbox: SandboxServer, index: int) -> str:
        return str(sandbox.whoop.whoop_user_id(index))
