"""Shared provider budgets and circuit breakers: the gate every provider request passes (providers/base.py).

Budgets. A provider's documented limit (WHOOP 100 requests a minute and 10,000 a day per app, Dexcom 60,000 an
hour per app, LibreLinkUp's per-account polling limit) is a token bucket row in PostgreSQL
(`provider_budgets`), claimed by ONE statement: the bucket rows locked in key order, refilled from the
database clock, and decremented only when every bucket of the request has a token (UPDATE … RETURNING in a
CTE). The statement runs in autocommit on a connection of its own, so the row lock lasts one statement even
when the request is made inside a transaction (a token refresh under the credential's row lock), and every
worker on every machine sees the same count on the same clock. A bucket keeps under the provider's limit
over any window of its length: burst (`capacity`) + refill (`rate` × window) ≤ limit − 1.

Breakers. One row per provider (`provider_breakers`): each request's outcome is counted in a window; when
most requests of the window failed (5xx, timeouts, network errors) the breaker opens, and requests fail at
once (`ProviderCircuitOpen`, not retried) until the cool-down has passed; then one request is let through as a
probe: it closes the breaker or opens it again.

Logins. `guard_login` keeps at most PROVIDER_LOGIN_GUARD["attempts"] logins per account not known to have
succeeded within its interval (LibreLinkUp locks an account after 3 failed logins in 60 s): a login beyond
that is refused with the wait (ProviderRateLimited) before it is sent.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, InterfaceError, OperationalError
from django.db import connections as db_connections
from django.db.backends.base.base import BaseDatabaseWrapper

from connections.providers.base import ProviderCircuitOpen, ProviderRateLimited

logger = logging.getLogger("loopsync.providers")

# A wait longer than this is not slept inside a request: the request fails as rate limited with the wait,
# and the engine skips the connection for this run (a day budget spent, an account's login guard).
MAX_BUDGET_WAIT_SECONDS = 120.0
SUCCESS_FLUSH_SECONDS = 1.0


@dataclass(frozen=True)
class Limit:
    limit: int
    window: float
    scope: str  # "app" | "account"

    @property
    def capacity(self) -> float:
        """The burst: a fiftieth of the limit (at least one request): small, so the refill gets the rest."""
        return float(max(1, self.limit // 50))

    @property
    def margin(self) -> float:
        """Requests left unused per window: a request granted here reaches the provider a little later, and a
        busy worker's requests can arrive bunched. A fiftieth of the window's worth (at least one) absorbs
        arrival jitter of a fiftieth of the window (1.2 s of WHOOP's minute)."""
        return float(max(1, self.limit // 50))

    @property
    def rate(self) -> float:
        """Tokens a second: with the burst and the margin, never more than the limit in any window of its length."""
        return max(self.limit - self.capacity - self.margin, 1.0) / self.window


def limits_for(provider: str) -> list[Limit]:
    return [
        Limit(int(spec["limit"]), float(spec["window"]), str(spec.get("scope", "app")))
        for spec in settings.PROVIDER_BUDGETS.get(provider, ())
    ]


# --- The database connection the gate uses -----------------------------------------------------------------

_local = threading.local()
# Weak: a thread's connection lives as long as the thread (its _ThreadConnection closes it when the thread's
# locals are cleared); this set only lets close_connections() reach the ones still open.
_opened: weakref.WeakSet[BaseDatabaseWrapper] = weakref.WeakSet()
_opened_lock = threading.Lock()


class _ThreadConnection:
    """Holds a thread's gate connection and closes it when the thread ends. Pool threads come and go (the
    Junction provider's fetch pool lives one job run): without this each would leave an idle connection open
    until the process exits, and a worker running many backfills exhausts max_connections."""

    def __init__(self, wrapper: BaseDatabaseWrapper) -> None:
        self.wrapper = wrapper

    def __del__(self) -> None:
        try:
            self.wrapper.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown or a connection already gone
            pass


def _db() -> BaseDatabaseWrapper:
    """This thread's own connection to the default database, in autocommit (see the module docstring)."""
    holder: _ThreadConnection | None = getattr(_local, "holder", None)
    if holder is None:
        wrapper = db_connections.create_connection(DEFAULT_DB_ALIAS)
        wrapper.inc_thread_sharing()  # closed from another thread: close_connections(), or the holder's GC
        holder = _ThreadConnection(wrapper)
        _local.holder = holder
        with _opened_lock:
            _opened.add(wrapper)
    return holder.wrapper


def close_thread_connection() -> None:
    holder: _ThreadConnection | None = getattr(_local, "holder", None)
    if holder is not None:
        _local.holder = None
        with _opened_lock:
            _opened.discard(holder.wrapper)
        holder.wrapper.close()


def close_connections() -> None:
    """Close every gate connection of this process (tests, before the test database is dropped)."""
    with _opened_lock:
        opened = list(_opened)
        _opened.clear()
    for wrapper in opened:
        wrapper.close()
    _local.holder = None


def _execute(sql: str, params: Any) -> list[tuple[Any, ...]]:
    for attempt in (1, 2):
        try:
            with _db().cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.fetchall() if cursor.description else []
        except (OperationalError, InterfaceError):
            # The database restarted under a long-lived worker: one new connection, then the error stands.
            close_thread_connection()
            if attempt == 2:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


# --- Budgets and breaker: the gate --------------------------------------------------------------------------

_CLAIM_SQL = """
WITH spec AS (
    SELECT * FROM unnest(%(keys)s::text[], %(caps)s::float8[], %(rates)s::float8[]) AS s(key, capacity, rate)
),
brk AS (SELECT state FROM provider_breakers WHERE provider = %(provider)s),
gate AS (SELECT %(probe)s OR COALESCE((SELECT state FROM brk), 'closed') = 'closed' AS ok),
locked AS (
    SELECT b.key, s.capacity, s.rate, t.now,
           LEAST(s.capacity, b.tokens + s.rate * GREATEST(0, EXTRACT(EPOCH FROM t.now - b.refilled_at)))
               AS available
    FROM provider_budgets b
    JOIN spec s ON s.key = b.key
    CROSS JOIN LATERAL (SELECT clock_timestamp() AS now) t
    WHERE (SELECT ok FROM gate)
    ORDER BY b.key
    FOR UPDATE OF b
),
verdict AS (
    SELECT count(*) AS n,
           COALESCE(bool_and(available >= 1), true) AS ok,
           COALESCE(max(GREATEST(0, (1 - available) / rate)), 0) AS wait
    FROM locked
),
claimed AS (
    UPDATE provider_budgets b
    SET tokens = l.available - 1, refilled_at = GREATEST(b.refilled_at, l.now), capacity = l.capacity,
        rate = l.rate, granted = b.granted + 1
    FROM locked l, verdict v
    WHERE b.key = l.key AND v.ok AND v.n = %(expected)s
    RETURNING 1
)
SELECT (SELECT ok FROM gate), v.n, v.ok, v.wait,
       (SELECT state FROM brk),
       (SELECT (state = 'open' AND open_until <= clock_timestamp())
               OR (state = 'half_open' AND probe_started_at < clock_timestamp() - %(probe_timeout)s * interval '1 second')
        FROM provider_breakers WHERE provider = %(provider)s)
FROM verdict v
"""

_ENSURE_SQL = """
INSERT INTO provider_budgets (key, provider, capacity, rate, "limit", window_seconds, tokens, refilled_at, granted)
SELECT k, %(provider)s, c, r, l, w, c, clock_timestamp(), 0
FROM unnest(%(keys)s::text[], %(caps)s::float8[], %(rates)s::float8[], %(limits)s::int[], %(windows)s::float8[])
     AS s(k, c, r, l, w)
ON CONFLICT (key) DO UPDATE SET "limit" = EXCLUDED."limit", window_seconds = EXCLUDED.window_seconds
"""

_CLAIM_PROBE_SQL = """
UPDATE provider_breakers SET state = 'half_open', probe_started_at = clock_timestamp()
WHERE provider = %(provider)s
  AND ((state = 'open' AND open_until <= clock_timestamp())
       OR (state = 'half_open' AND probe_started_at < clock_timestamp() - %(probe_timeout)s * interval '1 second'))
RETURNING 1
"""

# One statement per request outcome: the window restarts when it is over; the breaker opens when, with at
# least `min_requests` in the window, more than `failure_ratio` of them failed.
_RECORD_SQL = """
INSERT INTO provider_breakers AS b (provider, state, window_started_at, successes, failures, times_opened)
VALUES (%(provider)s, 'closed', clock_timestamp(), %(ok)s, %(failed)s, 0)
ON CONFLICT (provider) DO UPDATE SET
    window_started_at = CASE WHEN b.window_started_at < clock_timestamp() - %(window)s * interval '1 second'
                             THEN clock_timestamp() ELSE b.window_started_at END,
    successes = CASE WHEN b.window_started_at < clock_timestamp() - %(window)s * interval '1 second'
                     THEN 0 ELSE b.successes END + %(ok)s,
    failures = CASE WHEN b.window_started_at < clock_timestamp() - %(window)s * interval '1 second'
                    THEN 0 ELSE b.failures END + %(failed)s
RETURNING state, successes, failures
"""

_OPEN_SQL = """
UPDATE provider_breakers
SET state = 'open', opened_at = clock_timestamp(), probe_started_at = NULL,
    open_until = clock_timestamp() + %(cooldown)s * interval '1 second', times_opened = times_opened + 1
WHERE provider = %(provider)s AND (state = 'closed' OR %(probe)s)
"""

_CLOSE_SQL = """
UPDATE provider_breakers
SET state = 'closed', open_until = NULL, probe_started_at = NULL, window_started_at = clock_timestamp(),
    successes = 0, failures = 0
WHERE provider = %(provider)s
"""


def _hash(value: str) -> str:
    return hashlib.sha256(value.strip().lower().encode()).hexdigest()[:24]


class ProviderGate:
    """The budgets and breaker of one provider's API host, for ProviderHTTP (one per client, thread-safe)."""

    def __init__(self, provider: str, base_url: str) -> None:
        self.provider = provider
        self.app = urlsplit(base_url).netloc or base_url
        self._local = threading.local()
        self._lock = threading.Lock()
        self._pending_ok = 0
        self._flushed_at = -SUCCESS_FLUSH_SECONDS  # perf_counter (time-machine leaves it alone)

    def _buckets(self, account: str | None) -> list[tuple[str, Limit]]:
        buckets = []
        for limit in limits_for(self.provider):
            suffix = f"{limit.limit}/{limit.window:g}s"
            if limit.scope == "account":
                if not account:
                    continue  # a request of no account (a login) spends none of an account's budget
                buckets.append((f"{self.provider}:account:{_hash(account)}:{suffix}", limit))
            else:
                buckets.append((f"{self.provider}@{self.app}:{suffix}", limit))
        return sorted(buckets)

    def before(self, route: str, account: str | None = None) -> None:
        """Wait for a token of every bucket of the request; raise ProviderCircuitOpen while the breaker is open,
        ProviderRateLimited when the wait is longer than a worker should sleep."""
        config = settings.PROVIDER_BREAKER
        buckets = self._buckets(account)
        keys = [k for k, _ in buckets]
        params = {
            "provider": self.provider,
            "keys": keys,
            "caps": [b.capacity for _, b in buckets],
            "rates": [b.rate for _, b in buckets],
            "expected": len(keys),
            "probe": False,
            "probe_timeout": float(config["probe_timeout"]),
        }
        self._local.probe = False
        while True:
            gate_ok, found, ok, wait, state, probe_due = _execute(_CLAIM_SQL, params)[0]
            if not gate_ok:
                if probe_due and _execute(_CLAIM_PROBE_SQL, params):
                    params["probe"] = True
                    self._local.probe = True
                    logger.info("provider breaker probe", extra={"provider": self.provider})
                    continue
                raise ProviderCircuitOpen(
                    self.provider,
                    f"{route}: not sent, the circuit breaker is {state} after repeated failures",
                )
            if found < len(keys):
                self._ensure(buckets)
                continue
            if ok:
                return
            if wait > MAX_BUDGET_WAIT_SECONDS:
                raise ProviderRateLimited(
                    self.provider,
                    f"{route}: not sent, the shared budget is spent for {round(wait)} s",
                    retry_after=float(wait),
                )
            # A little jitter so the waiting workers do not all come back in the same millisecond.
            time.sleep(float(wait) + random.uniform(0, 0.01))

    def _ensure(self, buckets: list[tuple[str, Limit]]) -> None:
        _execute(
            _ENSURE_SQL,
            {
                "provider": self.provider,
                "keys": [k for k, _ in buckets],
                "caps": [b.capacity for _, b in buckets],
                "rates": [b.rate for _, b in buckets],
                "limits": [b.limit for _, b in buckets],
                "windows": [b.window for _, b in buckets],
            },
        )

    def after(self, outcome: str) -> None:
        """Count a request's outcome: "ok" (any answer but a 5xx or 429), "failure" (5xx, timeout, network),
        or "neutral" (429: the provider is alive, only busy)."""
        probe = getattr(self._local, "probe", False)
        self._local.probe = False
        config = settings.PROVIDER_BREAKER
        params = {"provider": self.provider, "cooldown": float(config["cooldown"]), "probe": probe}
        if probe and outcome != "neutral":
            if outcome == "ok":
                _execute(_CLOSE_SQL, params)
                logger.info("provider breaker closed", extra={"provider": self.provider})
            else:
                _execute(_OPEN_SQL, params)
            return
        if outcome == "neutral":
            return
        # Successes are counted in the row at most once a second (or with the next failure): a healthy
        # provider's requests cost the breaker no write each, and the ratio lags by a second at most.
        with self._lock:
            if outcome == "ok":
                self._pending_ok += 1
                if time.perf_counter() - self._flushed_at < SUCCESS_FLUSH_SECONDS:
                    return
            ok, self._pending_ok, self._flushed_at = self._pending_ok, 0, time.perf_counter()
        state, successes, failures = _execute(
            _RECORD_SQL,
            {
                "provider": self.provider,
                "ok": ok,
                "failed": int(outcome == "failure"),
                "window": float(config["window"]),
            },
        )[0]
        total = successes + failures
        if (
            state == "closed"
            and outcome == "failure"
            and total >= int(config["min_requests"])
            and failures > float(config["failure_ratio"]) * total
        ):
            _execute(_OPEN_SQL, params)
            logger.warning(
                "provider breaker opened",
                extra={"provider": self.provider, "failures": failures, "requests": total},
            )

    @contextmanager
    def guard_login(self, login_name: str) -> Iterator[None]:
        """Reserve one login attempt of the account; a login that raises keeps its reservation (a failure
        counts towards the provider's lock-out), one that returns gives it back."""
        guard = settings.PROVIDER_LOGIN_GUARD
        key = f"{self.provider}:login:{_hash(login_name)}"
        params = {"key": key, "interval": float(guard["interval"]), "attempts": int(guard["attempts"])}
        _execute(_ENSURE_LOGIN_SQL, params)
        rows = _execute(_RESERVE_LOGIN_SQL, params)
        if not rows or rows[0][0] is None:
            wait = _execute(_LOGIN_WAIT_SQL, params)
            seconds = float(wait[0][0]) if wait and wait[0][0] is not None else float(guard["interval"])
            raise ProviderRateLimited(
                self.provider,
                f"login not sent: {guard['attempts']} logins of this account failed within "
                f"{guard['interval']} s; retry in {round(seconds) + 1} s",
                retry_after=seconds + 1,
            )
        reserved: datetime = rows[0][0]
        yield
        _execute(_RELEASE_LOGIN_SQL, {"key": key, "reserved": reserved})


_ENSURE_LOGIN_SQL = """
INSERT INTO provider_login_guards (key, attempts) VALUES (%(key)s, '{}') ON CONFLICT (key) DO NOTHING
"""

_RESERVE_LOGIN_SQL = """
UPDATE provider_login_guards g
SET attempts = ARRAY(SELECT a FROM unnest(g.attempts) a
                     WHERE a > clock_timestamp() - %(interval)s * interval '1 second') || clock_timestamp()
WHERE g.key = %(key)s
  AND cardinality(ARRAY(SELECT a FROM unnest(g.attempts) a
                        WHERE a > clock_timestamp() - %(interval)s * interval '1 second')) < %(attempts)s
RETURNING g.attempts[cardinality(g.attempts)]
"""

_LOGIN_WAIT_SQL = """
SELECT EXTRACT(EPOCH FROM min(a) + %(interval)s * interval '1 second' - clock_timestamp())
FROM provider_login_guards g, unnest(g.attempts) a
WHERE g.key = %(key)s AND a > clock_timestamp() - %(interval)s * interval '1 second'
"""

_RELEASE_LOGIN_SQL = """
UPDATE provider_login_guards SET attempts = array_remove(attempts, %(reserved)s) WHERE key = %(key)s
"""


# --- Reading them (job health page, tests) ------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetUse:
    key: str
    provider: str
    limit: int
    window_seconds: float
    capacity: float
    available: float
    granted: int

    @property
    def used_share(self) -> float:
        """How much of the burst is in use now (0 = idle, 1 = every request waits for the refill)."""
        return 0.0 if self.capacity <= 0 else max(0.0, min(1.0, 1 - self.available / self.capacity))


def budget_use() -> list[BudgetUse]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT key, provider, "limit", window_seconds, capacity,
                   LEAST(capacity, tokens + rate * GREATEST(0, EXTRACT(EPOCH FROM clock_timestamp() - refilled_at))),
                   granted
            FROM provider_budgets ORDER BY provider, key
            """
        )
        return [BudgetUse(*row) for row in cursor.fetchall()]


def reset_all() -> None:
    """Forget every bucket, breaker and login guard (tests: the state outlives a test's rolled-back rows)."""
    for table in ("provider_budgets", "provider_breakers", "provider_login_guards"):
        _execute(f"DELETE FROM {table}", None)  # noqa: S608 - fixed table names
