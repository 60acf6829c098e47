"""Sandbox-backed WHOOP, Dexcom and Libre connections, created through the real flows (for run_job --sandbox,
`make demo`, tests and the benchmark). Idempotent: a sandbox account already connected is reused."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import httpx

from connections.config import DirectProvidersConfig
from connections.models import Connection, Patient, Provider, ProviderCredential
from connections.oauth import begin_oauth, complete_oauth, connect_libre

if TYPE_CHECKING:
    from sandbox.server import SandboxServer

SANDBOX_REDIRECT_URI = "https://loopsync.invalid/connect/{provider}/callback"


def sandbox_config(sandbox: SandboxServer, base: DirectProvidersConfig) -> DirectProvidersConfig:
    """The configuration pointed at the sandbox's hosts and OAuth clients."""
    return base.replace(
        whoop_api_url=sandbox.whoop_url,
        whoop_client_id=sandbox.whoop.oauth.client_id,
        whoop_client_secret=sandbox.whoop.oauth.client_secret,
        dexcom_api_url=sandbox.dexcom_url,
        dexcom_client_id=sandbox.dexcom.oauth.client_id,
        dexcom_client_secret=sandbox.dexcom.oauth.client_secret,
        libre_api_url=sandbox.libre_url,
        libre_regional_url_template=sandbox.libre_url + "/api-{region}",
    )


def authorize_in_sandbox(url: str, sandbox_user: int) -> tuple[str, str]:
    """Play the patient's browser on the sandbox's authorize page: returns (code, state) from the redirect."""
    response = httpx.get(f"{url}&sandbox_user={sandbox_user}", follow_redirects=False, timeout=10)
    if response.status_code != 302:
        raise RuntimeError(f"sandbox authorize answered {response.status_code}")
    query = parse_qs(urlsplit(response.headers["location"]).query)
    if "code" not in query:
        raise RuntimeError(f"sandbox authorize refused: {query.get('error')}")
    return query["code"][0], query["state"][0]


def connect_sandbox_user(
    sandbox: SandboxServer,
    config: DirectProvidersConfig,
    provider: str,
    index: int,
    patient: Patient | None = None,
) -> Connection:
    patient = patient or Patient.objects.create()
    if provider == Provider.LIBRE:
        user = sandbox.libre.user(index)
        return connect_libre(patient, user.email, user.password, config)
    redirect_uri = SANDBOX_REDIRECT_URI.format(provider=provider)
    flow = begin_oauth(patient, provider, redirect_uri, config)
    code, state = authorize_in_sandbox(flow.authorize_url, index)
    return complete_oauth(provider, state, code, flow.browser_key, config)


def _external_id(sandbox: SandboxServer, provider: str, index: int) -> str:
    if provider == Provider.WHOOP:
        return str(sandbox.whoop.whoop_user_id(index))
    if provider == Provider.DEXCOM:
        return sandbox.dexcom.user_id(index)
    return sandbox.libre.user(index).user_id


def ensure_sandbox_connections(
    sandbox: SandboxServer, config: DirectProvidersConfig, providers: tuple[str, ...], users: int
) -> list[int]:
    """Connection ids of sandbox users 1..users of each provider, (re)connected through the real flows."""
    ids: list[int] = []
    for provider in providers:
        for index in range(1, users + 1):
            external = _external_id(sandbox, provider, index)
            credential = (
                ProviderCredential.objects.select_related("connection__patient")
                .filter(connection__provider=provider, external_user_id=external)
                .first()
            )
            # Connected again even when known: a sandbox started for this run does not know the tokens an
            # earlier one issued. The reconnect keeps the patient and the cursor, so nothing is fetched twice.
            patient = credential.connection.patient if credential else None
            ids.append(connect_sandbox_user(sandbox, config, provider, index, patient).pk)
    return ids
