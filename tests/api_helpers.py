"""Helpers for the REST API tests: patients with Clerk ids and Junction connections, authenticated clients."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from rest_framework.test import APIClient

from connections.models import Connection, Patient, Provider
from sandbox import SandboxServer


def make_patient(sandbox: SandboxServer, user_index: int, clerk_user_id: str) -> Patient:
    """A patient whose Junction user is the sandbox's user `user_index` (odd indexes also wear a CGM)."""
    user = sandbox.junction.users[user_index]
    patient = Patient.objects.create(
        junction_user_id=user.user_id, clerk_user_id=clerk_user_id, time_zone=user.time_zone
    )
    Connection.objects.create(patient=patient, provider=Provider.JUNCTION)
    return patient


def wearable_of(sandbox: SandboxServer, patient: Patient) -> str:
    """The Junction provider slug of the patient's wearable (oura, garmin, ...)."""
    return sandbox.junction.user(patient.junction_user_id).provider


def client_for(token: str | None) -> APIClient:
    client = APIClient()
    if token is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


PROBLEM_MEMBERS = {"type", "title", "status", "detail", "instance", "code"}


def error_of(response: Any) -> dict[str, Any]:
    """The RFC 9457 problem an API error answers with, its required members checked."""
    from connections.api.errors import PROBLEMS

    assert response.headers["Content-Type"] == "application/problem+json", response.headers["Content-Type"]
    body = response.json()
    assert PROBLEM_MEMBERS <= set(body), body
    assert body["status"] == response.status_code == PROBLEMS[body["code"]].status, body
    assert body["type"] == f"/api/problems/{body['code']}" and body["title"] == PROBLEMS[body["code"]].title
    request = getattr(
        response, "wsgi_request", None
    )  # a Django test response; else httpx's, on a live server
    path = request.path if request is not None else response.request.url.path
    assert unquote(body["instance"]) == path and "?" not in body["instance"], body
    return body


def field_errors_of(problem: dict[str, Any]) -> dict[str, list[str]]:
    """A problem's `errors` list as {field: [messages]}."""
    fields: dict[str, list[str]] = {}
    for error in problem.get("errors", []):
        assert set(error) <= {"field", "message"}, error
        fields.setdefault(error.get("field", ""), []).append(error["message"])
    return fields
