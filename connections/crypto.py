"""Encryption at rest for provider credentials: a model field over MultiFernet.

Keys come from FIELD_ENCRYPTION_KEYS (settings, validated at start-up): the first encrypts, every key decrypts,
so a key rotates by putting the new one first and re-saving the rows (`manage.py rotate_credentials`).
A value that no key decrypts raises CredentialDecryptError; ciphertext is never handed on as if it were a token.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db import models

# Every stored value starts with this, so an unencrypted value in the column is detected, not sent to a provider.
PREFIX = "fernet:"


class CredentialDecryptError(RuntimeError):
    """No configured key decrypts a stored credential (wrong FIELD_ENCRYPTION_KEYS, or a tampered row)."""


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(key.encode()) for key in keys])


def fernet() -> MultiFernet:
    return _fernet(tuple(settings.FIELD_ENCRYPTION_KEYS))


def encrypt(plaintext: str) -> str:
    return PREFIX + fernet().encrypt(plaintext.encode()).decode()


def decrypt(stored: str, *, label: str = "credential") -> str:
    if not stored.startswith(PREFIX):
        raise CredentialDecryptError(f"{label} is not encrypted in the database")
    try:
        return fernet().decrypt(stored[len(PREFIX) :].encode()).decode()
    except InvalidToken:
        raise CredentialDecryptError(
            f"{label} cannot be decrypted with FIELD_ENCRYPTION_KEYS (wrong or rotated-out key)"
        ) from None


def rotate(stored: str) -> str:
    """Re-encrypt with the first key (MultiFernet.rotate keeps the original timestamp)."""
    if not stored.startswith(PREFIX):
        return encrypt(stored)
    try:
        return PREFIX + fernet().rotate(stored[len(PREFIX) :].encode()).decode()
    except InvalidToken:
        raise CredentialDecryptError("a credential cannot be decrypted with FIELD_ENCRYPTION_KEYS") from None


class EncryptedTextField(models.TextField):
    """A text column stored as `fernet:<token>`; the empty string stays empty (nothing to hide)."""

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> str:
        if value is None or value == "":
            return value
        return decrypt(value, label=f"{self.model.__name__}.{self.name}")

    def get_prep_value(self, value: Any) -> Any:
        value = super().get_prep_value(value)
        if value is None or value == "":
            return value
        return encrypt(str(value))

    def get_db_prep_value(self, value: Any, connection: Any, prepared: bool = False) -> Any:
        # Lookups on ciphertext cannot work (every encryption differs); only exact saves reach here.
        return self.get_prep_value(value) if not prepared else value
