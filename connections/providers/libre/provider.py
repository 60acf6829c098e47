"""FreeStyle Libre (through LibreLinkUp) as a SyncProvider: follower login, the graph every 30 minutes."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.utils import timezone

from connections.config import DirectProvidersConfig
from connections.providers.contract import CGM_CADENCE, Batch, ConnectMethod, SyncProvider, cursor_start
from connections.providers.libre.client import LibreClient, LibreSession, parse_graph
from connections.providers.oauth2 import TokenSet

if TYPE_CHECKING:
    from connections.models import Connection, Patient, ProviderCredential
    from connections.tokens import Refresher, TokenSession
    from sandbox.server import SandboxServer

# LibreLinkUp's graph holds about the last 12 hours: the most a first sync can get.
GRAPH_HOURS = 12


class LibreProvider(SyncProvider):
    key = "libre"
    label = "FreeStyle Libre"
    connect = ConnectMethod.LOGIN
    job = "sync-cgm-readings"
    cron = "*/30 * * * *"
    # LibreLinkUp's graph lags the sensor by a few minutes.
    data_delay = timedelta(minutes=15)
    cadence = CGM_CADENCE
    job_description = (
        "Dexcom and FreeStyle Libre: glucose since the newest stored reading; one task per connection."
    )
    glucose = True
    source_family = "libre"
    source_patterns = ("%libre%",)
    priority = 2
    settings_name = "DIRECT_PROVIDERS"
    # LibreLinkUp's graph holds about 12 hours: the whole backfill is one chunk of what it still holds.
    history_limit = timedelta(hours=GRAPH_HOURS)
    backfill_chunk = timedelta(hours=GRAPH_HOURS)
    completeness_kinds = ("glucose",)
    config: DirectProvidersConfig

    def __init__(self, config: Any = None, *, concurrency: int = 1) -> None:
        super().__init__(config, concurrency=concurrency)
        self.client = LibreClient(self.config)

    def close(self) -> None:
        self.client.close()

    def refresher(self) -> Refresher:
        # LibreLinkUp has no refresh token: a new login with the stored email and password is the refresh.
        client = self.client

        def login(credential: ProviderCredential) -> TokenSet:
            session = client.login(credential.libre_email, credential.libre_password, credential.region)
            return TokenSet(access_token=session.token, refresh_token="", expires_at=session.expires_at)

        return login

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
        now = timezone.now()
        credential = ProviderCredential.objects.get(connection_id=connection.pk)
        if window is not None:
            lower = window[0]
        elif since is not None:
            lower = cursor_start(since, timedelta(minutes=self.config.cgm_overlap_minutes), now)
        else:
            lower = None

        def graph(token: str) -> dict[str, Any]:
            libre = LibreSession(token, now, credential.external_user_id, credential.region or "us")
            return self.client.graph(libre, credential.libre_patient_id)

        parsed = parse_graph(session.call(graph), since=lower)
        return Batch(
            glucose=parsed.glucose,
            skipped=parsed.skipped,
            window_start=lower or now - timedelta(hours=GRAPH_HOURS),
            window_end=now,
            cursor=parsed.newest if window is None else None,
        )

    @classmethod
    def sandbox_config(cls, sandbox: SandboxServer, config: DirectProvidersConfig) -> DirectProvidersConfig:
        return config.replace(
            libre_api_url=sandbox.libre_url, libre_regional_url_template=sandbox.libre_url + "/api-{region}"
        )

    def connect_sandbox_user(self, sandbox: SandboxServer, index: int, patient: Patient | None) -> Connection:
        from connections.models import Patient
        from connections.oauth import connect_libre

        user = sandbox.libre.user(index)
        return connect_libre(patient or Patient.objects.create(), user.email, user.password, self.config)

    def sandbox_external_id(self, sandbox: SandboxServer, index: int) -> str:
        return sandbox.libre.user(index).user_id
