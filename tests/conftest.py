"""Shared fixtures: one sandbox per session on a free loopback port, reset between tests; frozen time."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import time_machine

from connections.config import JunctionSyncConfig
from sandbox import SandboxServer

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
from tests.ops_fixtures import ops_user, sentry_capture, support_user  # noqa: E402,F401
