"""Connecting WHOOP and Dexcom through the OAuth routes, LibreLinkUp with credentials; credential encryption."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import time_machine
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured
from django.test import Client

from connections import crypto
from connections.config import DEV_FIELD_ENCRYPTION_KEY, DirectProvidersConfig, field_encryption_keys
from connections.models import Connection, ConnectionStatus, OAuthState, Patient, Provider, ProviderCredential
from connections.oauth import OAuthFlowError, connect_libre, connect_token_for
from connections.providers.libre.client import LibreLoginRefused, LibreVersionRejected
from sandbox import SandboxServer

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_time")]


def start(client: Client, provider: str, patient: Patient) -> str:
    response = client.get(f"/connect/{provider}/start", {"token": connect_token_for(patient)})
    assert response.status_code == 302, response.content
    return response["Location"]


def approve(authorize_url: str) -> dict[str, str]:
    """The sandbox's authorize page approves at once and redirects to our callback with code and state."""
    response = httpx.get(authorize_url, follow_redirects=False, timeout=10)
    assert response.status_code == 302
    location = response.headers["location"]
    assert urlsplit(location).path.endswith("/callback")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


@pytest.mark.parametrize("provider", [Provider.WHOOP, Provider.DEXCOM])
def test_oauth_routes_connect_the_patient_who_started_the_flow(
    provider: str, direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:
    patient = Patient.objects.create()
    client = Client()
    url = start(client, provider, patient)
    query = parse_qs(urlsplit(url).query)
    assert query["redirect_uri"][0] == f"http://testserver/connect/{provider}/callback"
    assert len(query["state"][0]) >= 8 and query["response_type"] == ["code"]

    params = approve(url)
    response = client.get(f"/connect/{provider}/callback", params)

    assert response.status_code == 200, response.content
    connection = Connection.objects.get(pk=response.json()["connection_id"])
    assert connection.patient == patient and connection.provider == provider
    credential = ProviderCredential.objects.get(connection=connection)
    assert credential.access_token and credential.refresh_token and credential.external_user_id
    # The state is single use: replaying the callback connects nothing.
    replay = client.get(f"/connect/{provider}/callback", params)
    assert replay.status_code == 400 and "already used" in replay.json()["error"]


def test_a_reconnect_reactivates_an_inactive_connection_and_keeps_its_cursor(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer, frozen_time
) -> None:  # type: ignore[no-untyped-def]
    patient = Patient.objects.create()
    client = Client()
    client.get("/connect/whoop/callback", approve(start(client, "whoop", patient)))
    connection = Connection.objects.get(patient=patient)
    Connection.objects.filter(pk=connection.pk).update(
        status=ConnectionStatus.INACTIVE, status_reason="revoked", last_sync_at=frozen_time
    )

    client.get("/connect/whoop/callback", approve(start(client, "whoop", patient)))

    connection.refresh_from_db()
    assert connection.status == ConnectionStatus.ACTIVE and connection.status_reason == ""
    assert connection.last_sync_at == frozen_time
    assert Connection.objects.filter(patient=patient).count() == 1


def test_start_needs_a_valid_unexpired_connect_token(
    direct_config: DirectProvidersConfig, frozen_time
) -> None:  # type: ignore[no-untyped-def]
    patient = Patient.objects.create()
    client = Client()
    assert client.get("/connect/whoop/start").status_code == 403
    assert client.get("/connect/whoop/start", {"token": "1:forged:sig"}).status_code == 403
    token = connect_token_for(patient)
    with time_machine.travel(frozen_time + timedelta(minutes=11), tick=False):
        expired = client.get("/connect/whoop/start", {"token": token})
    assert expired.status_code == 403 and "expired" in expired.json()["error"]
    assert client.get("/connect/fitbit/start", {"token": token}).status_code == 404


@pytest.mark.parametrize("provider", [Provider.WHOOP, Provider.DEXCOM])
def test_a_victim_completing_an_attackers_authorize_link_links_nothing(
    provider: str, direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:
    attacker_patient = Patient.objects.create()
    attacker, victim = Client(), Client()
    # The attacker starts a flow for their own patient and sends the authorize link to the victim, who approves
    # it with their own provider account; the provider redirects the victim's browser to our callback.
    params = approve(start(attacker, provider, attacker_patient))

    response = victim.get(f"/connect/{provider}/callback", params)

    assert response.status_code == 400 and "another browser" in response.json()["error"]
    assert not Connection.objects.exists() and not ProviderCredential.objects.exists()
    # The victim's attempt used nothing up: the state stays bound to the attacker's browser alone.
    assert OAuthState.objects.get(state=params["state"]).used_at is None


def test_the_browser_key_is_an_httponly_lax_cookie_scoped_to_the_callback_and_only_its_hash_is_stored(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:
    client = Client()
    url = start(client, "whoop", Patient.objects.create())
    state = parse_qs(urlsplit(url).query)["state"][0]

    cookie = client.cookies["loopsync_oauth_whoop"]
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and cookie["path"] == "/connect/whoop/callback"
    assert len(cookie.value) >= 43
    binding = OAuthState.objects.get(state=state).browser_binding
    assert len(binding) == 64 and cookie.value not in binding

    assert client.get("/connect/whoop/callback", approve(url)).status_code == 200


def test_an_expired_or_foreign_state_is_refused(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer, frozen_time
) -> None:  # type: ignore[no-untyped-def]
    patient = Patient.objects.create()
    client = Client()
    params = approve(start(client, "whoop", patient))
    # A WHOOP state presented to the Dexcom callback is refused (and is still usable for WHOOP).
    assert client.get("/connect/dexcom/callback", params).status_code == 400
    with time_machine.travel(frozen_time + timedelta(minutes=11), tick=False):
        late = client.get("/connect/whoop/callback", params)
    assert late.status_code == 400 and not Connection.objects.exists()
    assert OAuthState.objects.get(state=params["state"]).used_at is None


def test_a_denied_authorization_burns_the_state(direct_config: DirectProvidersConfig) -> None:
    patient = Patient.objects.create()
    client = Client()
    state = parse_qs(urlsplit(start(client, "dexcom", patient)).query)["state"][0]
    denied = client.get("/connect/dexcom/callback", {"error": "access_denied", "state": state})
    assert denied.status_code == 400 and OAuthState.objects.get(state=state).used_at is not None


def test_libre_connects_with_credentials_and_refuses_bad_ones(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:
    user = clean_sandbox.libre.user(2)
    patient = Patient.objects.create()
    with pytest.raises(LibreLoginRefused):
        connect_libre(patient, user.email, "wrong", direct_config)
    connection = connect_libre(patient, user.email, user.password, direct_config)
    assert ProviderCredential.objects.get(connection=connection).libre_patient_id == user.patient_id
    with pytest.raises(LibreVersionRejected):
        connect_libre(patient, user.email, user.password, direct_config.replace(libre_version="4.7.0"))


def test_libre_terms_to_accept_is_refused_with_the_reason(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:
    clean_sandbox.libre.terms_pending.add(3)
    user = clean_sandbox.libre.user(3)
    with pytest.raises(LibreLoginRefused, match="tou"):
        connect_libre(Patient.objects.create(), user.email, user.password, direct_config)


def test_oauth_flow_error_for_unconfigured_provider() -> None:
    from connections.oauth import oauth_client

    with pytest.raises(OAuthFlowError, match="WHOOP_CLIENT_ID"):
        oauth_client("whoop", DirectProvidersConfig())


# --- Encryption at rest --------------------------------------------------------------------------------------


def test_multifernet_first_key_encrypts_all_keys_decrypt(settings) -> None:  # type: ignore[no-untyped-def]
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [old]
    stored = crypto.encrypt("refresh-token-value")
    settings.FIELD_ENCRYPTION_KEYS = [new, old]  # rotation: the new key first, the old one still decrypts
    assert crypto.decrypt(stored) == "refresh-token-value"
    rotated = crypto.rotate(stored)
    settings.FIELD_ENCRYPTION_KEYS = [new]
    assert crypto.decrypt(rotated) == "refresh-token-value"
    with pytest.raises(crypto.CredentialDecryptError) as caught:
        crypto.decrypt(stored)
    assert stored not in str(caught.value)


def test_a_wrong_key_raises_instead_of_returning_ciphertext(settings) -> None:  # type: ignore[no-untyped-def]
    patient = Patient.objects.create()
    connection = Connection.objects.create(patient=patient, provider=Provider.WHOOP)
    ProviderCredential.objects.create(connection=connection, access_token="secret-access")
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(crypto.CredentialDecryptError, match="access_token"):
        ProviderCredential.objects.get(connection=connection)


def test_missing_encryption_keys_stop_start_up_unless_debug() -> None:
    with pytest.raises(ImproperlyConfigured, match="FIELD_ENCRYPTION_KEYS"):
        field_encryption_keys([], debug=False)
    assert field_encryption_keys([], debug=True) == [DEV_FIELD_ENCRYPTION_KEY]
    with pytest.raises(ImproperlyConfigured, match="key 2"):
        field_encryption_keys([Fernet.generate_key().decode(), "not-a-key"], debug=False)


def test_direct_provider_settings_are_validated() -> None:
    with pytest.raises(ImproperlyConfigured, match="WHOOP_CLIENT_SECRET"):
        DirectProvidersConfig(whoop_client_id="x")
    with pytest.raises(ImproperlyConfigured, match="LIBRE_VERSION"):
        DirectProvidersConfig(libre_version="latest")


def test_rotate_credentials_reencrypts_with_the_new_first_key(settings) -> None:  # type: ignore[no-untyped-def]
    from django.core.management import call_command

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [old]
    connection = Connection.objects.create(patient=Patient.objects.create(), provider=Provider.DEXCOM)
    ProviderCredential.objects.create(connection=connection, refresh_token="rt-value")
    settings.FIELD_ENCRYPTION_KEYS = [new, old]
    call_command("rotate_credentials", stdout=__import__("io").StringIO())
    settings.FIELD_ENCRYPTION_KEYS = [new]
    assert ProviderCredential.objects.get(connection=connection).refresh_token == "rt-value"
