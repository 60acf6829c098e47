"""Connecting a patient's WHOOP or Dexcom account (OAuth 2.0 authorization code) or LibreLinkUp login.

    flow = begin_oauth(patient, "whoop", redirect_uri)     # redirect the browser to flow.authorize_url,
                                                            # with flow.browser_key set as its cookie
    connection = complete_oauth("whoop", state, code, key)  # the callback: the cookie's key, exchange, store

The state is random (256 bits), bound to the patient and provider, single use and expiring
(OAUTH_STATE_TTL_SECONDS), and bound to the browser that started the flow: `begin_oauth` returns a browser key
that the start view sets as a cookie, and the callback is refused without it (RFC 6749 §10.12; neither WHOOP nor
Dexcom documents PKCE, so the cookie is the binding). It is claimed with one conditional UPDATE before the code is
exchanged, so a replayed callback can never connect twice, and the patient comes from the state row, never from
the callback's request.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlencode

from django.conf import settings
from django.core import signing
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from connections.backfill import start_backfill_on_commit
from connections.config import DirectProvidersConfig
from connections.gaps import record_reconnect_gap
from connections.models import (
    Connection,
    ConnectionStatus,
    OAuthState,
    Patient,
    Provider,
    ProviderCredential,
)
from connections.providers.libre.client import LibreClient
from connections.providers.oauth2 import OAuthClient, OAuthProvider
from connections.providers.registry import PROVIDERS

CONNECT_TOKEN_SALT = "loopsync.connections.connect"


class OAuthFlowError(ValueError):
    """The flow cannot continue (unknown or used state, provider mismatch, denial); the message is safe to show."""


def oauth_providers() -> list[str]:
    """The providers that connect through the authorization-code flow (the /connect/<key>/ routes)."""
    return [key for key, p in PROVIDERS.items() if issubclass(p, OAuthProvider)]


def _oauth_provider(provider: str, config: DirectProvidersConfig | None) -> OAuthProvider:
    registered = PROVIDERS.get(provider)
    if registered is None or not issubclass(registered, OAuthProvider):
        raise OAuthFlowError(f"{provider!r} does not connect through OAuth")
    return registered(config)


def oauth_client(provider: str, config: DirectProvidersConfig | None = None) -> OAuthClient:
    connecting = _oauth_provider(provider, config)
    try:
        return connecting.oauth_client()
    except ImproperlyConfigured as exc:
        raise OAuthFlowError(str(exc)) from None
    finally:
        connecting.close()


# --- Who is connecting -------------------------------------------------------------------------------------


def connect_token_for(patient: Patient) -> str:
    """A short-lived signed link parameter naming the patient (until Clerk sessions identify them)."""
    return signing.TimestampSigner(salt=CONNECT_TOKEN_SALT).sign(str(patient.pk))


def connect_link(patient: Patient, provider: str, base_url: str) -> str:
    """The signed link that starts connecting (or reconnecting) `provider` for `patient`, valid
    OAUTH_STATE_TTL_SECONDS: `manage.py connect_link` prints it, a revoked connection's admin page offers it."""
    if provider not in oauth_providers():
        raise OAuthFlowError(f"{provider!r} does not connect through OAuth")
    path = reverse("connect-start", args=[provider])
    return f"{base_url.rstrip('/')}{path}?{urlencode({'token': connect_token_for(patient)})}"


def patient_from_connect_token(token: str) -> Patient:
    """The patient a connect token names; OAuthFlowError when it is forged, expired or names nobody."""
    try:
        raw = signing.TimestampSigner(salt=CONNECT_TOKEN_SALT).unsign(
            token, max_age=settings.OAUTH_STATE_TTL_SECONDS
        )
    except signing.SignatureExpired:
        raise OAuthFlowError("the connect link has expired") from None
    except signing.BadSignature:
        raise OAuthFlowError("the connect link is not valid") from None
    patient = Patient.objects.filter(pk=int(raw)).first() if raw.isdigit() else None
    if patient is None:
        raise OAuthFlowError("the connect link is not valid")
    return patient


# --- The flow ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OAuthStart:
    """Where to send the browser, and the key that browser must keep (a cookie) to complete the flow."""

    authorize_url: str
    browser_key: str


def browser_cookie_name(provider: str) -> str:
    return f"loopsync_oauth_{provider}"


def _binding(browser_key: str) -> str:
    return hashlib.sha256(browser_key.encode()).hexdigest()


def begin_oauth(
    patient: Patient, provider: str, redirect_uri: str, config: DirectProvidersConfig | None = None
) -> OAuthStart:
    """Store a fresh state for this patient and this browser; the provider's authorize URL and the browser key."""
    client = oauth_client(provider, config)
    browser_key = secrets.token_urlsafe(32)
    try:
        now = timezone.now()
        state = OAuthState.objects.create(
            state=secrets.token_urlsafe(32),
            patient=patient,
            provider=provider,
            redirect_uri=redirect_uri,
            browser_binding=_binding(browser_key),
            created_at=now,
            expires_at=now + timedelta(seconds=settings.OAUTH_STATE_TTL_SECONDS),
        )
        return OAuthStart(client.authorize_url(redirect_uri, state.state), browser_key)
    finally:
        client.close()


def claim_state(provider: str, state: str, browser_key: str) -> OAuthState:
    """Use up a state exactly once, from the browser that started it; OAuthFlowError if it is unknown, used,
    expired, for another provider, or presented by another browser."""
    if not browser_key:
        raise OAuthFlowError("this authorization was started in another browser; start again")
    if "\x00" in state:
        # No state we issued has one, and PostgreSQL would refuse the lookup with an error, not a miss.
        raise OAuthFlowError("the authorization state is not valid; start again")
    now = timezone.now()
    claimed = OAuthState.objects.filter(
        state=state,
        provider=provider,
        browser_binding=_binding(browser_key),
        used_at__isnull=True,
        expires_at__gt=now,
    ).update(used_at=now)
    if claimed != 1:
        raise OAuthFlowError(
            "the authorization state is unknown, expired, already used or from another browser; start again"
        )
    return OAuthState.objects.select_related("patient").get(state=state)


def complete_oauth(
    provider: str, state: str, code: str, browser_key: str, config: DirectProvidersConfig | None = None
) -> Connection:
    """The callback: claim the state, exchange the code, create or update the connection and its credential."""
    if not state or not code:
        raise OAuthFlowError("the callback needs both code and state")
    flow = claim_state(provider, state, browser_key)
    connecting = _oauth_provider(provider, config)
    client = oauth_client(provider, config)
    try:
        tokens = client.exchange_code(code, flow.redirect_uri)
        external_id = connecting.external_user_id(client, tokens)
    finally:
        client.close()
        connecting.close()
    with transaction.atomic():
        connection, created = Connection.objects.select_for_update().get_or_create(
            patient=flow.patient, provider=provider
        )
        credential, _ = ProviderCredential.objects.select_for_update().get_or_create(connection=connection)
        credential.access_token = tokens.access_token
        credential.refresh_token = tokens.refresh_token
        credential.expires_at = tokens.expires_at
        credential.scope = tokens.scope[:255]
        credential.external_user_id = external_id[:128]
        credential.refreshed_at = timezone.now()
        credential.save()
        if created:
            start_backfill_on_commit(connection)
        else:
            _reconnect_gap(connection)
        _reactivate(connection)
    return connection


def connect_libre(
    patient: Patient, email: str, password: str, config: DirectProvidersConfig | None = None
) -> Connection:
    """Connect LibreLinkUp: log in (following the region redirect), find the followed patient, store it all."""
    config = config or settings.DIRECT_PROVIDERS
    with LibreClient(config) as client:
        session = client.login(email, password)
        followed = client.connections(session)
    if not followed or not followed[0].get("patientId"):
        raise OAuthFlowError("this LibreLinkUp account follows nobody: accept an invitation in the app first")
    with transaction.atomic():
        connection, created = Connection.objects.select_for_update().get_or_create(
            patient=patient, provider=Provider.LIBRE
        )
        credential, _ = ProviderCredential.objects.select_for_update().get_or_create(connection=connection)
        credential.libre_email = email
        credential.libre_password = password
        credential.access_token = session.token
        credential.refresh_token = ""
        credential.expires_at = session.expires_at
        credential.region = session.region[:16]
        credential.external_user_id = session.user_id[:128]
        credential.libre_patient_id = str(followed[0]["patientId"])[:64]
        credential.refreshed_at = timezone.now()
        credential.save()
        if created:
            start_backfill_on_commit(connection)
        else:
            _reconnect_gap(connection)
        _reactivate(connection)
    return connection


def _reconnect_gap(connection: Connection) -> None:
    """A reconnect after a pause: the pause is recorded as a gap and its repair queued (connections/gaps.py)."""
    gap = record_reconnect_gap(connection)
    if gap is not None:
        from django_q.tasks import async_task

        gap_id = gap.pk
        transaction.on_commit(lambda: async_task("connections.tasks.repair_gap_task", gap_id))


def _reactivate(connection: Connection) -> None:
    """A reconnect revives an inactive connection; the cursor stays, so nothing is fetched twice."""
    if connection.status != ConnectionStatus.ACTIVE or connection.status_reason:
        connection.status = ConnectionStatus.ACTIVE
        connection.status_reason = ""
        connection.failure_streak = 0
        connection.save(update_fields=["status", "status_reason", "failure_streak", "updated_at"])


def purge_expired_states() -> int:
    """Delete states that can no longer be used (called opportunistically by begin)."""
    deleted, _ = OAuthState.objects.filter(expires_at__lt=timezone.now() - timedelta(days=1)).delete()
    return deleted
