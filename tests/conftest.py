"""Shared fixtures: one sandbox per session on a free loopback port, reset between tests; frozen time."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import time_machine

from connections.config import JunctionSyncConfig
from sandbox import SandboxServer
from sandbox.clerk import DEFAULT_AZP as CLERK_AZP
from sandbox.clerk import ClerkSandbox

SANDBOX_KEY = "sk_us_loopsync_tests"
# Noon UTC on a weekday in the sandbox's data range; every sync test runs at this instant.
FROZEN_NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(port=0, users=6, seed=7, api_key=SANDBOX_KEY, page_size=1000) as server:
        yield server


@pytest.fixture
def clean_sandbox(sandbox: SandboxServer) -> Iterator[SandboxServer]:
    sandbox.reset()
    yield sandbox
    sandbox.reset()


@pytest.fixture
def frozen_time() -> Iterator[datetime]:
    with time_machine.travel(FROZEN_NOW, tick=False):
        yield FROZEN_NOW


@pytest.fixture
def junction_config(clean_sandbox: SandboxServer) -> JunctionSyncConfig:
    return JunctionSyncConfig(
        api_key=SANDBOX_KEY,
        base_url_override=clean_sandbox.junction_url,
        user_ids=tuple(clean_sandbox.junction.user_ids[:3]),
        lookback_days=2,
    )


@pytest.fixture
def direct_config(clean_sandbox: SandboxServer, settings):  # type: ignore[no-untyped-def]
    """The direct providers pointed at the sandbox; also installed as settings.DIRECT_PROVIDERS."""
    from connections.sandbox_setup import sandbox_config

    config = sandbox_config(clean_sandbox, settings.DIRECT_PROVIDERS)
    settings.DIRECT_PROVIDERS = config
    return config


# Ops admin personas and the capturing Sentry transport (tests/ops_fixtures.py).
from tests.ops_fixtures import ops_user, sentry_capture, sentry_tracing, support_user  # noqa: E402,F401

# --- REST API (issue 5) ------------------------------------------------------------------------------------


@pytest.fixture
def clerk(settings: Any, clean_sandbox: SandboxServer) -> ClerkSandbox:
    """Clerk settings pointing at the sandbox's JWKS; mint tokens with `clerk.mint(sub)`."""
    settings.CLERK_JWKS_URL = f"{clean_sandbox.clerk_url}/.well-known/jwks.json"
    settings.CLERK_JWT_KEY = ""
    settings.CLERK_ISSUER = clean_sandbox.clerk.issuer
    settings.CLERK_AUTHORIZED_PARTIES = [CLERK_AZP]
    return clean_sandbox.clerk


@pytest.fixture(autouse=True)
def _empty_cache() -> Iterator[None]:
    # Django's cache outlives a test's rolled-back rows (ids are reused): start every test empty.
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def api_config(settings: Any, junction_config: JunctionSyncConfig) -> JunctionSyncConfig:
    """The sandbox's Junction as the app's configured Junction (what the manual-sync task uses)."""
    settings.JUNCTION_SYNC = junction_config
    return junction_config


@pytest.fixture(autouse=True)
def _fresh_provider_budgets(request: pytest.FixtureRequest) -> Iterator[None]:
    # Budgets, breakers and login guards live in their own autocommitted rows (connections/budgets.py), which a
    # test's rollback does not undo: every database test starts with none, and the gate's own connections are
    # closed after it (or the test database could not be dropped at the end).
    if request.node.get_closest_marker("django_db") is None:
        yield
        return
    from connections import budgets

    blocker = request.getfixturevalue("django_db_blocker")
    with blocker.unblock():
        budgets.reset_all()
    yield
    with blocker.unblock():
        budgets.reset_all()
        budgets.close_connections()
