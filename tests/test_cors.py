"""CORS (issue 17, item 9): the consumer app's browser calls /api/ from its own origin.

The test settings allow `http://localhost:3000` (the sandbox's Clerk azp), through CORS_ALLOWED_ORIGINS.
"""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import Client

from sandbox import SandboxServer
from sandbox.clerk import ClerkSandbox
from tests.api_helpers import make_patient

APP = "http://localhost:3000"
SYNC = "/api/patient-graph/wearables/sync"


def preflight(path: str, origin: str) -> object:
    return Client().options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
        },
    )


def test_preflight_from_the_apps_origin_gets_200_and_the_cors_headers_without_a_token() -> None:
    response = preflight(SYNC, APP)
    assert response.status_code == 200  # type: ignore[attr-defined]
    assert response["Access-Control-Allow-Origin"] == APP  # type: ignore[index]
    assert "POST" in response["Access-Control-Allow-Methods"]  # type: ignore[index]
    allowed = {h.strip() for h in response["Access-Control-Allow-Headers"].split(",")}  # type: ignore[index]
    assert {"authorization", "content-type", "idempotency-key"} <= allowed
    assert int(response["Access-Control-Max-Age"]) > 0  # type: ignore[index]


def test_preflight_from_another_origin_gets_no_cors_headers() -> None:
    response = preflight(SYNC, "https://evil.example.com")
    assert "Access-Control-Allow-Origin" not in response  # type: ignore[operator]


def test_routes_outside_the_api_get_no_cors_headers() -> None:
    response = preflight("/admin/login/", APP)
    assert "Access-Control-Allow-Origin" not in response  # type: ignore[operator]


@pytest.mark.django_db
def test_a_get_with_a_clerk_token_from_the_apps_origin_carries_the_header(
    clean_sandbox: SandboxServer, clerk: ClerkSandbox
) -> None:
    make_patient(clean_sandbox, 0, "user_alice")
    response = Client().get(
        "/api/patient-graph/wearables/connections",
        headers={"Origin": APP, "Authorization": f"Bearer {clerk.mint('user_alice')}"},
    )
    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == APP
    # A browser app may read what a 202 and a 429 tell it.
    exposed = {h.strip().lower() for h in response["Access-Control-Expose-Headers"].split(",")}
    assert {"location", "retry-after"} <= exposed
    other = Client().get(
        "/api/patient-graph/wearables/connections",
        headers={"Origin": "https://evil.example.com", "Authorization": f"Bearer {clerk.mint('user_alice')}"},
    )
    assert "Access-Control-Allow-Origin" not in other


@pytest.mark.parametrize(
    "value",
    [
        "https://app.example.com/",
        "app.example.com",
        "https://*.example.com",
        "https://app.example.com/path",
        "ftp://app.example.com",
        "https://app.example.com:99999",
        "https://user@app.example.com",
        "*",
    ],
)
def test_a_bad_origin_stops_start_up_naming_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    from loopsync.env import env_origins

    monkeypatch.setenv("CORS_ALLOWED_ORIGINS", f"https://ok.example.com,{value}")
    with pytest.raises(ImproperlyConfigured, match="CORS_ALLOWED_ORIGINS"):
        env_origins("CORS_ALLOWED_ORIGINS")


def test_origins_are_read_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    from loopsync.env import env_origins

    monkeypatch.setenv("CORS_ALLOWED_ORIGINS", " https://app.example.com , http://localhost:3000,")
    assert env_origins("CORS_ALLOWED_ORIGINS") == ["https://app.example.com", "http://localhost:3000"]
