"""The sandbox's stable development Clerk issuer and `manage.py mint_token` (issue 17, item 10): every start
serves the same key, a minted token reads the API in local work, and production-like settings refuse it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from connections.models import Patient
from sandbox import SandboxServer, dev_issuer
from sandbox.clerk import DEFAULT_AZP
from sandbox.management.commands.mint_token import Command as MintToken
from tests.api_helpers import client_for

ROOT = Path(__file__).resolve().parent.parent
DAILY_STATS = "/api/patient-graph/wearables/daily-stats"


def _jwks_of_a_fresh_sandbox() -> dict[str, Any]:
    """Starts `python -m sandbox` (what `make sandbox` runs) on a free port, reads its JWKS, stops it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "--port", "0", "--users", "1"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().split()[-1]
        return httpx.get(f"{base_url}/clerk/.well-known/jwks.json", timeout=10).json()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_two_sandbox_starts_serve_the_same_development_key() -> None:
    first, second = _jwks_of_a_fresh_sandbox(), _jwks_of_a_fresh_sandbox()
    assert first == second
    (key,) = first["keys"]
    assert key["kid"] == dev_issuer.DEV_KID
    assert dev_issuer.is_dev_key(jwt.PyJWK(key).key)


def test_the_published_public_key_is_the_private_keys_half() -> None:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    public = load_pem_public_key(dev_issuer.public_pem().encode())
    assert dev_issuer.is_dev_key(public)


def test_test_sandboxes_do_not_sign_with_the_development_key(sandbox: SandboxServer) -> None:
    # Nothing outside a test run can sign for the test sandbox's issuer.
    assert sandbox.clerk.kid != dev_issuer.DEV_KID


@pytest.fixture
def dev_sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(port=0, users=1, dev_clerk_key=True) as server:
        yield server


@pytest.fixture(params=["jwks", "pem"])
def local_settings(request: pytest.FixtureRequest, settings: Any, dev_sandbox: SandboxServer) -> Any:
    """The README's local set-up: DEBUG, and the sandbox issuer by its JWKS or by the public PEM."""
    settings.DEBUG = True
    settings.CLERK_ISSUER = dev_sandbox.clerk_url
    settings.CLERK_AUTHORIZED_PARTIES = [DEFAULT_AZP]
    if request.param == "jwks":
        settings.CLERK_JWKS_URL = f"{dev_sandbox.clerk_url}/.well-known/jwks.json"
        settings.CLERK_JWT_KEY = ""
    else:
        settings.CLERK_JWKS_URL = ""
        settings.CLERK_JWT_KEY = dev_issuer.public_pem()
    return settings


def _mint(*args: str) -> str:
    out = StringIO()
    call_command(MintToken(), *args, stdout=out)
    return out.getvalue().strip()


@pytest.mark.django_db
def test_a_minted_token_reads_the_api_locally_and_is_refused_with_production_settings(
    local_settings: Any,
) -> None:
    patient = Patient.objects.create(time_zone="UTC")  # as synced from the sandbox: no Clerk user id yet
    token = _mint(str(patient.pk), "--ttl", "600")
    patient.refresh_from_db()
    assert patient.clerk_user_id == f"user_dev_{patient.pk}"
    assert client_for(token).get(DAILY_STATS).status_code == 200
    # By Clerk user id too.
    assert client_for(_mint(patient.clerk_user_id)).get(DAILY_STATS).status_code == 200

    # Production-like: no DEBUG, no sandbox. Even with the development key configured, its tokens are refused.
    local_settings.DEBUG = False
    local_settings.SANDBOX_ENABLED = False
    assert client_for(token).get(DAILY_STATS).status_code == 401
    with pytest.raises(CommandError, match="local work"):
        _mint(str(patient.pk))


@pytest.mark.django_db
def test_mint_token_names_an_unknown_patient(local_settings: Any) -> None:
    with pytest.raises(CommandError, match="No patient with id 999999"):
        _mint("999999")
    with pytest.raises(CommandError, match="user_nobody"):
        _mint("user_nobody")
