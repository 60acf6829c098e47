"""Helpers for the REST API tests: patients with Clerk ids and Junction connections, authenticated clients."""

from __future__ import annotations

from typing import Any

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


def error_of(response: Any) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    return body["error"]
