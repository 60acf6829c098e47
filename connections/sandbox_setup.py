"""Sandbox-backed connections, created through the providers' real flows (run_job --sandbox, `make demo`,
tests and the benchmarks), for every registered provider. Idempotent: a sandbox account already connected is
reused."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import httpx
from django.conf import settings

from connections.models import Connection, Patient, ProviderCredential
from connections.oauth import begin_oauth, complete_oauth
from connections.providers.contract import ConnectMethod, SyncProvider
from connections.providers.registry import PROVIDERS, open_provider, provider_jobs

if TYPE_CHECKING:
    from sandbox.server import SandboxServer

SANDBOX_REDIRECT_URI = "https://loopsync.invalid/connect/{provider}/callback"


def sandbox_config(sandbox: SandboxServer, base: Any, settings_name: str = "DIRECT_PROVIDERS") -> Any:
    """The setting `settings_name` (given as `base`) pointed at the sandbox by every provider that reads it."""
    config = base
    for provider in PROVIDERS.values():
        if provider.settings_name == settings_name:
            config = provider.sandbox_config(sandbox, config)
    return config


def authorize_in_sandbox(url: str, sandbox_user: int) -> tuple[str, str]:
    """Play the patient's browser on the sandbox's authorize page: returns (code, state) from the redirect."""
    response = httpx.get(f"{url}&sandbox_user={sandbox_user}", follow_redirects=False, timeout=10)
    if response.status_code != 302:
        raise RuntimeError(f"sandbox authorize answered {response.status_code}")
    query = parse_qs(urlsplit(response.headers["location"]).query)
    if "code" not in query:
        raise RuntimeError(f"sandbox authorize refused: {query.get('error')}")
    return query["code"][0], query["state"][0]


def connect_oauth_sandbox_user(
    provider: SyncProvider, sandbox: SandboxServer, index: int, patient: Patient | None
) -> Connection:
    """The OAuth flow with the sandbox's authorize page approving as sandbox user `index`."""
    patient = patient or Patient.objects.create()
    redirect_uri = SANDBOX_REDIRECT_URI.format(provider=provider.key)
    flow = begin_oauth(patient, provider.key, redirect_uri, provider.config)
    code, state = authorize_in_sandbox(flow.authorize_url, index)
    return complete_oauth(provider.key, state, code, flow.browser_key, provider.config)


def connect_sandbox_user(
    sandbox: SandboxServer, config: Any, provider: str, index: int, patient: Patient | None = None
) -> Connection:
    with open_provider(provider, config) as opened:
        return opened.connect_sandbox_user(sandbox, index, patient)


def ensure_sandbox_connections(
    sandbox: SandboxServer, config: Any, providers: tuple[str, ...], users: int
) -> list[int]:
    """Connection ids of sandbox users 1..users of each provider, (re)connected through the real flows."""
    ids: list[int] = []
    for key in providers:
        with open_provider(key, config) as provider:
            for index in range(1, users + 1):
                external = provider.sandbox_external_id(sandbox, index)
                credential = (
                    ProviderCredential.objects.select_related("connection__patient")
                    .filter(connection__provider=key, external_user_id=external)
                    .first()
                )
                # Connected again even when known: a sandbox started for this run does not know the tokens an
                # earlier one issued. The reconnect keeps the patient and the cursor: nothing is fetched twice.
                patient = credential.connection.patient if credential else None
                ids.append(provider.connect_sandbox_user(sandbox, index, patient).pk)
    return ids


def sandbox_job_setup(sandbox: SandboxServer, job: str) -> tuple[dict[str, Any], list[int] | None]:
    """For `run_job JOB --sandbox`: each provider's settings pointed at the sandbox, and the connections to
    sync (those of sandbox accounts, connected through the real flows); None when the job's providers are
    aggregators, whose users the settings name."""
    configs: dict[str, Any] = {}
    connection_ids: list[int] | None = None
    for provider in provider_jobs()[job].providers:
        config = sandbox_config(sandbox, getattr(settings, provider.settings_name), provider.settings_name)
        configs[provider.key] = config
        if provider.connect is not ConnectMethod.AGGREGATOR:
            connection_ids = (connection_ids or []) + ensure_sandbox_connections(
                sandbox, config, (provider.key,), len(sandbox.libre.users)
            )
    return configs, connection_ids


class SandboxAt:
    """A sandbox that another process serves at `base_url` (`make look`), seen as the providers' sandbox hooks
    see a SandboxServer: the same seed and user count give the same accounts (ids, logins), so the demo's
    sandbox connections can be connected again to it."""

    def __init__(self, base_url: str, *, users: int = 20, seed: int = 42) -> None:
        from sandbox.dexcom import DexcomSandbox
        from sandbox.libre import LibreSandbox
        from sandbox.whoop import WhoopSandbox

        self.base_url = base_url.rstrip("/")
        self.whoop = WhoopSandbox(users=users, seed=seed)
        self.dexcom = DexcomSandbox(users=users, seed=seed)
        self.libre = LibreSandbox(users=users, seed=seed)
        self.users = users


def reconnect_known_sandbox_users(sandbox: Any, config: Any) -> int:
    """Connect again, through the real flows, every direct connection of a sandbox account: a sandbox started
    anew does not know the tokens an earlier one issued, and without this the first sync would find them
    refused and mark the connections revoked. Creates nothing new. Returns how many were reconnected."""
    reconnected = 0
    for key, registered in PROVIDERS.items():
        if registered.connect is ConnectMethod.AGGREGATOR:
            continue
        with open_provider(key, config) as provider:
            for index in range(1, sandbox.users + 1):
                credential = (
                    ProviderCredential.objects.select_related("connection__patient")
                    .filter(
                        connection__provider=key,
                        external_user_id=provider.sandbox_external_id(sandbox, index),
                    )
                    .first()
                )
                if credential is not None:
                    provider.connect_sandbox_user(sandbox, index, credential.connection.patient)
                    reconnected += 1
    return reconnected
