"""Every error under /api/ is an RFC 9457 problem (application/problem+json) with a stable code: DRF's own
errors, Django's 404 for a route that does not exist, its 500 for an unhandled exception and its 400 for a bad
Host; routes outside /api/ keep Django's pages."""

from __future__ import annotations

import pytest
from django.http import HttpRequest, HttpResponse
from django.urls import include, path
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from connections.api.errors import PROBLEMS
from sandbox import SandboxServer
from sandbox.clerk import ClerkSandbox
from tests.api_helpers import client_for, error_of, make_patient

CONNECTIONS = "/api/patient-graph/wearables/connections"
SYNC = "/api/patient-graph/wearables/sync"
SECRET = "patient-secret-value-7781"


class _BrokenAPIView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    def get(self, request: Request) -> Response:
        raise RuntimeError(SECRET)


def _broken_django_view(request: HttpRequest) -> HttpResponse:
    raise ValueError(SECRET)


# This module is also a URLconf (pytest.mark.urls below): the real routes plus two that fail.
urlpatterns = [
    path("api/test/broken-drf", _BrokenAPIView.as_view()),
    path("api/test/broken-django", _broken_django_view),
    path("not-api/broken", _broken_django_view),
    path("", include("loopsync.urls")),
]


@pytest.fixture
def alice(clean_sandbox: SandboxServer):
    return make_patient(clean_sandbox, 0, "user_alice")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url",
    ["/api/nope", "/api/patient-graph/wearables/nope", "/api/patient-graph/wearables/sync/1/x", "/api/"],
)
def test_an_unknown_api_route_is_a_404_problem_not_an_html_page(client, url: str) -> None:
    response = client.get(url, {"q": "secret-query-value"})

    assert response.status_code == 404
    problem = error_of(response)
    assert problem["code"] == "not_found" and problem["instance"] == url
    assert b"secret-query-value" not in response.content


@pytest.mark.django_db
def test_an_unknown_api_route_is_a_problem_with_debug_on_too(client, settings) -> None:
    settings.DEBUG = True
    response = client.get("/api/nope")

    assert response.status_code == 404 and error_of(response)["code"] == "not_found"


@pytest.mark.django_db
def test_routes_outside_the_api_keep_djangos_404(client) -> None:
    response = client.get("/nope")

    assert response.status_code == 404
    assert not response["Content-Type"].startswith("application/problem+json")


@pytest.mark.urls(__name__)
@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/api/test/broken-drf", "/api/test/broken-django"])
def test_an_unhandled_exception_under_api_is_a_500_problem_that_tells_nothing(
    client, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    client.raise_request_exception = False

    response = client.get(url)

    assert response.status_code == 500
    problem = error_of(response)
    assert problem["code"] == "internal_error"
    assert SECRET.encode() not in response.content and b"Traceback" not in response.content
    # Django's own handling still ran: the failure is logged (and so reported to Sentry) with its traceback.
    assert any(r.name == "django.request" and r.exc_info for r in caplog.records)


@pytest.mark.urls(__name__)
@pytest.mark.django_db
def test_an_unhandled_exception_outside_the_api_keeps_djangos_500(client) -> None:
    client.raise_request_exception = False

    response = client.get("/not-api/broken")

    assert response.status_code == 500
    assert not response["Content-Type"].startswith("application/problem+json")


@pytest.mark.django_db
def test_a_bad_host_under_api_is_a_400_problem(client) -> None:
    response = client.get("/api/ping", HTTP_HOST="evil.example")

    assert response.status_code == 400 and error_of(response)["code"] == "bad_request"


@pytest.mark.django_db
def test_a_method_the_route_does_not_take_is_a_405_problem_naming_the_allowed_ones(
    alice, clerk: ClerkSandbox
) -> None:
    response = client_for(clerk.mint("user_alice")).delete(CONNECTIONS)

    assert response.status_code == 405
    assert error_of(response)["code"] == "method_not_allowed"
    assert "GET" in response["Allow"]


@pytest.mark.django_db
def test_an_accept_header_without_json_is_a_406_problem(alice, clerk: ClerkSandbox) -> None:
    response = client_for(clerk.mint("user_alice")).get(CONNECTIONS, HTTP_ACCEPT="text/html")

    assert response.status_code == 406 and error_of(response)["code"] == "not_acceptable"


@pytest.mark.django_db
def test_a_body_that_is_not_json_is_a_415_problem(alice, clerk: ClerkSandbox) -> None:
    response = client_for(clerk.mint("user_alice")).post(SYNC, "source=oura", content_type="text/plain")

    assert response.status_code == 415 and error_of(response)["code"] == "unsupported_media_type"


@pytest.mark.django_db
def test_a_missing_token_is_a_401_problem_with_a_bearer_challenge(alice) -> None:
    response = client_for(None).get(CONNECTIONS)

    assert response.status_code == 401 and response["WWW-Authenticate"].startswith("Bearer")
    assert error_of(response)["code"] == "not_authenticated"


@pytest.mark.django_db
def test_a_validation_error_names_each_field(alice, clerk: ClerkSandbox) -> None:
    response = client_for(clerk.mint("user_alice")).post(SYNC, {"source": ""}, format="json")

    problem = error_of(response)
    assert problem["code"] == "invalid_request"
    assert problem["errors"] == [{"field": "source", "message": "This field may not be blank."}]
    assert problem["detail"] == "source: This field may not be blank."


@pytest.mark.django_db
def test_every_problem_type_uri_documents_its_code(client) -> None:
    for code, problem in PROBLEMS.items():
        response = client.get(problem.type)
        assert response.status_code == 200
        assert response.json() == {
            "type": f"/api/problems/{code}",
            "code": code,
            "status": problem.status,
            "title": problem.title,
            "description": problem.description,
        }
    assert error_of(client.get("/api/problems/no_such_code"))["code"] == "not_found"


def test_the_codes_are_unique_snake_case_and_each_has_an_error_status() -> None:
    for code, problem in PROBLEMS.items():
        assert code == problem.code and code.isidentifier() and code == code.lower()
        assert 400 <= problem.status <= 599 and problem.title and problem.description
