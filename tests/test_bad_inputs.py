"""Inputs that gave HTTP 500 (issue 18.10): extreme dates, NUL characters, a unicode digit. Each is now a 400
in the API's error shape, the admin's own "incorrect lookup parameters" redirect, or an empty search."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from django.contrib.auth.models import User
from django.test import Client

from connections.models import Patient
from sandbox import SandboxServer
from sandbox.clerk import ClerkSandbox
from tests.api_helpers import client_for, error_of, field_errors_of
from tests.ops_fixtures import make_connection

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_time")]

BASE = "/api/patient-graph/wearables"
INGEST = "/api/patient-graph/service/ingest"
KEY = "pg_test_key_0123456789"


def cursor(values: list[Any]) -> str:
    """A cursor in the API's own encoding, carrying values it never returns."""
    return base64.urlsafe_b64encode(orjson.dumps(values)).decode().rstrip("=")


HR = {"metric": "heart_rate"}


@pytest.mark.parametrize(
    ("path", "params", "parameter"),
    [
        ("daily-stats", {"end": "0001-01-01"}, "end"),
        ("daily-stats", {"end": "9999-12-31"}, "end"),
        ("daily-stats", {"cursor": cursor(["heart_rate\x00", "2026-03-01"])}, "cursor"),
        ("readings", {**HR, "start": "0001-01-01"}, "start"),
        ("readings", {**HR, "end": "0001-01-01"}, "end"),
        ("readings", {**HR, "end": "9999-12-31"}, "end"),
        ("readings", {**HR, "start": "9999-12-31T00:00:00-23:59", "end": "9999-12-31T23:59:59-23:59"}, "end"),
        ("readings", {**HR, "end": "0001-01-01T00:00:00-23:59"}, "end"),
        (
            "readings",
            {**HR, "cursor": cursor(["heart_rate", "oura\x00", "", "2026-03-01T00:00:00Z"])},
            "cursor",
        ),
        (
            "readings",
            {**HR, "cursor": cursor(["heart_rate", "oura", "", "9999-12-31T23:59:59-23:59"])},
            "cursor",
        ),
        ("glucose", {"start": "0001-01-01"}, "start"),
        ("glucose", {"end": "9999-12-31"}, "end"),
        ("glucose", {"start": "0001-01-01T00:00:00+23:59", "end": "0001-01-02T00:00:00Z"}, "end"),
        ("glucose", {"cursor": cursor(["dexcom\x00", "2026-03-01T00:00:00Z"])}, "cursor"),
        ("glucose", {"cursor": cursor(["dexcom", "0001-01-01T00:00:00+23:59"])}, "cursor"),
    ],
)
def test_read_parameters_that_gave_500_are_a_400_naming_the_parameter(
    path: str, params: dict[str, str], parameter: str, clerk: ClerkSandbox, clean_sandbox: SandboxServer
) -> None:
    # East of UTC, the local midnight of 0001-01-01 is in year 0, which Python cannot represent.
    Patient.objects.create(clerk_user_id="user_alice", time_zone="Asia/Tokyo")
    client = client_for(clerk.mint("user_alice"))
    client.raise_request_exception = False

    response = client.get(f"{BASE}/{path}", params)

    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_parameter" and parameter in field_errors_of(error)


def test_the_oldest_and_newest_supported_days_still_answer(
    clerk: ClerkSandbox, clean_sandbox: SandboxServer
) -> None:
    Patient.objects.create(clerk_user_id="user_alice", time_zone="Pacific/Kiritimati")
    client = client_for(clerk.mint("user_alice"))
    for params in (
        {"start": "1900-01-01", "end": "1900-01-02"},
        {"start": "2999-12-30", "end": "2999-12-31"},
    ):
        for path in ("daily-stats", "glucose"):
            response = client.get(f"{BASE}/{path}", params)
            assert response.status_code == 200 and response.json()["results"] == []


def _reading(**fields: Any) -> dict[str, Any]:
    return {
        "metric": "heart_rate",
        "source": "oura",
        "source_type": "ring",
        "measured_at": "2026-03-09T08:00:00+00:00",
        "end_at": None,
        "value": 61.0,
        "unit": "bpm",
        **fields,
    }


def _glucose(**fields: Any) -> dict[str, Any]:
    return {
        "source": "dexcom",
        "measured_at": "2026-03-09T08:00:00Z",
        "value_mg_dl": 104.0,
        "original_value": 104.0,
        "original_unit": "mg/dL",
        "trend": "",
        "trend_rate": None,
        "device": "g7",
        **fields,
    }


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"readings": [_reading(metric="heart\x00rate")]}, "readings[0].metric"),
        ({"readings": [_reading(source="oura\x00")]}, "readings[0].source"),
        ({"readings": [_reading(source_type="ring\x00")]}, "readings[0].source_type"),
        ({"readings": [_reading(unit="bpm\x00")]}, "readings[0].unit"),
        ({"glucose": [_glucose(source="dexcom\x00")]}, "glucose[0].source"),
        ({"glucose": [_glucose(original_unit="mg/dL\x00")]}, "glucose[0].original_unit"),
        ({"glucose": [_glucose(trend="flat\x00")]}, "glucose[0].trend"),
        ({"glucose": [_glucose(device="g7\x00")]}, "glucose[0].device"),
    ],
)
def test_ingest_strings_with_nul_are_an_invalid_row(
    body: dict[str, Any], where: str, settings: Any, junction_config: Any
) -> None:
    settings.JUNCTION_SYNC = junction_config.replace(patient_graph_key=KEY)
    patient = Patient.objects.create(clerk_user_id="user_alice")
    client = client_for(KEY)
    client.raise_request_exception = False

    response = client.post(INGEST, {"patient_id": patient.pk, **body}, format="json")

    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_rows"
    assert field_errors_of(error) == {where: ["must not contain a NUL character"]}


@pytest.mark.parametrize("name", ["junction_user_id", "clerk_user_id"])
def test_ingest_patient_ids_with_nul_are_a_400(name: str, settings: Any, junction_config: Any) -> None:
    settings.JUNCTION_SYNC = junction_config.replace(patient_graph_key=KEY)
    client = client_for(KEY)
    client.raise_request_exception = False

    response = client.post(INGEST, {name: "user\x00alice", "readings": []}, format="json")

    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_request"


@pytest.mark.parametrize("url", ["/admin/connections/connection/", "/admin/connections/patient/"])
def test_admin_search_for_a_unicode_digit_finds_nothing(url: str, client: Client, ops_user: User) -> None:
    make_connection(2)
    client.force_login(ops_user)
    client.raise_request_exception = False

    response = client.get(url, {"q": "²"})

    assert response.status_code == 200
    assert response.context["cl"].result_count == 0
    # An ASCII id still finds its row.
    assert client.get(url, {"q": "1"}).status_code == 200


@pytest.mark.parametrize(
    ("url", "params"),
    [
        ("/admin/connections/connection/", {"provider": "\x00"}),
        ("/admin/connections/connection/", {"status__exact": "\x00"}),
        ("/admin/connections/syncevent/", {"kind": "\x00"}),
        ("/admin/connections/jobrun/", {"job": "\x00"}),
    ],
)
def test_admin_filters_with_nul_redirect_as_incorrect_lookups(
    url: str, params: dict[str, str], client: Client, ops_user: User
) -> None:
    make_connection(1)
    client.force_login(ops_user)
    client.raise_request_exception = False

    response = client.get(url, params)

    assert response.status_code == 302 and response["Location"] == f"{url}?e=1"
    assert client.get(response["Location"]).status_code == 200


@pytest.mark.parametrize(
    "params", [{"state": "\x00", "code": "x"}, {"state": "\x00", "error": "access_denied"}]
)
def test_an_oauth_callback_state_with_nul_is_refused(
    params: dict[str, str], client: Client, direct_config: Any
) -> None:
    client.cookies["loopsync_oauth_whoop"] = "browser-key"
    client.raise_request_exception = False

    response = client.get("/connect/whoop/callback", params)

    assert response.status_code == 400
