"""The shared provider HTTP layer: which failures are retried, how long it waits, what errors say."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from connections.providers.base import (
    ProviderAuthError,
    ProviderHTTP,
    ProviderNotFound,
    ProviderRateLimited,
    ProviderRequestError,
    ProviderUnavailable,
    RetryPolicy,
    parse_retry_after,
    route_of,
)
from sandbox import SandboxServer
from tests.conftest import SANDBOX_KEY


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def http(clean_sandbox: SandboxServer, sleeps: list[float]) -> ProviderHTTP:
    client = ProviderHTTP(
        "junction",
        clean_sandbox.junction_url,
        headers={"x-vital-api-key": SANDBOX_KEY},
        timeout=0.5,
        policy=RetryPolicy(attempts=4, base=0.01, cap=0.04),
        sleep=sleeps.append,
    )
    yield client
    client.close()


def users_path() -> str:
    return "/v2/user"


def test_retry_after_is_waited_at_least_as_long_as_the_server_asked(
    http: ProviderHTTP, clean_sandbox: SandboxServer, sleeps: list[float]
) -> None:
    clean_sandbox.faults.add({"path_contains": "/v2/user", "status": 429, "retry_after": 3, "count": 2})
    body = http.get_json(users_path(), {"limit": 1})
    assert body["users"]
    assert sleeps == [3.0, 3.0]


def test_a_retry_after_longer_than_the_cap_fails_fast_as_rate_limited(
    http: ProviderHTTP, clean_sandbox: SandboxServer, sleeps: list[float]
) -> None:
    clean_sandbox.faults.add({"path_contains": "/v2/user", "status": 429, "retry_after": 3600})
    with pytest.raises(ProviderRateLimited) as caught:
        http.get_json(users_path())
    assert caught.value.retry_after == 3600
    assert sleeps == []


def test_5xx_is_retried_with_capped_backoff_until_attempts_run_out(
    http: ProviderHTTP, clean_sandbox: SandboxServer, sleeps: list[float]
) -> None:
    clean_sandbox.faults.add({"path_contains": "/v2/user", "status": 503, "count": -1})
    with pytest.raises(ProviderUnavailable, match="503"):
        http.get_json(users_path())
    assert len(sleeps) == 3
    assert all(0 <= s <= 0.04 for s in sleeps)


def test_timeouts_are_retried_then_reported(
    http: ProviderHTTP, clean_sandbox: SandboxServer, sleeps: list[float]
) -> None:
    clean_sandbox.faults.add({"path_contains": "/v2/user", "kind": "timeout", "delay": 1.0, "count": -1})
    with pytest.raises(ProviderUnavailable, match="timed out"):
        http.get_json(users_path())
    assert len(sleeps) == 3


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, ProviderAuthError),
        (403, ProviderAuthError),
        (404, ProviderNotFound),
        (422, ProviderRequestError),
    ],
)
def test_client_errors_are_not_retried(
    http: ProviderHTTP, clean_sandbox: SandboxServer, sleeps: list[float], status: int, error: type
) -> None:
    clean_sandbox.faults.add({"path_contains": "/v2/user", "status": status})
    with pytest.raises(error):
        http.get_json(users_path())
    assert sleeps == []


def test_non_idempotent_requests_are_not_retried(
    http: ProviderHTTP, clean_sandbox: SandboxServer, sleeps: list[float]
) -> None:
    user_id = clean_sandbox.junction.user_ids[0]
    clean_sandbox.faults.add({"path_contains": "/refresh/", "status": 503})
    with pytest.raises(ProviderUnavailable):
        http.request("POST", f"/v2/user/refresh/{user_id}")
    assert sleeps == []
    assert len([r for r in clean_sandbox.requests if "/refresh/" in r["path"]]) == 1


def test_errors_name_the_route_not_the_user(http: ProviderHTTP, clean_sandbox: SandboxServer) -> None:
    user_id = clean_sandbox.junction.user_ids[0]
    clean_sandbox.faults.add({"user_id": user_id, "status": 401})
    with pytest.raises(ProviderAuthError) as caught:
        http.get_json(f"/v2/user/{user_id}")
    assert user_id not in str(caught.value)
    assert "/v2/user/{id}" in str(caught.value)


def test_full_jitter_stays_below_the_exponential_cap() -> None:
    random.seed(1)
    policy = RetryPolicy(attempts=10, base=0.5, cap=4.0)
    for attempt in range(1, 10):
        ceiling = min(4.0, 0.5 * 2 ** (attempt - 1))
        waits = [policy.backoff(attempt) for _ in range(200)]
        assert max(waits) <= ceiling
        assert min(waits) < ceiling / 2  # jitter spreads retries, it does not just add noise


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    now = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    assert parse_retry_after({"retry-after": "7"}) == 7.0
    assert parse_retry_after({"retry-after": "Tue, 10 Mar 2026 12:00:30 GMT"}, now=lambda: now) == 30.0
    assert parse_retry_after({"x-ratelimit-reset": "12"}) == 12.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_route_of_removes_uuid_segments() -> None:
    path = "/v2/timeseries/4a29dbc7-6db3-4c83-bfac-70a20a4be1b2/heartrate/grouped"
    assert route_of(path) == "/v2/timeseries/{id}/heartrate/grouped"
