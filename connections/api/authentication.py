"""Who is asking: Clerk session JWTs for the consumer app, an API key for the patient-graph service.

Clerk tokens are verified with pyjwt, RS256 only, against a PEM (`CLERK_JWT_KEY`, no network) or the
instance's JWKS (`CLERK_JWKS_URL`). Every failure is the same bare 401: which check failed is logged (never the
token) but not told to the caller. Every request verifies its token and reads its patient: nothing about a
session is remembered, so a patient deleted or unlinked by any process is refused on its next request.

The sandbox's development key (`sandbox/dev_clerk/`, published so `manage.py mint_token` works) is refused
unless DEBUG or SANDBOX_ENABLED is on, even when a deploy configures it by mistake.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, permissions
from rest_framework.request import Request

from connections.models import Patient

logger = logging.getLogger("loopsync.api.auth")

ALGORITHM = "RS256"
# JWKS cache: keys are re-read every hour; an unknown `kid` (a key rotation) refetches at most once a minute,
# so random kids from a client cannot turn us into an amplifier against Clerk.
JWKS_TTL_SECONDS = 3600.0
JWKS_UNKNOWN_KID_COOLDOWN_SECONDS = 60.0
JWKS_FETCH_TIMEOUT_SECONDS = 5.0
# A token is a few hundred bytes; anything this long is garbage and is not parsed.
MAX_TOKEN_LENGTH = 8192


class InvalidToken(Exception):
    """Why a token was rejected, for the log only."""


class JWKSCache:
    """The signing keys of one JWKS URL, by kid. Thread-safe; stale keys are kept when a refetch fails."""

    def __init__(self, url: str, *, clock: Any = time.monotonic) -> None:
        self.url = url
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, Any] = {}
        self._fetched_at: float | None = None
        self._last_attempt: float | None = None
        self.fetches = 0

    def key_for(self, kid: str | None) -> Any:
        if not kid:
            raise InvalidToken("no kid in header")
        with self._lock:
            now = self._clock()
            expired = self._fetched_at is None or now - self._fetched_at > JWKS_TTL_SECONDS
            unknown = kid not in self._keys
            cooled = (
                self._last_attempt is None or now - self._last_attempt >= JWKS_UNKNOWN_KID_COOLDOWN_SECONDS
            )
            if (expired or unknown) and cooled:
                self._refresh(now)
            key = self._keys.get(kid)
        if key is None:
            raise InvalidToken("unknown kid")
        return key

    def _refresh(self, now: float) -> None:
        self._last_attempt = now
        self.fetches += 1
        try:
            response = httpx.get(self.url, timeout=JWKS_FETCH_TIMEOUT_SECONDS, follow_redirects=False)
            response.raise_for_status()
            keys: dict[str, Any] = {}
            for jwk in response.json().get("keys", []):
                if jwk.get("kty") != "RSA" or not jwk.get("kid") or jwk.get("use", "sig") != "sig":
                    continue
                keys[jwk["kid"]] = jwt.PyJWK(jwk, algorithm=ALGORITHM).key
        except (httpx.HTTPError, ValueError, jwt.PyJWKError) as exc:
            # Keep serving the keys we have: a Clerk blip must not log every patient out.
            logger.warning("clerk jwks fetch failed", extra={"error": type(exc).__name__})
            return
        self._keys = keys
        self._fetched_at = now


@dataclass
class ClerkVerifier:
    issuer: str
    authorized_parties: frozenset[str]
    leeway: int = 5
    require_sid: bool = True
    pem_key: Any = None
    jwks: JWKSCache | None = None
    # Only local work (DEBUG or SANDBOX_ENABLED) may trust the published development key.
    allow_dev_key: bool = False
    required_claims: list[str] = field(default_factory=lambda: ["exp", "iat", "iss", "sub"])

    @classmethod
    def from_settings(cls) -> ClerkVerifier | None:
        if not (settings.CLERK_JWT_KEY or settings.CLERK_JWKS_URL):
            return None
        pem = None
        if settings.CLERK_JWT_KEY:
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            try:
                pem = load_pem_public_key(settings.CLERK_JWT_KEY.encode())
            except (ValueError, TypeError):
                # The system check (connections.E101) names the setting; here every token is refused.
                logger.error("CLERK_JWT_KEY is not a PEM public key; rejecting every token")
                return None
        allow_dev_key = _dev_key_allowed()
        if pem is not None and not allow_dev_key and _is_dev_key(pem):
            logger.error(
                "CLERK_JWT_KEY is the sandbox's development key, refused without DEBUG; rejecting every token"
            )
            return None
        return cls(
            issuer=settings.CLERK_ISSUER,
            authorized_parties=frozenset(settings.CLERK_AUTHORIZED_PARTIES),
            leeway=settings.CLERK_LEEWAY_SECONDS,
            require_sid=settings.CLERK_REQUIRE_SID,
            pem_key=pem,
            jwks=None if pem is not None else JWKSCache(settings.CLERK_JWKS_URL),
            allow_dev_key=allow_dev_key,
        )

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims, or InvalidToken."""
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("token too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("malformed") from None
        # Checked before any key lookup: `none` and HS256-with-the-public-key never reach decode.
        if header.get("alg") != ALGORITHM:
            raise InvalidToken("algorithm not allowed")
        if self.pem_key is not None:
            key = self.pem_key  # the development key was refused when the verifier was built
        else:
            key = self.jwks.key_for(header.get("kid"))  # type: ignore[union-attr]
            if not self.allow_dev_key and _is_dev_key(key):
                raise InvalidToken("development key outside development")
        required = [*self.required_claims, *(["sid"] if self.require_sid else [])]
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": required, "verify_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("not yet valid") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("wrong issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"missing claim {exc.claim}") from None
        except jwt.PyJWTError as exc:
            raise InvalidToken(type(exc).__name__) from None
        azp = claims.get("azp")
        if azp is not None and azp not in self.authorized_parties:
            raise InvalidToken("azp not authorized")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 64:
            raise InvalidToken("bad sub")
        return claims


def _dev_key_allowed() -> bool:
    return bool(settings.DEBUG or getattr(settings, "SANDBOX_ENABLED", False))


def _is_dev_key(key: Any) -> bool:
    # Imported here: production needs the sandbox package only for this comparison, and only once built.
    from sandbox import dev_issuer

    return dev_issuer.is_dev_key(key)


_verifier_lock = threading.Lock()
_verifier: tuple[tuple[Any, ...], ClerkVerifier | None] | None = None


def clerk_verifier() -> ClerkVerifier | None:
    """One verifier (and JWKS cache) per process, rebuilt only when the Clerk settings change (tests)."""
    global _verifier
    fingerprint = (
        settings.CLERK_JWKS_URL,
        settings.CLERK_JWT_KEY,
        settings.CLERK_ISSUER,
        tuple(settings.CLERK_AUTHORIZED_PARTIES),
        settings.CLERK_LEEWAY_SECONDS,
        settings.CLERK_REQUIRE_SID,
        _dev_key_allowed(),
    )
    current = _verifier
    if current is not None and current[0] == fingerprint:
        return current[1]
    with _verifier_lock:
        if _verifier is None or _verifier[0] != fingerprint:
            _verifier = (fingerprint, ClerkVerifier.from_settings())
        return _verifier[1]


@dataclass
class ClerkUser:
    """The authenticated consumer: a Clerk user, and the patient it is (None if it has no patient record)."""

    clerk_user_id: str
    patient: Patient | None
    is_authenticated: bool = True
    is_staff: bool = False

    @property
    def pk(self) -> str:
        return self.clerk_user_id


def _bearer(request: Request) -> str | None:
    header = authentication.get_authorization_header(request)
    if not header:
        return None
    parts = header.split()
    if len(parts) != 2 or parts[0].lower() != b"bearer":
        raise exceptions.AuthenticationFailed()
    try:
        return parts[1].decode("ascii")
    except UnicodeDecodeError:
        raise exceptions.AuthenticationFailed() from None


class ClerkAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer <Clerk session JWT>`; `sub` is `Patient.clerk_user_id`."""

    def authenticate(self, request: Request) -> tuple[ClerkUser, dict[str, Any]] | None:
        token = _bearer(request)
        if token is None:
            return None
        verifier = clerk_verifier()
        if verifier is None:
            logger.warning("clerk token rejected", extra={"reason": "clerk is not configured"})
            raise exceptions.AuthenticationFailed()
        try:
            claims = verifier.verify(token)
        except InvalidToken as exc:
            logger.info("clerk token rejected", extra={"reason": str(exc)})
            raise exceptions.AuthenticationFailed() from None
        # Read on every request, never remembered: a patient deleted or unlinked in another process must not
        # get through on a token that is still valid (Clerk tokens live about a minute).
        try:
            # get(), not first(): the id is unique, and first()'s ORDER BY costs a fifth of this lookup.
            patient: Patient | None = Patient.objects.get(clerk_user_id=claims["sub"])
        except Patient.DoesNotExist:
            patient = None
        return ClerkUser(clerk_user_id=claims["sub"], patient=patient), claims

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


class IsPatient(permissions.BasePermission):
    message = "This account has no patient record."

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        return isinstance(user, ClerkUser) and user.patient is not None


@dataclass
class ServiceUser:
    """The patient-graph service principal (a sync worker writing through the API)."""

    is_authenticated: bool = True
    is_staff: bool = False
    pk: str = "patient-graph-service"


class PatientGraphKeyAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer <PATIENT_GRAPH_API_KEY>`; with no key configured the service API is closed."""

    def authenticate(self, request: Request) -> tuple[ServiceUser, None] | None:
        presented = _bearer(request)
        if presented is None:
            return None
        expected = settings.JUNCTION_SYNC.patient_graph_key
        # Digests first: compare_digest on equal-length inputs leaks nothing about the key's length.
        if not expected or not hmac.compare_digest(
            hashlib.sha256(presented.encode()).digest(), hashlib.sha256(expected.encode()).digest()
        ):
            raise exceptions.AuthenticationFailed()
        return ServiceUser(), None

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="patient-graph"'


class IsPatientGraphService(permissions.BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.user, ServiceUser)


class ClerkAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = ClerkAuthentication
    name = "ClerkSession"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "Clerk session token.",
        }


class PatientGraphKeyScheme(OpenApiAuthenticationExtension):
    target_class = PatientGraphKeyAuthentication
    name = "PatientGraphKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "PATIENT_GRAPH_API_KEY."}
