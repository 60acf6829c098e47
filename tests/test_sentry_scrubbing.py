"""Sentry gets errors without PHI: no token, no reading value, no identifier, no request body."""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import sentry_sdk

from connections import views as connect_views
from connections.config import DirectProvidersConfig, JunctionSyncConfig
from connections.models import Patient
from connections.oauth import connect_token_for
from loopsync.logging import JsonFormatter, TextFormatter
from loopsync.sentry import before_breadcrumb, before_send, before_send_transaction, scrub_text
from sandbox import SandboxServer
from tests.conftest import SANDBOX_KEY
from tests.direct_helpers import run_wearable_sync_job
from tests.ops_fixtures import CapturingTransport
from tests.test_direct_connect import approve

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_time")]


def served_values(sandbox: SandboxServer, user_id: str, now: datetime) -> set[str]:
    """Reading values the sandbox served, as they would be printed (only those unlikely to occur by chance)."""
    values: set[str] = set()
    for resource in ("hrv", "respiratory_rate", "calories_active"):
        for sample in sandbox.junction.samples(user_id, resource, now - timedelta(days=2), now):
            text = repr(sample["value"])
            if "." in text and len(text) >= 4:
                values.add(text)
    return values


def appears(value: str, text: str) -> bool:
    return re.search(rf"(?<![\d.]){re.escape(value)}(?![\d])", text) is not None


def test_a_failing_sync_sends_an_event_without_token_or_reading_values(
    junction_config: JunctionSyncConfig,
    clean_sandbox: SandboxServer,
    sentry_capture: CapturingTransport,
    frozen_time: datetime,
) -> None:
    user_id = next(u for u in junction_config.user_ids if clean_sandbox.junction.user(u).cgm_provider)
    # Every other resource is fetched and parsed (readings in memory), then workouts fail the user.
    clean_sandbox.faults.add(
        {"user_id": user_id, "path_contains": "summary/workouts", "status": 503, "count": -1}
    )

    result = run_wearable_sync_job(junction_config.replace(user_ids=(user_id,)))

    assert result.users_failed == 1
    events = sentry_capture.events()
    assert len(events) == 1
    event = events[0]
    assert event["level"] == "error" and event["tags"]["provider"] == "junction"
    assert "junction sync failed" in event["message"] and "503" in event["message"]
    sent = sentry_capture.serialized()
    assert SANDBOX_KEY not in sent
    assert user_id not in sent
    values = served_values(clean_sandbox, user_id, frozen_time)
    assert len(values) > 100  # the check below is not vacuous
    # The installed packages' versions ("pip 26.3") are the one place numbers like readings appear.
    without_versions = json.dumps(
        [{k: v for k, v in i.items() if k != "modules"} for i in sentry_capture.items()]
    )
    assert [v for v in values if appears(v, without_versions)] == []


def test_an_exception_with_readings_and_a_token_in_scope_sends_neither(
    sentry_capture: CapturingTransport,
) -> None:
    access_token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJwYXRpZW50In0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    readings = [{"glucose": 187.25, "measured_at": "2026-03-10T11:55:00Z"}]

    def parse(batch: list[dict[str, object]], token: str) -> None:
        raise ValueError(f"bad batch for Bearer {token}: value=187.25 mg/dL")

    try:
        parse(readings, access_token)
    except ValueError:
        sentry_sdk.capture_exception()

    (event,) = sentry_capture.events()
    sent = sentry_capture.serialized()
    assert event["exception"]["values"][0]["type"] == "ValueError"
    assert access_token not in sent and "eyJhbGciOiJIUzI1NiJ9" not in sent
    assert "187.25" not in sent
    assert all("vars" not in f for f in event["exception"]["values"][0]["stacktrace"]["frames"])


def test_before_send_drops_bodies_cookies_queries_extra_and_user() -> None:
    event = {
        "request": {
            "url": "https://loopsync.example/api/users/52231bda-c92b-545a-bf6a-f2c422e30c43/sync",
            "data": {"glucose": 142},
            "cookies": {"sessionid": "abc"},
            "query_string": "code=secret-oauth-code",
            "headers": {"Authorization": "Bearer x", "User-Agent": "app/1.0"},
        },
        "extra": {"readings": [1, 2, 3]},
        "user": {"id": "52231bda", "email": "a@b.c"},
        "logentry": {"message": "refresh_token=rt_0123456789abcdef0123 failed", "params": [142]},
    }

    scrubbed = before_send(event, {})

    request = scrubbed["request"]
    assert "data" not in request and "cookies" not in request and "query_string" not in request
    assert request["headers"] == {"User-Agent": "app/1.0"}
    assert "52231bda" not in request["url"]
    assert "extra" not in scrubbed and "user" not in scrubbed
    assert scrubbed["logentry"] == {"message": "refresh_token=[Filtered] failed"}


def test_breadcrumbs_lose_sql_parameters_and_identifiers() -> None:
    crumb = {
        "category": "query",
        "message": "SELECT 1 WHERE junction_user_id = '52231bda-c92b-545a-bf6a-f2c422e30c43'",
        "data": {"db.params": [187.25], "db.system": "postgresql"},
    }
    scrubbed = before_breadcrumb(crumb, {})
    assert scrubbed is not None and scrubbed["data"] == {"db.system": "postgresql"}
    assert "52231bda" not in scrubbed["message"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "junction: GET /v2/summary/sleep/{id} answered 503",
            "junction: GET /v2/summary/sleep/{id} answered 503",
        ),
        ("api_key=sk_us_loopsync_tests rejected", "api_key=[Filtered] rejected"),
        ('{"access_token": "abc.def"}', '{"access_token": "[Filtered]"}'),
        ("glucose 187.5 mg/dL out of range", "glucose [Filtered] out of range"),
        ("user ada@example.org", "user [Filtered]"),
    ],
)
def test_scrub_text(text: str, expected: str) -> None:
    assert scrub_text(text) == expected


# --- Query strings: OAuth codes, states and signed connect links (issue 18.11) -----------------------------


def _formatted(record: logging.LogRecord) -> str:
    """A record as every way we write or send it: both formatters and its attributes."""
    return "\n".join([TextFormatter().format(record), JsonFormatter().format(record), repr(vars(record))])


def test_oauth_query_strings_reach_neither_sentry_transactions_events_nor_log_lines(
    direct_config: DirectProvidersConfig,
    clean_sandbox: SandboxServer,
    sentry_tracing: CapturingTransport,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    live_server: Any,
    transactional_db: None,
) -> None:
    caplog.set_level(logging.INFO)
    patient = Patient.objects.create()
    link = connect_token_for(patient)
    # Real HTTP: Sentry's WSGI middleware (which opens the transactions) wraps the server, not the test client.
    browser = httpx.Client(base_url=live_server.url, timeout=10)
    stranger = httpx.Client(base_url=live_server.url, timeout=10)

    # The real flow: a signed link, the provider's code and state, a connection made.
    started = browser.get("/connect/whoop/start", params={"token": link})
    assert started.status_code == 302
    params = approve(started.headers["location"])
    assert browser.get("/connect/whoop/callback", params=params).status_code == 200
    # Refused callers: Django's 4xx warning lines.
    assert stranger.get("/connect/whoop/callback?code=SECRET&state=SECRET2").status_code == 400
    assert stranger.get("/connect/whoop/start?token=SECRET3").status_code == 403
    # An unexpected error in the callback: an error event with its request, and Django's error line.
    monkeypatch.setattr(connect_views, "complete_oauth", _raise)
    assert browser.get("/connect/whoop/callback?code=SECRET4&state=SECRET5").status_code == 500
    sentry_sdk.flush()

    secrets = ["SECRET", link, link.rpartition(":")[2], params["code"], params["state"]]
    transactions = sentry_tracing.transactions()
    assert len(transactions) == 5
    assert {t["transaction"] for t in transactions} == {
        "/connect/{provider}/start",
        "/connect/{provider}/callback",
    }
    assert any(span.get("op") == "db" for t in transactions for span in t.get("spans", []))
    events = sentry_tracing.events()
    (event,) = events
    assert event["request"]["url"].endswith("/connect/whoop/callback")
    sent = sentry_tracing.serialized()
    assert [s for s in secrets if s in sent] == []

    request_lines = [r for r in caplog.records if r.name == "django.request"]
    assert sorted(r.levelname for r in request_lines) == ["ERROR", "WARNING", "WARNING"]
    logged = "\n".join(_formatted(r) for r in caplog.records)
    assert "/connect/whoop/callback" in logged
    assert [s for s in secrets if s in logged] == []


def _raise(*args: object, **kwargs: object) -> None:
    raise RuntimeError("the provider answered something unexpected")


def test_runserver_request_lines_lose_their_query_values() -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    server = logging.getLogger("django.server")
    keep = Keep()
    server.addHandler(keep)
    try:
        # As runserver's WSGIRequestHandler.log_message calls it (its socket as `request`).
        server.warning(
            '"%s" %s %s',
            "GET /connect/whoop/callback?code=SECRET&state=SECRET2 HTTP/1.1",
            "400",
            "57",
            extra={"request": object(), "server_time": "06/Dec/2026 16:40:00"},
        )
    finally:
        server.removeHandler(keep)

    (record,) = records
    assert (
        record.getMessage()
        == '"GET /connect/whoop/callback?code=[Filtered]&state=[Filtered] HTTP/1.1" 400 57'
    )
    assert "SECRET" not in _formatted(record)


def test_before_send_transaction_scrubs_request_spans_and_trace() -> None:
    event = {
        "type": "transaction",
        "transaction": "/connect/{provider}/callback",
        "request": {
            "url": "http://testserver/connect/whoop/callback?code=SECRET",
            "query_string": "code=SECRET&state=SECRET2",
            "cookies": {"loopsync_oauth_whoop": "SECRET6"},
        },
        "contexts": {"trace": {"op": "http.server", "data": {"http.query": "code=SECRET"}}},
        "spans": [
            {
                "op": "http.client",
                "description": "GET https://api.example/authorize?state=SECRET2&code=SECRET",
                "data": {"url": "https://api.example/authorize?token=SECRET3", "http.query": "a=SECRET"},
            },
            {
                "op": "db",
                "description": "SELECT 1",
                "data": {"db.params": ["SECRET2"], "db.system": "postgresql"},
            },
        ],
    }

    scrubbed = before_send_transaction(event, {})

    assert scrubbed is not None and "SECRET" not in json.dumps(scrubbed)
    assert (
        scrubbed["spans"][0]["description"]
        == "GET https://api.example/authorize?state=[Filtered]&code=[Filtered]"
    )
    assert scrubbed["spans"][1]["data"] == {"db.system": "postgresql"}
    assert "query_string" not in scrubbed["request"]
