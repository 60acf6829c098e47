"""Access tokens for the direct providers: refresh before expiry, exactly once, under a row lock.

Refresh tokens are single use and rotate (WHOOP kills the old one at once). The recipe (perf_reliability.md §3a):
1. Read the credential; if the access token is good for longer than the margin, use it. No lock.
2. Else, in one transaction: `select_for_update` the credential row, and re-check: another worker may have
   refreshed while we waited, and then its token is used (no second refresh call). Otherwise call the token
   endpoint and save the new pair before the commit, so the new refresh token is never lost to a crash after
   the call but before the save (the call is short; the lock covers one row).
3. `invalid_grant`: re-read the stored credential first. If its refresh token changed, someone else rotated it
   (a reconnect, another deployment): use theirs. Only if it did not change, and no earlier refresh went
   unanswered, is the refresh truly dead: the connection is marked inactive with the reason and a failed
   SyncEvent, and nothing retries it. Any other refusal (invalid_request, invalid_client, an unreadable error
   body) fails this run and is tried again by the next.
Timeouts and 5xx on the token endpoint are transient: the connection stays active and the next run tries again,
but the provider may have rotated the pair before the answer was lost (`refresh_in_doubt`): a refusal after
that fails the run with the reason and keeps the connection active, shown failing, never silently dead.

LibreLinkUp has no refresh token: its "refresh" is a new login with the stored email and password.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TypeVar

from django.db import transaction
from django.utils import timezone

from connections.models import Connection, ConnectionStatus, ProviderCredential, SyncTrigger
from connections.providers.base import ProviderAuthError, ProviderError
from connections.providers.contract import CredentialsRefused
from connections.providers.oauth2 import TokenSet

logger = logging.getLogger("loopsync.tokens")
# Ends every reason a refused grant leaves on a connection: the admin offers a reconnect link where it reads it.
MUST_RECONNECT = "the patient must reconnect"

# A callable that spends a refresh token (or logs in again) and returns the new token set.
Refresher = Callable[[ProviderCredential], TokenSet]


class ConnectionRevoked(ProviderError):
    """The provider no longer accepts this connection's credentials; the patient must reconnect."""


class RefreshInDoubt(ProviderError):
    """The refresh token was refused, but an earlier refresh's answer was lost: not proof of a revocation."""


def _fresh(credential: ProviderCredential, now: datetime, margin: timedelta) -> bool:
    return (
        bool(credential.access_token)
        and credential.expires_at is not None
        and credential.expires_at > now + margin
    )


def access_token(
    connection: Connection,
    refresher: Refresher,
    *,
    margin: timedelta,
    stale_token: str | None = None,
    trigger: str = SyncTrigger.SCHEDULE,
    credential: ProviderCredential | None = None,
) -> str:
    """A usable access token for the connection, refreshing it first if it expires within `margin`.

    `stale_token`: a token the provider just answered 401 to; it is refreshed even if it looks unexpired.
    `credential`: the row as just read by the caller (saves a query); re-read under the lock before any refresh.
    """
    now = timezone.now()
    if credential is None or stale_token is not None:
        credential = ProviderCredential.objects.get(connection_id=connection.pk)
    if _fresh(credential, now, margin) and credential.access_token != stale_token:
        return credential.access_token
    return refresh_access_token(
        connection, refresher, margin=margin, stale_token=stale_token, trigger=trigger
    )


def refresh_access_token(
    connection: Connection,
    refresher: Refresher,
    *,
    margin: timedelta,
    stale_token: str | None = None,
    trigger: str = SyncTrigger.SCHEDULE,
) -> str:
    try:
        return _refresh_locked(connection, refresher, margin=margin, stale_token=stale_token, trigger=trigger)
    except CredentialsRefused:
        raise
    except ProviderError:
        # No answer (timeout, network, 5xx): whether the provider rotated the pair is unknown, and the call is
        # not repeated blindly (providers/oauth2.py). Remembered, so a refusal of the token we hold that
        # follows is not taken as proof the patient revoked access.
        ProviderCredential.objects.filter(connection_id=connection.pk).update(refresh_in_doubt=True)
        raise


def _refresh_locked(
    connection: Connection,
    refresher: Refresher,
    *,
    margin: timedelta,
    stale_token: str | None,
    trigger: str,
) -> str:
    grant_error: ProviderError | None = None
    with transaction.atomic():
        credential = ProviderCredential.objects.select_for_update().get(connection_id=connection.pk)
        now = timezone.now()
        if _fresh(credential, now, margin) and credential.access_token != stale_token:
            # Another worker refreshed while we waited for the lock: use its token, spend nothing.
            return credential.access_token
        spent = credential.refresh_token
        try:
            tokens = refresher(credential)
        except CredentialsRefused as exc:
            if not exc.dead:
                raise  # invalid_client etc.: our configuration, not the patient's connection
            grant_error = exc
        else:
            credential.access_token = tokens.access_token
            if tokens.refresh_token:
                credential.refresh_token = tokens.refresh_token
            credential.expires_at = tokens.expires_at
            if tokens.scope:
                credential.scope = tokens.scope[:255]
            credential.refreshed_at = now
            credential.refresh_in_doubt = False
            credential.save(
                update_fields=[
                    "access_token",
                    "refresh_token",
                    "expires_at",
                    "scope",
                    "refreshed_at",
                    "refresh_in_doubt",
                    "updated_at",
                ]
            )
            logger.info(
                "access token refreshed",
                extra={"connection_id": connection.pk, "provider": connection.provider},
            )
            return tokens.access_token
    # The grant was refused. Re-read: a reconnect or another deployment may have rotated the pair meanwhile.
    current = ProviderCredential.objects.get(connection_id=connection.pk)
    if current.refresh_token != spent and _fresh(current, timezone.now(), timedelta(0)):
        logger.info("refresh lost a race; using the stored token", extra={"connection_id": connection.pk})
        return current.access_token
    detail = getattr(grant_error, "error", None) or "login refused"
    if current.refresh_in_doubt:
        # The refusal may be our own lost rotation, not the patient's revocation: the connection stays active
        # and is shown failing with the reason; only a refusal of a token we hold for sure deactivates.
        raise RefreshInDoubt(
            connection.provider,
            f"credentials refused ({detail}) after a refresh whose answer was lost; "
            f"if it keeps failing {MUST_RECONNECT}",
            status=grant_error.status if grant_error else None,
        )
    reason = f"{grant_error}; {MUST_RECONNECT}"
    mark_revoked(connection, reason, trigger=trigger)
    raise ConnectionRevoked(
        connection.provider,
        f"credentials refused ({detail}); connection marked inactive, {MUST_RECONNECT}",
        status=grant_error.status if grant_error else None,
    )


def mark_revoked(connection: Connection, reason: str, *, trigger: str = SyncTrigger.SCHEDULE) -> None:
    """Mark the connection inactive with the reason; schedules stop selecting it. The sync run that found out
    records the failed SyncEvent (with this reason as its error)."""
    now = timezone.now()
    Connection.objects.filter(pk=connection.pk, status=ConnectionStatus.ACTIVE).update(
        status=ConnectionStatus.INACTIVE,
        status_reason=reason[:500],
        last_error=reason[:2000],
        last_attempt_at=now,
        updated_at=now,
    )
    connection.status = ConnectionStatus.INACTIVE
    connection.status_reason = reason[:500]
    logger.warning(
        "connection deactivated: credentials refused",
        extra={"connection_id": connection.pk, "provider": connection.provider},
    )


T = TypeVar("T")


class TokenSession:
    """The connection's current access token for one sync; a 401 refreshes it once and repeats the call."""

    def __init__(
        self, connection: Connection, refresher: Refresher, *, margin: timedelta, trigger: str
    ) -> None:
        self.connection = connection
        self.refresher = refresher
        self.margin = margin
        self.trigger = trigger
        self.token = access_token(connection, refresher, margin=margin, trigger=trigger)

    def call(self, fn: Callable[[str], T]) -> T:
        try:
            return fn(self.token)
        except ProviderAuthError as exc:
            if exc.status != 401:
                raise
            self.token = access_token(
                self.connection,
                self.refresher,
                margin=self.margin,
                stale_token=self.token,
                trigger=self.trigger,
            )
            return fn(self.token)
