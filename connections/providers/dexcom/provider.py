"""Dexcom as a SyncProvider: OAuth connect, EGVs every 30 minutes since the newest stored reading."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.utils import timezone

from connections.config import DirectProvidersConfig
from connections.providers.base import ProviderError
from connections.providers.contract import CGM_CADENCE, Batch, InvalidPayload, PartialFetch, cursor_start
from connections.providers.dexcom.client import DexcomClient, ParsedGlucose, newest_egv, parse_egvs, windows
from connections.providers.oauth2 import OAuthClient, OAuthProvider, TokenSet

if TYPE_CHECKING:
    from connections.models import Connection
    from connections.tokens import TokenSession
    from sandbox.server import SandboxServer


class DexcomProvider(OAuthProvider):
    key = "dexcom"
    label = "Dexcom"
    client_class = DexcomClient
    job = "sync-cgm-readings"
    cron = "*/30 * * * *"
    # Dexcom withholds readings 1-3 hours in the US (3 hours for the EU and sandbox apps).
    data_delay = timedelta(hours=3)
    cadence = CGM_CADENCE
    job_description = (
        "Dexcom and FreeStyle Libre: glucose since the newest stored reading; one task per connection."
    )
    glucose = True
    source_family = "dexcom"
    source_patterns = ("dexcom%",)
    priority = 2
    settings_name = "DIRECT_PROVIDERS"
    # Dexcom's largest window: one request per chunk.
    backfill_chunk = timedelta(days=30)
    completeness_kinds = ("glucose",)
    config: DirectProvidersConfig
    client: DexcomClient

    def external_user_id(self, client: OAuthClient, tokens: TokenSet) -> str:
        # Dexcom has no profile route; every v3 response carries the per-app userId.
        assert isinstance(client, DexcomClient)
        return str(client.data_range(tokens.access_token).get("userId") or "")

    def fetch(
        self,
        connection: Connection,
        since: datetime | None,
        *,
        session: TokenSession | None,
        window: tuple[datetime, datetime] | None = None,
        force: bool = False,
    ) -> Batch:
        assert session is not None
        config, client = self.config, self.client
        now = timezone.now()
        if window is not None:
            start, end = window
        else:
            end = now
            if since is None:
                # Dexcom delays data by 1-3 h: the first window ends at the newest reading it holds.
                newest = newest_egv(session.call(client.data_range))
                start = (newest or now) - timedelta(days=config.cgm_initial_days)
            else:
                start = cursor_start(since, timedelta(minutes=config.cgm_overlap_minutes), now)
            start = max(start, now - timedelta(days=config.cgm_max_lookback_days))
        parsed = ParsedGlucose()
        for lower, upper in windows(start, end):
            try:
                body = session.call(lambda token, lower=lower, upper=upper: client.egvs(token, lower, upper))
            except (ProviderError, InvalidPayload) as exc:
                if parsed.newest is None:
                    raise
                # The windows run oldest first, so what came before is complete up to its newest reading:
                # stored, with the cursor there; the next run starts at the window that failed.
                partial = Batch(
                    glucose=parsed.glucose,
                    skipped=parsed.skipped,
                    window_start=start,
                    window_end=lower,
                    cursor=parsed.newest if window is None else None,
                )
                raise PartialFetch(partial, exc) from exc
            parse_egvs(body, parsed)
        # The cursor is the newest reading received, not the wall clock (the data is late).
        return Batch(
            glucose=parsed.glucose,
            skipped=parsed.skipped,
            window_start=start,
            window_end=end,
            cursor=parsed.newest if window is None else None,
        )

    @classmethod
    def sandbox_config(cls, sandbox: SandboxServer, config: DirectProvidersConfig) -> DirectProvidersConfig:
        return config.replace(
            dexcom_api_url=sandbox.dexcom_url,
            dexcom_client_id=sandbox.dexcom.oauth.client_id,
            dexcom_client_secret=sandbox.dexcom.oauth.client_secret,
        )

    def sandbox_external_id(self, sandbox: SandboxServer, index: int) -> str:
        return sandbox.dexcom.user_id(index)
