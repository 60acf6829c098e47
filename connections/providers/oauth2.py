"""The OAuth 2.0 token endpoint calls WHOOP and Dexcom share (RFC 6749 §4.1.3 and §6, form-encoded), and the
SyncProvider base of the providers that connect that way.

Token requests are never retried by the HTTP layer: a refresh whose response was lost may already have rotated
the refresh token, and re-sending it would spend a dead token (cloudflare/mcp PR #136). The caller (tokens.py)
decides what a failure means.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Self
from urllib.parse import urlencode

from django.core.exceptions import ImproperlyConfigured

from connections.providers.base import ProviderBadResponse, ProviderHTTP
from connections.providers.common import http_for
from connections.providers.contract import ConnectMethod, CredentialsRefused, SyncProvider

if TYPE_CHECKING:
    from connections.models import Connection, Patient, ProviderCredential
    from connections.tokens import Refresher
    from sandbox.server import SandboxServer

# Statuses the token endpoint uses for OAuth errors (RFC 6749 §5.2); their body's `error` is read.
OAUTH_ERROR_STATUSES = frozenset({400, 401})


class OAuthGrantError(CredentialsRefused):
    """The token endpoint refused the grant. `error` is the RFC 6749 code (invalid_grant, invalid_client...)."""

    def __init__(self, provider: str, error: str, *, status: int | None) -> None:
        super().__init__(provider, f"token endpoint refused the grant ({error})", status=status)
        self.error = error

    @property
    def dead(self) -> bool:
        # Only invalid_grant says the refresh token is spent, expired or revoked (RFC 6749 §5.2); anything else
        # (invalid_request, invalid_client, an unreadable body) may be ours or passing.
        return self.error == "invalid_grant"


@dataclass(frozen=True)
class TokenSet:
    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_at: datetime
    scope: str = ""


def request_tokens(http: ProviderHTTP, path: str, form: dict[str, str], *, now: datetime) -> TokenSet:
    response = http.request(
        "POST", path, data=form, idempotent=False, accept=OAUTH_ERROR_STATUSES, route=path
    )
    body: Any
    try:
        body = http.decode(path, response.content)
    except ProviderBadResponse:
        if response.status_code in OAUTH_ERROR_STATUSES:
            # A non-conformant error body (a proxy's page, a provider bug) says nothing definite about the grant.
            raise OAuthGrantError(http.provider, "unreadable_error", status=response.status_code) from None
        raise
    if response.status_code in OAUTH_ERROR_STATUSES:
        error = body.get("error") if isinstance(body, dict) else None
        raise OAuthGrantError(
            http.provider, str(error or "unreadable_error")[:40], status=response.status_code
        )
    if not isinstance(body, dict) or not body.get("access_token"):
        raise ProviderBadResponse(http.provider, f"POST {path} answered without an access_token")
    try:
        expires_in = int(body.get("expires_in") or 3600)
    except (TypeError, ValueError):
        expires_in = 3600
    return TokenSet(
        access_token=str(body["access_token"]),
        refresh_token=str(body.get("refresh_token") or ""),
        expires_at=now + timedelta(seconds=expires_in),
        scope=str(body.get("scope") or ""),
    )


class OAuthClient:
    """The authorization-code client WHOOP and Dexcom share: authorize URL, code exchange, refresh.

    Subclasses name their provider, paths and scopes, and add their data calls on `self.http`.
    """

    provider: str
    authorize_path: str
    token_path: str
    scope: str
    # Extra form fields some servers want on a refresh (WHOOP: scope=offline to get a new refresh token).
    refresh_extra: dict[str, str] = {}

    def __init__(self, base_url: str, client_id: str, client_secret: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self.client_secret = client_secret
        self.http = http_for(self.provider, self.base_url)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def authorize_url(self, redirect_uri: str, state: str) -> str:
        query = urlencode(
            {
                "client_id": self.client_id,
                "redirect_uri": redirect_uri,
                "response_type": "code",
                "scope": self.scope,
                "state": state,
            }
        )
        return f"{self.base_url}{self.authorize_path}?{query}"

    def exchange_code(self, code: str, redirect_uri: str) -> TokenSet:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "client_id": self.client_id,
            "client_secret": self.client_secret,
        }
        return request_tokens(self.http, self.token_path, form, now=datetime.now(UTC))

    def refresh(self, refresh_token: str) -> TokenSet:
        form = {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            **self.refresh_extra,
        }
        return request_tokens(self.http, self.token_path, form, now=datetime.now(UTC))


class OAuthProvider(SyncProvider):
    """A provider patients connect through the authorization-code flow (/connect/<key>/...), whose access
    tokens are refreshed with a refresh token. Its settings carry `<key>_client_id` and the client's own."""

    connect = ConnectMethod.OAUTH
    client_class: ClassVar[type[OAuthClient]]

    def __init__(self, config: Any = None, *, concurrency: int = 1) -> None:
        super().__init__(config, concurrency=concurrency)
        # One client for the whole job run: its connection pool is thread-safe and shared by the workers.
        self.client = self.client_class.from_config(self.config)  # type: ignore[attr-defined]

    def close(self) -> None:
        self.client.close()

    def oauth_client(self) -> OAuthClient:
        """A client for the connect flow; ImproperlyConfigured when the provider's OAuth app is not set."""
        if not getattr(self.config, f"{self.key}_client_id", ""):
            raise ImproperlyConfigured(f"{self.label} is not configured ({self.key.upper()}_CLIENT_ID)")
        return self.client_class.from_config(self.config)  # type: ignore[attr-defined,no-any-return]

    def external_user_id(self, client: OAuthClient, tokens: TokenSet) -> str:
        """The provider's id of the account that just connected."""
        raise NotImplementedError

    def refresher(self) -> Refresher:
        client = self.client

        def refresh(credential: ProviderCredential) -> TokenSet:
            if not credential.refresh_token:
                raise OAuthGrantError(client.provider, "invalid_grant", status=None)
            return client.refresh(credential.refresh_token)

        return refresh

    def connect_sandbox_user(self, sandbox: SandboxServer, index: int, patient: Patient | None) -> Connection:
        from connections.sandbox_setup import connect_oauth_sandbox_user

        return connect_oauth_sandbox_user(self, sandbox, index, patient)
