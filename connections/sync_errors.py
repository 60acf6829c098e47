"""The one classification of a failed sync into a stable `SyncErrorCode`, from the engine's failure classes
(providers/base.py's ProviderError family, contract.py's CredentialsRefused and InvalidPayload). The engine calls
it where it catches a failure; the API shows the code and its label, never the scrubbed internal message."""

from __future__ import annotations

from connections.models import SyncErrorCode
from connections.providers.base import (
    ProviderAuthError,
    ProviderBadResponse,
    ProviderError,
    ProviderNotFound,
    ProviderRateLimited,
    ProviderRequestError,
    ProviderTimeout,
    ProviderUnavailable,
)
from connections.providers.contract import CredentialsRefused, InvalidPayload
from connections.tokens import ConnectionRevoked, RefreshInDoubt


def sync_error_code(exc: BaseException) -> SyncErrorCode:
    if isinstance(exc, ConnectionRevoked | RefreshInDoubt):
        # The provider refused the patient's grant (in doubt: maybe after our own lost rotation; either way
        # only a reconnect helps if it persists).
        return SyncErrorCode.CREDENTIALS_REVOKED
    if isinstance(exc, CredentialsRefused):
        # Not dead: the provider refused our client (configuration), not the patient's grant.
        return SyncErrorCode.CREDENTIALS_REVOKED if exc.dead else SyncErrorCode.PROVIDER_REJECTED_REQUEST
    if isinstance(exc, ProviderRateLimited):
        return SyncErrorCode.RATE_LIMITED
    if isinstance(exc, ProviderTimeout):
        return SyncErrorCode.TIMEOUT
    if isinstance(exc, ProviderUnavailable):
        return SyncErrorCode.PROVIDER_UNAVAILABLE
    if isinstance(exc, ProviderAuthError):
        return SyncErrorCode.CREDENTIALS_REVOKED
    if isinstance(exc, ProviderNotFound):
        return SyncErrorCode.PROVIDER_USER_NOT_FOUND
    if isinstance(exc, ProviderBadResponse | InvalidPayload):
        return SyncErrorCode.INVALID_PROVIDER_DATA
    if isinstance(exc, ProviderRequestError):
        return SyncErrorCode.PROVIDER_REJECTED_REQUEST
    if isinstance(exc, ProviderError):
        return (
            SyncErrorCode.PROVIDER_UNAVAILABLE if exc.retryable else SyncErrorCode.PROVIDER_REJECTED_REQUEST
        )
    return SyncErrorCode.INTERNAL_ERROR
