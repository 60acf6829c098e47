"""Two workers sync one connection whose token has expired: exactly one refresh reaches the provider.

Real threads, each with its own database connection (transactional_db), so the row lock is really contended.
"""

from __future__ import annotations

import threading

import pytest
from django.db import connections

from connections.config import DirectProvidersConfig
from connections.models import Connection, ConnectionStatus, Provider
from readings.models import GlucoseReading, WearableReading
from sandbox import SandboxServer
from tests.direct_helpers import connect, expire_stored_token, sync

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("frozen_time")]


@pytest.mark.parametrize("provider", [Provider.WHOOP, Provider.DEXCOM])
def test_two_concurrent_syncs_with_an_expired_token_refresh_once(
    provider: str, direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:
    connection = connect(clean_sandbox, direct_config, provider, 1)
    expire_stored_token(connection)
    oauth = getattr(clean_sandbox, provider).oauth
    oauth.expire_access_tokens()
    # The token endpoint is slow, so the second worker arrives while the first holds the lock.
    token_path = "/oauth/oauth2/token" if provider == Provider.WHOOP else "/v2/oauth2/token"
    clean_sandbox.faults.add(
        {"provider": provider, "path_contains": token_path, "kind": "slow", "delay": 0.5}
    )
    barrier = threading.Barrier(2)
    summaries: list = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            summaries.append(sync(Connection.objects.get(pk=connection.pk), direct_config))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert not errors, errors
    assert [s.status for s in summaries] == ["success", "success"], [s.errors for s in summaries]
    assert oauth.refresh_calls() == 1
    connection.refresh_from_db()
    assert connection.status == ConnectionStatus.ACTIVE
    # Nothing stored twice: the natural keys hold, and a third sync finds nothing new.
    model = WearableReading if provider == Provider.WHOOP else GlucoseReading
    stored = model.objects.filter(patient=connection.patient).count()
    assert stored > 0 and sum(s.records_stored for s in summaries) == stored
    assert sync(connection, direct_config).records_stored == 0
    assert oauth.refresh_calls() == 1
