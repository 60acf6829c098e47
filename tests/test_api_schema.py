"""The OpenAPI schema: generated without warnings, covers every route; schemathesis against a live server
(real HTTP on loopback) finds no 5xx and no response that breaks the schema.

The schemathesis test is deterministic: a fixed seed (schemathesis otherwise draws a random one per run and hands
it to hypothesis, which wins over hypothesis' own derandomize), no example database (a failure saved by one run
would be replayed first by the next, on that machine only) and a fixed number of examples per route, so every
run on every machine sends the same requests. SCHEMATHESIS_SEED=N explores other cases, reproducibly. One
more input: schemathesis' coverage phase picks a few boundary cases by iterating sets, so their order follows
Python's string hashing; `make test` sets PYTHONHASHSEED=0 for that (when running pytest by hand, set it too). A
failure prints the request in full (method, URL, headers, body) and the response. Set SCHEMATHESIS_CASES_FILE to
a path to append one line per request sent, e.g. to diff two runs.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest
import schemathesis
from django.core.management import call_command
from hypothesis import HealthCheck, settings
from schemathesis.core.failures import FailureGroup
from schemathesis.core.transport import Response as SchemathesisResponse
from schemathesis.generation.hypothesis import examples as schemathesis_examples
from schemathesis.specs.openapi.checks import positive_data_acceptance

from connections import actions
from connections.api.errors import PROBLEMS
from connections.models import Patient
from readings.store import store_batch
from sandbox import SandboxServer
from sandbox.clerk import ClerkSandbox
from tests.api_helpers import make_patient

SERVICE_KEY = "pg_schemathesis_key"


def test_the_schema_generates_without_warnings_and_covers_every_route(tmp_path) -> None:
    out = tmp_path / "schema.json"
    call_command(
        "spectacular", "--validate", "--fail-on-warn", "--format", "openapi-json", "--file", str(out)
    )
    schema = json.loads(out.read_text())
    assert schema["openapi"].startswith("3.")
    assert set(schema["paths"]) == {
        "/api/ping",
        "/api/problems/{code}",
        "/api/patient-graph/wearables/sync",
        "/api/patient-graph/wearables/sync/{sync_id}",
        "/api/wearables/{source}/sync",
        "/api/patient-graph/wearables/connections",
        "/api/patient-graph/wearables/daily-stats",
        "/api/patient-graph/wearables/readings",
        "/api/patient-graph/wearables/glucose",
        "/api/patient-graph/wearables/glucose/summary",
        "/api/patient-graph/wearables/glucose/agp",
        "/api/patient-graph/service/ingest",
        "/api/patient-graph/service/fhir/cgm",
    }
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if path in {"/api/ping", "/api/problems/{code}"}:
                continue
            # Every endpoint checks who is asking, and documents the problem details it answers with.
            assert operation["security"], (method, path)
            assert "401" in operation["responses"], (method, path)
            error = operation["responses"]["401"]["content"]["application/problem+json"]["schema"]["$ref"]
            assert error.endswith("/Problem")


@pytest.mark.django_db
def test_the_docs_page_and_schema_are_served(client) -> None:
    assert client.get("/api/schema/").status_code == 200
    docs = client.get("/api/docs/")
    assert docs.status_code == 200 and b"swagger-ui" in docs.content


@pytest.fixture
def live_api(
    live_server: Any,
    transactional_db: None,
    clean_sandbox: SandboxServer,
    clerk: ClerkSandbox,
    api_config: Any,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:
    settings.JUNCTION_SYNC = api_config.replace(patient_graph_key=SERVICE_KEY)
    # Sync requests stay queued: this test is about the API's answers, not the background job.
    monkeypatch.setattr(actions, "_enqueue_manual_sync", lambda request_id: None)
    patient = make_patient(clean_sandbox, 1, "user_schemathesis")
    readings = [
        ("heart_rate", "oura", "ring", f"2026-03-09 08:{m:02d}:00+00:00", None, 60.0 + m, "bpm")
        for m in range(30)
    ]
    from django.db import transaction

    with transaction.atomic():
        store_batch(patient.pk, patient.time_zone, readings, [], connection_id=None)
    Patient.objects.create(clerk_user_id="user_without_data")
    return {
        "url": live_server.url,
        "token": clerk.mint("user_schemathesis", ttl=3600),
    }


# Any fixed value will do; changing it changes every generated case.
SEED = int(os.environ.get("SCHEMATHESIS_SEED", "20261206"))


@pytest.fixture
def api_schema(live_api: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    loaded = schemathesis.openapi.from_url(f"{live_api['url']}/api/schema/?format=json")
    loaded.config.seed = SEED
    # The coverage phase draws its boundary values (e.g. a non-integer page_size) in hypothesis runs of its own,
    # seeded only by this module variable (read on each draw; schemathesis is pinned, 4.10.2).
    monkeypatch.setattr(schemathesis_examples, "SCHEMATHESIS_BENCHMARK_SEED", SEED)
    return loaded


schema = schemathesis.pytest.from_fixture("api_schema")


# Per route; enough to cover every parameter's types and bounds in a few seconds per route.
MAX_EXAMPLES = 15


def problem_details_conformance(ctx: Any, response: Any, case: Any) -> None:
    """A schemathesis check: every error under /api/ is an RFC 9457 problem (application/problem+json) with
    the members we promise, its `code` one of the documented codes and of this status."""
    if response.status_code < 400:
        return
    headers = {name.lower(): values for name, values in response.headers.items()}
    content_type = ", ".join(headers.get("content-type", []))
    if content_type != "application/problem+json":
        raise AssertionError(f"An error answered {content_type!r}, not application/problem+json")
    body = response.json()
    if not isinstance(body, dict):
        raise AssertionError("The problem is not a JSON object")
    missing = {"type", "title", "status", "detail", "instance", "code"} - set(body)
    if missing:
        raise AssertionError(f"The problem lacks {sorted(missing)}")
    code = body["code"]
    if code not in PROBLEMS:
        raise AssertionError(f"Undocumented problem code {code!r}")
    problem = PROBLEMS[code]
    if body["status"] != response.status_code or problem.status != response.status_code:
        raise AssertionError(
            f"{code} is documented as {problem.status}; status {body['status']}, HTTP {response.status_code}"
        )
    if body["type"] != problem.type or body["title"] != problem.title:
        raise AssertionError(f"type/title {body['type']!r}/{body['title']!r} are not those of {code}")
    if unquote(body["instance"]) != unquote(urlsplit(response.request.url).path):
        raise AssertionError(f"instance {body['instance']!r} is not the request's path")
    if not isinstance(body["detail"], str) or not body["detail"]:
        raise AssertionError("detail is empty")
    for error in body.get("errors", []):
        if (
            not isinstance(error, dict)
            or not isinstance(error.get("message"), str)
            or set(error) - {"field", "message"}
        ):
            raise AssertionError(f"An `errors` item is not {{field, message}}: {error!r}")


def _describe_exchange(response: Any) -> str:
    """The request as sent and the answer, in full: enough to replay the failure with curl by hand."""
    request = response.request
    lines = [f"Request: {request.method} {request.url}"]
    lines += [f"  {name}: {value}" for name, value in request.headers.items()]
    lines.append(f"  body: {_body(request.body)!r}")
    lines.append(f"Response: {response.status_code}")
    lines += [f"  {name}: {', '.join(values)}" for name, values in response.headers.items()]
    lines.append(f"  body: {response.content.decode(errors='replace')[:4000]}")
    return "\n".join(lines)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    print_blob=True,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
def test_the_live_api_conforms_to_its_schema(case: Any, live_api: dict[str, str]) -> None:
    credential = SERVICE_KEY if "/service/" in case.path else live_api["token"]
    # positive_data_acceptance is left out: rules across parameters (start before end, a range of at most
    # 366 days, a source the patient has connected) are not expressible in OpenAPI, and their 400s are right.
    headers = {"Authorization": f"Bearer {credential}"}
    response = case.call(headers=headers)
    if cases_file := os.environ.get("SCHEMATHESIS_CASES_FILE"):
        request = response.request
        with open(cases_file, "a") as log:
            # Neither the live server's port nor the token (its iat, exp and sid) is part of the case.
            path = request.url.removeprefix(live_api["url"])
            log.write(json.dumps([request.method, path, _body(request.body)]) + "\n")
    try:
        case.validate_response(
            response,
            headers=headers,
            additional_checks=[problem_details_conformance],
            excluded_checks=[positive_data_acceptance],
        )
    except FailureGroup as exc:
        # Re-raised with the exchange in the message: schemathesis' own report sanitizes the request (no headers,
        # a filtered Authorization) and cuts the body, and a note or print would be swallowed by its subtests.
        raise AssertionError(f"{exc}\n\n{_describe_exchange(response)}") from None


def _body(body: bytes | str | None) -> str | None:
    return body.decode(errors="replace") if isinstance(body, bytes) else body


def _generated_schema(tmp_path: Any) -> dict[str, Any]:
    out = tmp_path / "schema.json"
    call_command(
        "spectacular", "--validate", "--fail-on-warn", "--format", "openapi-json", "--file", str(out)
    )
    return json.loads(out.read_text())


def _resolve(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    ref = spec.get("$ref") or next((s["$ref"] for s in spec.get("allOf", []) if "$ref" in s), None)
    return schema["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else spec


def test_every_field_and_parameter_is_described_and_every_route_has_examples(tmp_path) -> None:
    schema = _generated_schema(tmp_path)
    undescribed = [
        f"{name}.{prop}"
        for name, component in schema["components"]["schemas"].items()
        for prop, spec in component.get("properties", {}).items()
        if not spec.get("description")
    ]
    without_example: list[str] = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            undescribed += [
                f"{where} parameter {p['name']}"
                for p in operation.get("parameters", [])
                if not p.get("description")
            ]
            for media in operation.get("requestBody", {}).get("content", {}).values():
                if not media.get("examples"):
                    without_example.append(f"{where} request body")
            for status, response in operation["responses"].items():
                undescribed += [
                    f"{where} {status} header {h}"
                    for h, s in response.get("headers", {}).items()
                    if not s.get("description")
                ]
                for media_type, media in response.get("content", {}).items():
                    if not media.get("examples"):
                        without_example.append(f"{where} {status} {media_type}")
    assert undescribed == [] and without_example == []


def test_every_error_response_is_a_documented_problem_and_the_headers_are_documented(tmp_path) -> None:
    schema = _generated_schema(tmp_path)
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            for status, response in responses.items():
                if int(status) >= 400:
                    [(media_type, media)] = response["content"].items()
                    assert media_type == "application/problem+json", (method, path, status)
                    assert media["schema"]["$ref"].endswith("/Problem")
                    codes = {example["value"]["code"] for example in media["examples"].values()}
                    assert codes and all(PROBLEMS[code].status == int(status) for code in codes)
            # Any route can answer these two: a client that accepts no JSON, and a failure of ours.
            assert {"406", "500"} <= set(responses), (method, path)
            if "requestBody" in operation:
                assert "415" in responses, (method, path)
            if "202" in responses:
                assert responses["202"]["headers"]["Location"]["required"] is True
            if "429" in responses:
                assert responses["429"]["headers"]["Retry-After"]["required"] is True
            if "401" in responses:
                assert "WWW-Authenticate" in responses["401"]["headers"]


def test_metric_source_and_error_codes_are_enums_derived_from_their_registries(tmp_path) -> None:
    from connections.actions import accepted_sources
    from connections.models import SyncErrorCode
    from readings.api import daily_metrics, known_metrics

    schema = _generated_schema(tmp_path)
    components = schema["components"]["schemas"]
    assert components["Metric"]["enum"] == sorted(known_metrics())
    assert components["DailyMetric"]["enum"] == sorted(daily_metrics())
    assert components["Source"]["enum"] == list(accepted_sources())
    assert components["ProblemCode"]["enum"] == list(PROBLEMS)
    assert components["SyncErrorCode"]["enum"] == list(SyncErrorCode.values)

    def enum_of(spec: dict[str, Any]) -> list[str]:
        return _resolve(schema, spec.get("items", spec) if spec.get("type") == "array" else spec).get(
            "enum", []
        )

    def parameter(path: str, name: str) -> dict[str, Any]:
        [operation] = schema["paths"][path].values()
        return next(p["schema"] for p in operation["parameters"] if p["name"] == name)

    assert enum_of(parameter("/api/patient-graph/wearables/readings", "metric")) == sorted(known_metrics())
    assert enum_of(parameter("/api/patient-graph/wearables/daily-stats", "metric")) == sorted(daily_metrics())
    assert enum_of(parameter("/api/wearables/{source}/sync", "source")) == list(accepted_sources())
    assert enum_of(components["ReadingOut"]["properties"]["metric"]) == sorted(known_metrics())
    assert enum_of(components["DailyStatOut"]["properties"]["metric"]) == sorted(daily_metrics())
    assert enum_of(components["ManualSyncBodyRequest"]["properties"]["source"]) == list(accepted_sources())
    assert enum_of(components["SyncRequest"]["properties"]["source"]) == list(accepted_sources())
    assert enum_of(components["Connection"]["properties"]["sources"]) == list(accepted_sources())
    assert enum_of(components["Problem"]["properties"]["code"]) == list(PROBLEMS)
    for component in ("SyncRequest", "Connection"):
        spec = components[component]["properties"]["error_code"]
        assert any(enum_of(s) == list(SyncErrorCode.values) for s in spec.get("oneOf", [spec]))


def _answer(status: int, content_type: str, body: bytes, path: str = "/api/nope") -> Any:
    request = httpx.Request("GET", f"http://127.0.0.1{path}")
    answer = httpx.Response(status, headers={"content-type": content_type}, content=body, request=request)
    answer.elapsed = timedelta(0)
    return SchemathesisResponse.from_any(answer)


@pytest.mark.parametrize(
    "answer",
    [
        _answer(404, "text/html", b"<h1>Not Found</h1>"),
        _answer(400, "application/json", b'{"error": {"code": "invalid_parameter"}}'),
        _answer(404, "application/problem+json", b'{"type": "/api/problems/not_found", "status": 404}'),
        # A documented code with another status, and an instance that is not the request's path.
        _answer(
            400,
            "application/problem+json",
            json.dumps(
                {
                    "type": "/api/problems/not_found",
                    "title": "Not found",
                    "status": 400,
                    "detail": "x",
                    "instance": "/api/nope",
                    "code": "not_found",
                }
            ).encode(),
        ),
        _answer(
            404,
            "application/problem+json",
            json.dumps(
                {
                    "type": "/api/problems/not_found",
                    "title": "Not found",
                    "status": 404,
                    "detail": "x",
                    "instance": "/api/elsewhere",
                    "code": "not_found",
                }
            ).encode(),
        ),
    ],
)
def test_the_problem_details_check_fails_an_error_that_is_not_a_conforming_problem(answer: Any) -> None:
    with pytest.raises(AssertionError):
        problem_details_conformance(None, answer, None)


def test_the_problem_details_check_passes_a_conforming_problem_and_any_success() -> None:
    body = {
        "type": "/api/problems/not_found",
        "title": "Not found",
        "status": 404,
        "detail": "No route.",
        "instance": "/api/nope",
        "code": "not_found",
        "errors": [{"field": "x", "message": "y"}],
    }
    problem_details_conformance(
        None, _answer(404, "application/problem+json", json.dumps(body).encode()), None
    )
    problem_details_conformance(None, _answer(200, "text/plain", b"ok"), None)
