"""The sandbox's stable development Clerk issuer: a published key pair (`sandbox/dev_clerk/`) and its fixed kid.

The key is public knowledge, so it is only ever trusted with DEBUG or SANDBOX_ENABLED on: the API refuses a
token signed with it otherwise (`connections.api.authentication`), whatever CLERK_* says. `make sandbox`
(`python -m sandbox`) signs with it, so a token from `manage.py mint_token` survives sandbox restarts.
Importable without Django.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

KEY_DIR = Path(__file__).resolve().parent / "dev_clerk"
# Fixed, and named so that nobody mistakes it for a real Clerk instance's key id in a log or a JWKS.
DEV_KID = "ins_loopsync_development_only"
# The sandbox's default port (`make sandbox`); its Clerk issuer is the base URL plus /clerk, as for any port.
DEV_PORT = 8765
DEV_ISSUER = f"http://127.0.0.1:{DEV_PORT}/clerk"
DEV_JWKS_URL = f"{DEV_ISSUER}/.well-known/jwks.json"


@cache
def private_key() -> rsa.RSAPrivateKey:
    key = load_pem_private_key((KEY_DIR / "private.pem").read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def public_pem() -> str:
    """The value for CLERK_JWT_KEY in local work (the same text as sandbox/dev_clerk/public.pem)."""
    return (KEY_DIR / "public.pem").read_text()


@cache
def modulus() -> int:
    return private_key().public_key().public_numbers().n


def is_dev_key(key: object) -> bool:
    """Whether `key` (a public key from a PEM or a JWKS) is the development key."""
    return isinstance(key, rsa.RSAPublicKey) and key.public_numbers().n == modulus()
