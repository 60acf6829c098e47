"""An OAuth 2.0 authorization server shared by the WHOOP and Dexcom sandboxes.

Behaves as the reference (provider_apis.md §1.1, §2.1, §6) says the real ones do:
- The authorize page approves at once (no login form) and redirects to `redirect_uri?code=...&state=...`, so the
  whole flow runs offline. Which sandbox user approves: `sandbox_user` (1-based index) when given, else one
  derived from the state, so different patients connect different users.
- Codes are single use and live 10 minutes; the token exchange checks client credentials and the redirect_uri.
- Refresh tokens rotate: every refresh returns a new pair and kills the old refresh token at once; a second use
  of a spent refresh token is `400 {"error": "invalid_grant"}` (the race open-wearables #1433 describes).
- Access tokens expire after `access_ttl` (3600 s WHOOP, 7200 s Dexcom); a data call with an expired or unknown
  token is 401.

Test helpers: `refresh_calls` (how many refresh requests reached the token endpoint), `expire_access_tokens`,
`revoke_refresh_tokens`, `issue_tokens` (a pair without the web flow, for benchmarks).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sandbox.base import HTTPError, Request, Response, json_response

CODE_TTL = timedelta(minutes=10)


@dataclass
class _Code:
    user: int
    redirect_uri: str
    expires_at: datetime
    used: bool = False


@dataclass
class _Access:
    user: int
    expires_at: datetime


def _oauth_error(status: int, error: str, description: str) -> HTTPError:
    exc = HTTPError(status, description)
    exc.body = {"error": error, "error_description": description}  # type: ignore[attr-defined]
    return exc


class OAuthServer:
    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        access_ttl: int,
        users: int,
        required_scope: str,
        min_state_length: int = 0,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.access_ttl = access_ttl
        self.users = users
        self.required_scope = required_scope
        self.min_state_length = min_state_length
        self._lock = threading.Lock()
        self._codes: dict[str, _Code] = {}
        self._access: dict[str, _Access] = {}
        self._refresh: dict[str, int] = {}  # live refresh tokens -> user
        self._spent: dict[str, int] = {}  # rotated or revoked refresh tokens -> user
        self._refresh_calls: dict[int, int] = {}
        self.refresh_calls_total = 0

    # ------------------------------------------------------------------------------ test helpers

    def refresh_calls(self, user: int | None = None) -> int:
        """Refresh requests that reached the token endpoint (accepted or not), for one user or all."""
        with self._lock:
            if user is None:
                return self.refresh_calls_total
            return self._refresh_calls.get(user, 0)

    def expire_access_tokens(self, user: int | None = None) -> int:
        """Make every access token (of one user) expired now; returns how many."""
        past = datetime(2000, 1, 1, tzinfo=UTC)
        with self._lock:
            hit = [t for t, a in self._access.items() if user is None or a.user == user]
            for token in hit:
                self._access[token].expires_at = past
        return len(hit)

    def revoke_refresh_tokens(self, user: int) -> int:
        """The user revoked our access in the provider's app: every refresh token of theirs dies."""
        with self._lock:
            dead = [t for t, u in self._refresh.items() if u == user]
            for token in dead:
                self._spent[token] = self._refresh.pop(token)
        return len(dead)

    def issue_tokens(self, user: int, now: datetime | None = None) -> dict[str, object]:
        """A fresh token pair for `user`, as a code exchange would return (benchmarks skip the web flow)."""
        with self._lock:
            return self._issue(user, now or datetime.now(UTC))

    def user_for_access_token(self, token: str) -> int | None:
        with self._lock:
            grant = self._access.get(token)
            return grant.user if grant else None

    def reset(self) -> None:
        with self._lock:
            self._refresh_calls.clear()
            self.refresh_calls_total = 0

    # ------------------------------------------------------------------------------ endpoints

    def authorize(self, request: Request) -> Response:
        q = request.query
        if q.get("client_id") != self.client_id:
            return json_response(400, {"error": "invalid_client", "error_description": "unknown client_id"})
        redirect_uri = q.get("redirect_uri", "")
        if not redirect_uri.startswith(("http://", "https://", "whoop://")):
            return json_response(400, {"error": "invalid_request", "error_description": "redirect_uri"})
        state = q.get("state", "")
        if len(state) < max(1, self.min_state_length):
            return json_response(
                400, {"error": "invalid_state", "error_description": "state is missing or too short"}
            )
        if q.get("response_type") != "code":
            return self._redirect(redirect_uri, {"error": "unsupported_response_type", "state": state})
        scopes = set(q.get("scope", "").split())
        if self.required_scope not in scopes:
            # Without the offline scope no refresh token is issued: refuse, so a client bug shows at once.
            return self._redirect(redirect_uri, {"error": "invalid_scope", "state": state})
        user = self._chosen_user(q.get("sandbox_user"), state)
        code = secrets.token_urlsafe(24)
        with self._lock:
            self._codes[code] = _Code(user, redirect_uri, request.now + CODE_TTL)
        return self._redirect(redirect_uri, {"code": code, "scope": q.get("scope", ""), "state": state})

    def token(self, request: Request) -> Response:
        form = dict(parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True))
        try:
            if form.get("client_id") != self.client_id or not secrets.compare_digest(
                form.get("client_secret", ""), self.client_secret
            ):
                raise _oauth_error(401, "invalid_client", "Client authentication failed.")
            grant = form.get("grant_type")
            if grant == "authorization_code":
                payload = self._exchange(form, request.now)
            elif grant == "refresh_token":
                payload = self._refresh_grant(form, request.now)
            else:
                raise _oauth_error(400, "unsupported_grant_type", "grant_type is not supported")
        except HTTPError as exc:
            return json_response(exc.status, exc.body)  # type: ignore[attr-defined]
        return json_response(200, payload, [("Cache-Control", "no-store")])

    def authenticate(self, request: Request) -> int:
        """The user a Bearer token belongs to; 401 when it is missing, unknown or expired."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPError(401, "Authorization header is missing")
        with self._lock:
            grant = self._access.get(token.strip())
        if grant is None or grant.expires_at <= request.now:
            raise HTTPError(401, "Invalid authorization")
        return grant.user

    # ------------------------------------------------------------------------------ internals

    def _chosen_user(self, raw: str | None, state: str) -> int:
        if raw:
            try:
                index = int(raw)
            except ValueError:
                index = 0
            if 1 <= index <= self.users:
                return index
        digest = hashlib.sha256(state.encode()).digest()
        return int.from_bytes(digest[:4], "big") % self.users + 1

    @staticmethod
    def _redirect(redirect_uri: str, params: dict[str, str]) -> Response:
        parts = urlsplit(redirect_uri)
        query = parts.query + ("&" if parts.query else "") + urlencode(params)
        location = urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))
        return Response(302, b"", [("Location", location)], content_type="text/plain")

    def _exchange(self, form: dict[str, str], now: datetime) -> dict[str, object]:
        with self._lock:
            code = self._codes.get(form.get("code", ""))
            if code is None or code.used or code.expires_at <= now:
                raise _oauth_error(400, "invalid_grant", "The authorization code is invalid or expired.")
            if code.redirect_uri != form.get("redirect_uri"):
                raise _oauth_error(400, "invalid_grant", "redirect_uri does not match the authorize request.")
            code.used = True
            return self._issue(code.user, now)

    def _refresh_grant(self, form: dict[str, str], now: datetime) -> dict[str, object]:
        with self._lock:
            token = form.get("refresh_token", "")
            user = self._refresh.pop(token, None)  # rotation: the old token dies at once
            if user is not None:
                self._spent[token] = user
            known_user = user if user is not None else self._spent.get(token, 0)
            self._refresh_calls[known_user] = self._refresh_calls.get(known_user, 0) + 1
            self.refresh_calls_total += 1
            if user is None:
                raise _oauth_error(400, "invalid_grant", "The refresh token is invalid, expired or revoked.")
            return self._issue(user, now)

    def _issue(self, user: int, now: datetime) -> dict[str, object]:
        access, refresh = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        self._access[access] = _Access(user, now + timedelta(seconds=self.access_ttl))
        self._refresh[refresh] = user
        self._refresh_calls.setdefault(user, 0)
        return {
            "access_token": access,
            "expires_in": self.access_ttl,
            "refresh_token": refresh,
            "scope": self.required_scope,
            "token_type": "bearer",
        }
