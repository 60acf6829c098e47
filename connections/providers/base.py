"""The one HTTP layer every provider client uses: timeouts, retries, backoff with full jitter, Retry-After.

Retries live here and only here (per request); the sync job's per-user retry starts only once a request
has exhausted these. Only idempotent requests are retried unless the caller says otherwise.
"""

from __future__ import annotations

import email.utils
import functools
import logging
import random
import re
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
import orjson

logger = logging.getLogger("loopsync.providers")

RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
# A Retry-After longer than this is not waited out inside one request; the request fails as rate limited
# and the job's own retry (or the next schedule) picks it up.
MAX_RETRY_AFTER_SECONDS = 120.0

_ID_SEGMENT = re.compile(
    r"/(?:[0-9a-fA-F]{8}-[0-9a-fA-F-]{27,}|[A-Za-z0-9_.@-]*\d[A-Za-z0-9_.@-]{5,})(?=/|$)"
)


def route_of(path: str) -> str:
    """A path with identifiers replaced, safe for logs and error messages (no user ids)."""
    return _ID_SEGMENT.sub("/{id}", path)


class ProviderError(Exception):
    """A provider call failed. Messages are scrubbed: a route, a status and a kind, never bodies or tokens."""

    retryable = False

    def __init__(self, provider: str, message: str, *, status: int | None = None) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.status = status


class ProviderAuthError(ProviderError):
    """401/403: the credentials are wrong or revoked; retrying cannot help."""


class ProviderNotFound(ProviderError):
    """404: the user (or resource) does not exist at the provider."""


class ProviderRequestError(ProviderError):
    """Another 4xx: our request is wrong; retrying cannot help."""


class ProviderRateLimited(ProviderError):
    retryable = True

    def __init__(
        self, provider: str, message: str, *, status: int | None = 429, retry_after: float | None = None
    ):
        super().__init__(provider, message, status=status)
        self.retry_after = retry_after


class ProviderUnavailable(ProviderError):
    """5xx, timeouts and network failures that outlasted the request-level retries."""

    retryable = True


class ProviderTimeout(ProviderUnavailable):
    """The provider did not answer in PROVIDER_HTTP_TIMEOUT, through every request-level retry."""


class ProviderCircuitOpen(ProviderUnavailable):
    """Not sent: the provider's circuit breaker is open (most recent requests failed). Not retried: the run
    moves on at once, and a probe after the cool-down tells when the provider is back."""

    retryable = False


class RequestGate(Protocol):
    """What every request passes before and after it is sent (connections.budgets.ProviderGate: the shared
    budgets and the circuit breaker)."""

    def before(self, route: str, account: str | None = None) -> None: ...

    def after(self, outcome: str) -> None: ...


class ProviderBadResponse(ProviderError):
    """A 2xx whose body is not the JSON document the API promises."""

    retryable = True


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    base: float = 0.5
    cap: float = 30.0

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `attempt` (1-based): capped exponential, full jitter.

        A server's Retry-After is a floor: waiting less only earns another 429.
        """
        jittered = random.uniform(0.0, min(self.cap, self.base * (2 ** (attempt - 1))))
        if retry_after is not None:
            return max(retry_after, jittered)
        return jittered


def parse_retry_after(headers: Mapping[str, str], now: Callable[[], datetime] | None = None) -> float | None:
    """Retry-After as delta-seconds or an HTTP-date (RFC 9110), or X-RateLimit-Reset seconds; None if absent."""
    raw = headers.get("retry-after")
    if raw:
        raw = raw.strip()
        try:
            return max(0.0, float(raw))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(raw)
            except (TypeError, ValueError):
                return None
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            current = now() if now else datetime.now(UTC)
            return max(0.0, (when - current).total_seconds())
    reset = headers.get("x-ratelimit-reset")
    if reset:
        try:
            return max(0.0, float(reset))
        except ValueError:
            return None
    return None


@functools.cache
def _shared_ssl_context() -> ssl.SSLContext:
    return ssl.create_default_context()


class ProviderHTTP:
    """An httpx client per thread for one provider, with the retry rules above.

    One client per thread rather than one shared pool: httpcore's pool serialises every request and every
    response close on one lock, and with a dozen fetch threads that lock, not the network, was the sync's
    bottleneck. Each thread keeps its own keep-alive connection.
    """

    def __init__(
        self,
        provider: str,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_connections: int = 2,
        verify: ssl.SSLContext | bool | None = None,
        gate: RequestGate | None = None,
    ) -> None:
        self.provider = provider
        self.gate = gate
        self.policy = policy or RetryPolicy()
        self._sleep = sleep
        self._client_options: dict[str, Any] = {
            "base_url": base_url.rstrip("/"),
            "headers": {"accept": "application/json", "user-agent": "loopsync/0.1", **(headers or {})},
            "timeout": httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            # Per thread: one connection in use, one spare for a request made while a response streams.
            "limits": httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            "follow_redirects": False,
            # One CA bundle for every client: loading it costs ~60 ms, and clients are made per thread.
            "verify": _shared_ssl_context() if verify is None else verify,
        }
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        self._clients_lock = threading.Lock()

    @property
    def _client(self) -> httpx.Client:
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = httpx.Client(**self._client_options)
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def close(self) -> None:
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()
        self._local = threading.local()

    def __enter__(self) -> ProviderHTTP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_bytes(
        self, path: str, params: Mapping[str, Any] | None = None, *, route: str | None = None
    ) -> bytes:
        return self.request("GET", path, params=params, route=route).content

    def get_json(
        self, path: str, params: Mapping[str, Any] | None = None, *, route: str | None = None
    ) -> Any:
        return self.decode(route or route_of(path), self.get_bytes(path, params, route=route))

    def decode(self, route: str, body: bytes) -> Any:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ProviderBadResponse(
                self.provider, f"{route} answered with a body that is not JSON"
            ) from None

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        route: str | None = None,
        accept: frozenset[int] = frozenset(),
        account: str | None = None,
    ) -> httpx.Response:
        """Send a request, retrying transient failures; return a 2xx response or raise a ProviderError.

        `route` is the path template used in logs and errors (no user ids); derived from `path` if omitted.
        `accept`: error statuses returned to the caller instead of raised (an OAuth token endpoint's 400/401,
        whose `error` code decides between "refresh lost a race" and "refresh token dead").
        `account`: the provider account the request spends (a per-account budget, e.g. LibreLinkUp's).
        Every attempt passes the gate first (shared budgets, circuit breaker) and reports its outcome to it.
        """
        retry = method in ("GET", "HEAD", "PUT", "DELETE") if idempotent is None else idempotent
        route = route or route_of(path)
        attempts = self.policy.attempts if retry else 1
        for attempt in range(1, attempts + 1):
            last = attempt == attempts
            if self.gate is not None:
                self.gate.before(f"{method} {route}", account)
            try:
                response = self._client.request(
                    method, path, params=params, json=json, data=data, headers=headers
                )
            except httpx.TimeoutException:
                self._report("failure")
                error: ProviderError = ProviderTimeout(self.provider, f"{method} {route} timed out")
                retry_after = None
            except httpx.TransportError as exc:
                self._report("failure")
                error = ProviderUnavailable(self.provider, f"{method} {route} failed: {type(exc).__name__}")
                retry_after = None
            else:
                status = response.status_code
                self._report(
                    "neutral" if status == 429 else "failure" if status >= 500 or status == 408 else "ok"
                )
                if status < 300 or status in accept:
                    return response
                retry_after = parse_retry_after(response.headers)
                error = self._error_for(method, route, status, retry_after)
                if not error.retryable:
                    raise error
                if retry_after is not None and retry_after > MAX_RETRY_AFTER_SECONDS:
                    raise error
            if last or not retry:
                raise error
            delay = self.policy.backoff(attempt, retry_after)
            logger.info(
                "provider request retry",
                extra={
                    "provider": self.provider,
                    "route": route,
                    "attempt": attempt,
                    "delay_s": round(delay, 3),
                    "reason": error.status or "network",
                },
            )
            self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _report(self, outcome: str) -> None:
        if self.gate is not None:
            self.gate.after(outcome)

    def _error_for(self, method: str, route: str, status: int, retry_after: float | None) -> ProviderError:
        message = f"{method} {route} answered {status}"
        if status in (401, 403):
            return ProviderAuthError(self.provider, f"{message} (credentials rejected)", status=status)
        if status == 404:
            return ProviderNotFound(self.provider, message, status=status)
        if status == 429:
            return ProviderRateLimited(self.provider, f"{message} (rate limited)", retry_after=retry_after)
        if status in RETRYABLE_STATUSES or status >= 500:
            return ProviderUnavailable(self.provider, message, status=status)
        return ProviderRequestError(self.provider, message, status=status)
