"""WHOOP as a SyncProvider: OAuth connect, daily pull of cycles, recoveries, sleeps and workouts."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.utils import timezone

from connections.config import DirectProvidersConfig
from connections.providers.contract import DAILY_CADENCE, Batch, Delivery, WebhookOutcome, cursor_start
from connections.providers.oauth2 import OAuthClient, OAuthProvider, TokenSet
from connections.providers.whoop import webhooks
from connections.providers.whoop.client import COLLECTIONS, METRICS, WhoopClient, WhoopParsed, parse_records

if TYPE_CHECKING:
    from connections.models import Connection
    from connections.tokens import TokenSession
    from sandbox.server import SandboxServer


class WhoopProvider(OAuthProvider):
    key = "whoop"
    label = "WHOOP"
    client_class = WhoopClient
    job = "sync-whoop-data"
    # After the night's sleep and recovery are usually scored in the Americas and Europe.
    cron = "0 6 * * *"
    # A night's sleep and recovery are scored after waking; a cycle is open all day.
    data_delay = timedelta(hours=24)
    cadence = DAILY_CADENCE
    job_description = (
        "WHOOP: recovery, strain (cycles), sleep and workouts since the cursor; one task per connection."
    )
    metrics = METRICS
    source_family = "whoop"
    source_patterns = ("whoop%",)
    priority = 2
    settings_name = "DIRECT_PROVIDERS"
    # 25 days: one page (limit 25) of each collection per chunk.
    backfill_chunk = timedelta(days=25)
    completeness_kinds = ("sleep",)
    config: DirectProvidersConfig
    client: WhoopClient

    def external_user_id(self, client: OAuthClient, tokens: TokenSet) -> str:
        assert isinstance(client, WhoopClient)
        return str(client.profile(tokens.access_token).get("user_id") or "")

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
        save_index = webhooks.index_saver(parsed)

        def save_pending(locked: Connection) -> None:
            # Written with the rows: the records not scored yet are fetched again from here next time.
            ProviderCredential.objects.filter(connection_id=locked.pk).update(
                pending_since=pending_since, updated_at=timezone.now()
            )
            save_index(locked)

        return Batch(
            readings=parsed.readings,
            skipped=parsed.skipped,
            window_start=start,
            window_end=end,
            cursor=end if window is None else None,
            save_state=save_pending if window is None else save_index,
        )

    # --- Push: signed webhooks carrying ids (providers/whoop/webhooks.py) ---

    @classmethod
    def verify_webhook(cls, body: bytes, headers: Mapping[str, str]) -> Delivery:
        return webhooks.verify(body, headers)

    @classmethod
    def handles_webhook(cls, event_type: str) -> bool:
        return webhooks.handles(event_type)

    @classmethod
    def webhook_connection(cls, delivery: Delivery) -> Connection | None:
        return webhooks.connection_for(delivery)

    def handle_webhook(
        self, delivery: Delivery, connection: Connection, *, session: TokenSession | None
    ) -> WebhookOutcome:
        return webhooks.handle(self.client, delivery, connection, session)

    @classmethod
    def sandbox_config(cls, sandbox: SandboxServer, config: DirectProvidersConfig) -> DirectProvidersConfig:
        return config.replace(
            whoop_api_url=sandbox.whoop_url,
            whoop_client_id=sandbox.whoop.oauth.client_id,
            whoop_client_secret=sandbox.whoop.oauth.client_secret,
        )

    def sandbox_external_id(self, sandbox: SandboxServer, index: int) -> str:
        return str(sandbox.whoop.whoop_user_id(index))
