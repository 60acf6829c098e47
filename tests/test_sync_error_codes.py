"""A failed sync carries a stable error code (issue 17, item 12): classified once, from the engine's failure
classes, stored on the sync event, the connection and a manual sync request, and shown by the API with its
human message instead of the internal route string."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from django.test import override_settings

from connections import actions
from connections.config import DirectProvidersConfig
from connections.engine import close_interrupted_events
from connections.models import (
    Connection,
    ConnectionStatus,
    Provider,
    SyncErrorCode,
    SyncEvent,
    SyncRequest,
    SyncStatus,
)
from connections.providers.base import (
    ProviderAuthError,
    ProviderBadResponse,
    ProviderError,
    ProviderNotFound,
    ProviderRateLimited,
    ProviderRequestError,
    ProviderTimeout,
    ProviderUnavailable,
)
from connections.providers.contract import CredentialsRefused, InvalidPayload
from connections.providers.oauth2 import OAuthGrantError
from connections.sync_errors import sync_error_code
from connections.tokens import ConnectionRevoked, RefreshInDoubt
from sandbox import SandboxServer
from sandbox.clerk import ClerkSandbox
from tests.api_helpers import client_for
from tests.direct_helpers import connect, expire_stored_token, sync

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_time")]

TOKEN_PATHS = {Provider.WHOOP: "/oauth/oauth2/token", Provider.DEXCOM: "/v2/oauth2/token"}


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (ProviderUnavailable("x", "GET /a answered 503", status=503), "provider_unavailable"),
        (ProviderTimeout("x", "GET /a timed out"), "timeout"),
        (ProviderRateLimited("x", "GET /a answered 429", retry_after=60), "rate_limited"),
        (ProviderAuthError("x", "GET /a answered 401", status=401), "credentials_revoked"),
        (OAuthGrantError("x", "invalid_grant", status=400), "credentials_revoked"),
        (CredentialsRefused("x", "login refused"), "credentials_revoked"),
        (OAuthGrantError("x", "invalid_client", status=401), "provider_rejected_request"),
        (ProviderRequestError("x", "GET /a answered 400", status=400), "provider_rejected_request"),
        (ProviderNotFound("x", "GET /a answered 404", status=404), "provider_user_not_found"),
        (ProviderBadResponse("x", "GET /a: not JSON"), "invalid_provider_data"),
        (InvalidPayload("records is not a list"), "invalid_provider_data"),
        (ProviderError("x", "something"), "provider_rejected_request"),
        (ConnectionRevoked("x", "credentials refused (invalid_grant)"), "credentials_revoked"),
        (RefreshInDoubt("x", "credentials refused after a lost answer"), "credentials_revoked"),
        (KeyError("bug"), "internal_error"),
    ],
)
def test_each_failure_class_has_its_code(exc: BaseException, code: str) -> None:
    assert sync_error_code(exc) == code


def _codes(connection: Connection) -> tuple[str, str]:
    connection.refresh_from_db()
    event = SyncEvent.objects.filter(connection=connection).latest("pk")
    return event.error_code, connection.last_error_code


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ({"path_contains": "/egvs", "status": 503, "count": -1}, "provider_unavailable"),
        ({"path_contains": "/egvs", "status": 429, "retry_after": 7200, "count": -1}, "rate_limited"),
        ({"path_contains": "/egvs", "status": 400, "count": -1}, "provider_rejected_request"),
        (
            {"path_contains": "/egvs", "kind": "malformed", "mode": "truncated", "count": -1},
            "invalid_provider_data",
        ),
        ({"path_contains": "/egvs", "kind": "timeout", "delay": 1.0, "count": -1}, "timeout"),
    ],
)
@override_settings(PROVIDER_HTTP_TIMEOUT=0.3, PROVIDER_HTTP_ATTEMPTS=1, SYNC_USER_ATTEMPTS=1)
def test_a_failed_sync_stores_its_code_on_the_event_and_the_connection_and_a_success_clears_it(
    fault: dict[str, Any], code: str, direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:
    connection = connect(clean_sandbox, direct_config, Provider.DEXCOM, 1)
    added = clean_sandbox.faults.add({"provider": "dexcom", **fault})

    assert sync(connection, direct_config, sleep=lambda _: None).status == "failed"
    assert _codes(connection) == (code, code)

    clean_sandbox.faults.remove(added["id"])
    assert sync(connection, direct_config).status == "success"
    event_code, connection_code = _codes(connection)
    assert event_code == "" and connection_code == ""
    assert SyncEvent.objects.filter(connection=connection, status=SyncStatus.FAILED).get().error_code == code


def test_a_revoked_grant_is_credentials_revoked_and_another_token_refusal_is_ours(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:
    revoked = connect(clean_sandbox, direct_config, Provider.WHOOP, 5)
    expire_stored_token(revoked)
    clean_sandbox.faults.add(
        {
            "provider": "whoop",
            "path_contains": TOKEN_PATHS[Provider.WHOOP],
            "status": 400,
            "body": {"error": "invalid_grant"},
        }
    )
    assert sync(revoked, direct_config).status == "failed"
    assert _codes(revoked) == ("credentials_revoked", "credentials_revoked")
    assert revoked.status == ConnectionStatus.INACTIVE

    misconfigured = connect(clean_sandbox, direct_config, Provider.WHOOP, 4)
    expire_stored_token(misconfigured)
    clean_sandbox.faults.add(
        {
            "provider": "whoop",
            "path_contains": TOKEN_PATHS[Provider.WHOOP],
            "status": 401,
            "body": {"error": "invalid_client"},
        }
    )
    assert sync(misconfigured, direct_config).status == "failed"
    assert _codes(misconfigured) == ("provider_rejected_request", "provider_rejected_request")


def test_an_interrupted_event_is_coded_interrupted(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer, frozen_time: datetime
) -> None:
    connection = connect(clean_sandbox, direct_config, Provider.DEXCOM, 2)
    SyncEvent.objects.create(
        connection=connection,
        patient_id=connection.patient_id,
        provider=connection.provider,
        trigger="schedule",
        started_at=frozen_time - timedelta(hours=3),
    )

    assert close_interrupted_events(frozen_time) == 1

    assert _codes(connection) == ("interrupted", "interrupted")


# --- The API: error_code + error_message, never the internal message; sources never null --------------------

SYNC = "/api/patient-graph/wearables/sync"
CONNECTIONS = "/api/patient-graph/wearables/connections"


@pytest.fixture
def queued(monkeypatch: pytest.MonkeyPatch) -> None:
    # The background task is run by the test itself (do_manual_sync), as the worker would.
    monkeypatch.setattr(actions, "_enqueue_manual_sync", lambda request_id: None)


@override_settings(PROVIDER_HTTP_ATTEMPTS=1, SYNC_USER_ATTEMPTS=1)
def test_a_failed_manual_sync_shows_its_code_and_message_not_the_internal_error(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer, clerk: ClerkSandbox, queued: None
) -> None:
    connection = connect(clean_sandbox, direct_config, Provider.DEXCOM, 1)
    connection.patient.clerk_user_id = "user_carol"
    connection.patient.save(update_fields=["clerk_user_id"])
    client = client_for(clerk.mint("user_carol"))
    clean_sandbox.faults.add({"provider": "dexcom", "path_contains": "/egvs", "status": 503, "count": -1})

    accepted = client.post(SYNC, {"source": "dexcom"}, format="json").json()
    assert accepted["error_code"] is None and accepted["error_message"] is None
    actions.do_manual_sync(accepted["id"])
    status = client.get(f"{SYNC}/{accepted['id']}").json()

    assert status["status"] == "failed" and "error" not in status
    assert status["error_code"] == "provider_unavailable"
    assert status["error_message"] == SyncErrorCode.PROVIDER_UNAVAILABLE.label
    assert "/egvs" not in str(status) and "503" not in str(status)
    assert SyncRequest.objects.get().error_code == "provider_unavailable"
    [listed] = client.get(CONNECTIONS).json()["results"]
    assert listed["error_code"] == "provider_unavailable" and listed["error_message"]
    assert listed["sources"] == ["dexcom"]


def test_a_manual_sync_of_a_deactivated_connection_is_connection_inactive(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer, clerk: ClerkSandbox, queued: None
) -> None:
    connection = connect(clean_sandbox, direct_config, Provider.DEXCOM, 1)
    connection.patient.clerk_user_id = "user_carol"
    connection.patient.save(update_fields=["clerk_user_id"])
    client = client_for(clerk.mint("user_carol"))
    accepted = client.post(SYNC, {"source": "dexcom"}, format="json").json()
    Connection.objects.filter(pk=connection.pk).update(status=ConnectionStatus.INACTIVE)

    actions.do_manual_sync(accepted["id"])

    status = client.get(f"{SYNC}/{accepted['id']}").json()
    assert (status["status"], status["error_code"]) == ("failed", "connection_inactive")
    assert status["error_message"] == "The connection was removed or deactivated."


def test_sources_are_a_list_before_the_first_sync(clean_sandbox: SandboxServer, clerk: ClerkSandbox) -> None:
    from tests.api_helpers import make_patient

    patient = make_patient(clean_sandbox, 0, "user_dave")
    Connection.objects.create(patient=patient, provider=Provider.DEXCOM)

    results = client_for(clerk.mint("user_dave")).get(CONNECTIONS).json()["results"]

    assert {r["provider"]: r["sources"] for r in results} == {"dexcom": ["dexcom"], "junction": []}
    assert all(r["error_code"] is None and r["error_message"] is None for r in results)
