"""Clerk session JWT verification: every bad token is the same bare 401; a good one maps `sub` to a patient."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
import time_machine
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from connections.api.authentication import (
    JWKS_UNKNOWN_KID_COOLDOWN_SECONDS,
    InvalidToken,
    JWKSCache,
)
from connections.models import Patient
from sandbox import SandboxServer
from sandbox.clerk import ClerkSandbox
from tests.api_helpers import client_for, error_of, make_patient

pytestmark = pytest.mark.django_db

CONNECTIONS = "/api/patient-graph/wearables/connections"


@pytest.fixture
def patient(clean_sandbox: SandboxServer, clerk: ClerkSandbox):
    return make_patient(clean_sandbox, 0, "user_alice")


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def assert_rejected(token: str | None) -> None:
    response = client_for(token).get(CONNECTIONS)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    # One message whatever failed: nothing that tells an attacker which check they tripped.
    problem = error_of(response)
    assert {k: v for k, v in problem.items() if k not in {"type", "title", "status", "instance"}} == {
        "code": "not_authenticated",
        "detail": "Authentication credentials were missing or not valid.",
    }


def test_a_valid_session_token_reads_the_patients_own_connections(patient, clerk: ClerkSandbox) -> None:
    response = client_for(clerk.mint("user_alice")).get(CONNECTIONS)

    assert response.status_code == 200
    [connection] = response.json()["results"]
    assert connection["provider"] == "junction"


def test_missing_header_is_401(patient) -> None:
    assert_rejected(None)


def test_expired_token_is_401_beyond_the_leeway_but_accepted_within_it(patient, clerk: ClerkSandbox) -> None:
    now = time.time()
    assert_rejected(clerk.mint("user_alice", now=now - 120, ttl=60))
    within = clerk.mint("user_alice", now=now - 62, ttl=60)  # expired 2 s ago; leeway is 5 s
    assert client_for(within).get(CONNECTIONS).status_code == 200


def test_not_yet_valid_token_is_401(patient, clerk: ClerkSandbox) -> None:
    assert_rejected(clerk.mint("user_alice", nbf=int(time.time()) + 120))


def test_wrong_issuer_is_401(patient, clerk: ClerkSandbox) -> None:
    assert_rejected(clerk.mint("user_alice", iss="https://clerk.evil.example"))


def test_unauthorized_party_is_401_and_a_token_without_azp_is_accepted(patient, clerk: ClerkSandbox) -> None:
    assert_rejected(clerk.mint("user_alice", azp="https://evil.example"))
    assert client_for(clerk.mint("user_alice", azp=None)).get(CONNECTIONS).status_code == 200


def test_token_signed_by_another_key_is_401(patient, clerk: ClerkSandbox) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert_rejected(clerk.mint("user_alice", key=other))  # same kid header, wrong signature


def test_alg_none_is_401(patient, clerk: ClerkSandbox) -> None:
    header = _b64({"alg": "none", "typ": "JWT", "kid": clerk.kid})
    payload = _b64(jwt.decode(clerk.mint("user_alice"), options={"verify_signature": False}))
    assert_rejected(f"{header}.{payload}.")


def test_hs256_signed_with_the_public_key_is_401(patient, clerk: ClerkSandbox) -> None:
    public_pem = clerk.public_pem().encode()
    claims = jwt.decode(clerk.mint("user_alice"), options={"verify_signature": False})
    # pyjwt refuses to sign HS256 with a PEM; forge it the way an attacker would.
    import hashlib
    import hmac

    header = _b64({"alg": "HS256", "typ": "JWT", "kid": clerk.kid})
    body = _b64(claims)
    signature = hmac.new(public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    assert_rejected(f"{header}.{body}.{base64.urlsafe_b64encode(signature).decode().rstrip('=')}")


def test_tampered_payload_is_401(patient, clerk: ClerkSandbox) -> None:
    header, payload, signature = clerk.mint("user_alice").split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "user_mallory"
    assert_rejected(f"{header}.{_b64(claims)}.{signature}")


def test_missing_sub_or_sid_is_401(patient, clerk: ClerkSandbox) -> None:
    assert_rejected(clerk.mint(None))
    # A JWT-template token (same keys, no sid) is not a session.
    assert_rejected(clerk.mint("user_alice", sid=None))


@pytest.mark.parametrize(
    "garbage", ["garbage", "a.b.c", "eyJhbGciOiJSUzI1NiJ9..", "x" * 9000, "Bearer", "ümlaut.ä.ö"]
)
def test_garbage_is_401(patient, garbage: str) -> None:
    try:
        assert_rejected(garbage)
    except UnicodeEncodeError:
        pytest.skip("the test client cannot send non-latin-1 headers")


def test_wrong_scheme_is_401(patient, clerk: ClerkSandbox) -> None:
    client = client_for(None)
    client.credentials(HTTP_AUTHORIZATION=f"Token {clerk.mint('user_alice')}")
    assert client.get(CONNECTIONS).status_code == 401


def test_a_valid_token_without_a_patient_record_is_403(patient, clerk: ClerkSandbox) -> None:
    response = client_for(clerk.mint("user_nobody")).get(CONNECTIONS)
    assert response.status_code == 403
    assert error_of(response)["code"] == "permission_denied"


def test_networkless_pem_key_verifies_without_fetching_the_jwks(
    patient, clerk: ClerkSandbox, clean_sandbox: SandboxServer, settings
) -> None:
    settings.CLERK_JWKS_URL = ""
    settings.CLERK_JWT_KEY = clerk.public_pem()

    assert client_for(clerk.mint("user_alice")).get(CONNECTIONS).status_code == 200
    assert_rejected(clerk.mint("user_alice", iss="https://other.example"))
    assert clean_sandbox.requests.snapshot(provider="clerk") == []


def test_jwks_is_fetched_once_and_cached(patient, clerk: ClerkSandbox, clean_sandbox: SandboxServer) -> None:
    for _ in range(5):
        assert client_for(clerk.mint("user_alice")).get(CONNECTIONS).status_code == 200
    assert len(clean_sandbox.requests.snapshot(provider="clerk")) == 1


def test_unknown_kids_refetch_the_jwks_at_most_once_a_minute(clean_sandbox: SandboxServer) -> None:
    clerk = clean_sandbox.clerk
    now = [1000.0]
    cache = JWKSCache(f"{clean_sandbox.clerk_url}/.well-known/jwks.json", clock=lambda: now[0])
    cache.key_for(clerk.kid)
    now[0] += JWKS_UNKNOWN_KID_COOLDOWN_SECONDS
    for i in range(20):  # an attacker's random kids
        with pytest.raises(InvalidToken):
            cache.key_for(f"kid_random_{i}")
    assert cache.fetches == 2  # the first load, then one refetch for the first unknown kid

    new_kid = clerk.rotate()  # Clerk rotates its key
    with pytest.raises(InvalidToken):
        cache.key_for(new_kid)  # still cooling down
    now[0] += JWKS_UNKNOWN_KID_COOLDOWN_SECONDS
    assert cache.key_for(new_kid) is not None
    assert cache.fetches == 3


def test_keys_are_kept_when_a_refetch_fails(clean_sandbox: SandboxServer) -> None:
    clerk = clean_sandbox.clerk
    now = [0.0]
    cache = JWKSCache(f"{clean_sandbox.clerk_url}/.well-known/jwks.json", clock=lambda: now[0])
    cache.key_for(clerk.kid)
    clean_sandbox.faults.add({"provider": "clerk", "kind": "status", "status": 503, "count": 1})
    now[0] += 7200  # past the TTL: refetch, which fails
    assert cache.key_for(clerk.kid) is not None


def test_a_pem_that_is_not_a_key_rejects_every_token_and_fails_the_system_check(
    patient, clerk: ClerkSandbox, settings
) -> None:
    from connections.checks import rest_api_settings_check

    settings.CLERK_JWT_KEY = "-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----"
    assert_rejected(clerk.mint("user_alice"))
    assert "connections.E101" in {m.id for m in rest_api_settings_check(None)}


def test_clerk_without_an_issuer_fails_the_system_check(clerk: ClerkSandbox, settings) -> None:
    from connections.checks import rest_api_settings_check

    settings.CLERK_ISSUER = ""
    assert "connections.E102" in {m.id for m in rest_api_settings_check(None)}
    settings.CLERK_ISSUER = clerk.issuer
    assert rest_api_settings_check(None) == []


def test_rsa_private_key_is_not_accepted_as_public_pem(clerk: ClerkSandbox, settings) -> None:
    from connections.checks import rest_api_settings_check

    settings.CLERK_JWT_KEY = clerk.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    assert "connections.E101" in {m.id for m in rest_api_settings_check(None)}


# --- Nothing remembered: every request verifies its token and reads its patient --------------------------------


def test_a_token_used_again_is_still_refused_past_its_exp(patient, clerk: ClerkSandbox) -> None:
    token = clerk.mint("user_alice", ttl=20)
    with time_machine.travel(time.time(), tick=True) as traveller:
        assert client_for(token).get(CONNECTIONS).status_code == 200
        traveller.shift(20 + 6)  # past exp and the 5 s leeway
        assert_rejected(token)


def test_a_patient_unlinked_by_another_process_is_refused_at_once(patient, clerk: ClerkSandbox) -> None:
    token = clerk.mint("user_alice", ttl=3600)
    assert client_for(token).get(CONNECTIONS).status_code == 200

    # A bulk update sends no signals, as a change made by another worker reaches none of this one's.
    Patient.objects.filter(pk=patient.pk).update(clerk_user_id="user_moved")

    assert client_for(token).get(CONNECTIONS).status_code == 403


def test_deleting_a_patient_refuses_its_still_valid_token_at_once(patient, clerk: ClerkSandbox) -> None:
    token = clerk.mint("user_alice", ttl=3600)
    assert client_for(token).get(CONNECTIONS).status_code == 200

    patient.delete()

    assert client_for(token).get(CONNECTIONS).status_code == 403


def test_a_patient_deleted_by_another_process_is_refused_at_once(
    clean_sandbox: SandboxServer, clerk: ClerkSandbox
) -> None:
    from django.db import connection

    lone = Patient.objects.create(
        clerk_user_id="user_lone"
    )  # no connection rows: one plain DELETE removes it
    token = clerk.mint("user_lone", ttl=3600)
    daily_stats = "/api/patient-graph/wearables/daily-stats"
    assert client_for(token).get(daily_stats).status_code == 200

    # Plain SQL, as another worker's delete arrives here: no signal, no hook of this process runs.
    with connection.cursor() as db:
        db.execute("DELETE FROM patients WHERE id = %s", [lone.pk])

    assert client_for(token).get(daily_stats).status_code == 403
    sync = client_for(token).post("/api/patient-graph/wearables/sync", {"source": "oura"}, format="json")
    assert sync.status_code == 403


def test_every_request_checks_the_signature(
    patient, clerk: ClerkSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = clerk.mint("user_alice")
    real_decode = jwt.decode
    decoded: list[str] = []
    monkeypatch.setattr(
        jwt, "decode", lambda token, *a, **k: decoded.append(token) or real_decode(token, *a, **k)
    )

    for _ in range(3):
        assert client_for(token).get(CONNECTIONS).status_code == 200

    assert decoded == [token] * 3


def test_a_patient_created_after_a_refused_request_is_let_in(
    clean_sandbox: SandboxServer, clerk: ClerkSandbox
) -> None:
    token = clerk.mint("user_late")
    assert client_for(token).get(CONNECTIONS).status_code == 403

    make_patient(clean_sandbox, 0, "user_late")

    assert client_for(token).get(CONNECTIONS).status_code == 200


def test_a_patient_change_is_seen_by_the_next_request(
    patient, clerk: ClerkSandbox, django_capture_on_commit_callbacks
) -> None:
    token = clerk.mint("user_alice")
    with django_capture_on_commit_callbacks(execute=True):
        patient.clerk_user_id = "user_renamed"
        patient.save()
        Patient.objects.filter(pk=patient.pk).update(clerk_user_id="user_alice")
        assert client_for(token).get(CONNECTIONS).status_code == 200
        Patient.objects.filter(pk=patient.pk).update(clerk_user_id="user_renamed")

    assert client_for(token).get(CONNECTIONS).status_code == 403
