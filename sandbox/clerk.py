"""A stand-in for a Clerk instance's Frontend API: its JWKS, and session tokens signed with its keys.

Serves `GET /clerk/.well-known/jwks.json` exactly as Clerk does (`{"keys": [{"kty": "RSA", "kid", "use": "sig",
"alg": "RS256", "n", "e"}]}`). `mint()` signs a session token with Clerk's claims (`iss`, `sub`, `sid`, `azp`,
`iat`, `nbf`, `exp`; one-minute lifetime by default) for tests, the benchmark and local demos.

Tests get a fresh key per instance (nothing outside the run can sign for it); `dev_key=True` (the command-line
sandbox) starts from the published development key of `sandbox.dev_issuer` instead, so every start serves
the same kid and a token minted by `manage.py mint_token` stays valid across restarts.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sandbox import dev_issuer
from sandbox.base import Request, Response, json_response

SESSION_TOKEN_TTL_SECONDS = 60
DEFAULT_AZP = "http://localhost:3000"


class ClerkSandbox:
    name = "clerk"
    prefix = "/clerk"

    def __init__(self, *, dev_key: bool = False) -> None:
        self._lock = threading.Lock()
        self._keys: list[tuple[str, rsa.RSAPrivateKey]] = []
        self.issuer = ""  # set by the server once its port is known
        if dev_key:
            self._keys.append((dev_issuer.DEV_KID, dev_issuer.private_key()))
        else:
            self.rotate()

    # ------------------------------------------------------------------------------------ keys, tokens

    def rotate(self) -> str:
        """Add a new signing key (the newest signs); returns its kid. Old keys stay published, as Clerk does."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        kid = f"ins_{uuid.uuid4().hex[:24]}"
        with self._lock:
            self._keys.append((kid, key))
        return kid

    @property
    def kid(self) -> str:
        return self._keys[-1][0]

    @property
    def private_key(self) -> rsa.RSAPrivateKey:
        return self._keys[-1][1]

    def public_pem(self) -> str:
        return (
            self.private_key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    def mint(
        self,
        subject: str | None,
        *,
        ttl: int = SESSION_TOKEN_TTL_SECONDS,
        now: float | None = None,
        headers: dict[str, Any] | None = None,
        key: Any = None,
        algorithm: str = "RS256",
        **claims: Any,
    ) -> str:
        """A Clerk-shaped session token for `subject` (None: no `sub` claim); any claim can be overridden or removed (value None)."""
        issued = int(now if now is not None else time.time())
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "sid": f"sess_{uuid.uuid4().hex[:24]}",
            "azp": DEFAULT_AZP,
            "iat": issued,
            "nbf": issued - 5,
            "exp": issued + ttl,
        }
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        return jwt.encode(
            payload,
            key if key is not None else self.private_key,
            algorithm=algorithm,
            headers={"kid": self.kid, **(headers or {})},
        )

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            keys = list(self._keys)
        published = []
        for kid, key in keys:
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            published.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": published}

    # ------------------------------------------------------------------------------------ provider protocol

    def user_id_for(self, method: str, subpath: str) -> str | None:
        return None

    def handle(self, request: Request) -> Response:
        if request.subpath == "/.well-known/jwks.json" and request.method == "GET":
            return json_response(200, self.jwks())
        return json_response(404, {"detail": "Not Found"})

    def reset(self) -> None:
        """Keys survive a reset: tokens minted before it stay verifiable."""
