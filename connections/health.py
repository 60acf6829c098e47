"""Connection health: ok / stale / failing / inactive, in Python and as SQL the admin filters and sorts on.

The rules (README "Ops admin" has the table):
1. inactive: the connection's status is not active (ops deactivated it, or the patient revoked access).
2. failing: its last `failing_streak` sync runs in a row failed. A daily run already retried the user
   3 times, so one failed run is failing; a CGM run every 30 minutes gets one run's slack for blips.
3. stale: no successful sync (`last_success_at`) for longer than the provider's cadence plus a grace period
   (each provider declares its cadence: CGM providers sync every 30 minutes, stale after 60; daily providers
   every 24 hours, stale after 30, a missed 03:00 run with 6 hours for a long run to finish). A connection
   that has never synced counts from its creation, so a new one gets the same grace.
4. ok: everything else.

How old the newest data is, is a separate question (`data_behind`): each provider declares how late its data
arrives by design (Dexcom 1-3 hours), and only data older than that plus the cadence's staleness is behind. A
sync that works on late data is ok; the newest reading's age is shown beside it, not folded into it.

`health_q(state, now)` gives mutually exclusive filters and `health_expression(now)` the CASE built from
them, so the list column, the filter and `health_of()` (one object in Python) cannot disagree; a test
checks the Python and SQL forms on the same rows.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from django.db import models
from django.db.models import Case, Q, Value, When
from django.db.models.functions import Coalesce

from connections.models import Connection, ConnectionStatus
from connections.providers.contract import DAILY_CADENCE, Cadence
from connections.providers.registry import PROVIDERS


class Health(models.TextChoices):
    OK = "ok", "OK"
    STALE = "stale", "Stale"
    FAILING = "failing", "Failing"
    INACTIVE = "inactive", "Inactive"


# A connection of a provider no longer registered is judged as a daily one.
DEFAULT_CADENCE = DAILY_CADENCE


def cadence_for(provider: str) -> Cadence:
    registered = PROVIDERS.get(provider)
    return registered.cadence if registered is not None else DEFAULT_CADENCE


def _by_cadence(build: Callable[[Cadence], Q]) -> Q:
    """OR over providers grouped by cadence: `build(cadence)` is the rule for that group's rows."""
    groups: dict[Cadence, list[str]] = {}
    for key, provider in PROVIDERS.items():
        groups.setdefault(provider.cadence, []).append(key)
    q = Q(pk__in=[])
    for cadence, providers in groups.items():
        q |= Q(provider__in=providers) & build(cadence)
    return q | (~Q(provider__in=list(PROVIDERS)) & build(DEFAULT_CADENCE))


def health_q(state: str, now: datetime) -> Q:
    """Rows in `state`; the four states partition the table."""
    inactive = ~Q(status=ConnectionStatus.ACTIVE)
    failing = _by_cadence(lambda c: Q(failure_streak__gte=c.failing_streak))
    stale = _by_cadence(lambda c: Q(health_since__lt=now - c.stale_after))
    if state == Health.INACTIVE:
        return inactive
    if state == Health.FAILING:
        return ~inactive & failing
    if state == Health.STALE:
        return ~inactive & ~failing & stale
    if state == Health.OK:
        return ~inactive & ~failing & ~stale
    raise ValueError(f"unknown health {state!r}")


def with_health(queryset: models.QuerySet[Connection], now: datetime) -> models.QuerySet[Connection]:
    """Annotate `health` (and the `health_since` it needs) in SQL; filter with `health_q` on the result."""
    return queryset.annotate(
        health_since=Coalesce("last_success_at", "created_at"),
        health=Case(
            *(When(health_q(state, now), then=Value(str(state))) for state in Health),
            default=Value(str(Health.OK)),
            output_field=models.CharField(),
        ),
    )


def health_of(connection: Connection, now: datetime) -> Health:
    """The same rules for one connection in memory."""
    if connection.status != ConnectionStatus.ACTIVE:
        return Health.INACTIVE
    cadence = cadence_for(connection.provider)
    if connection.failure_streak >= cadence.failing_streak:
        return Health.FAILING
    since = connection.last_success_at or connection.created_at
    if not isinstance(since, datetime):
        # created_at is a database default: an instance not yet re-read was created just now.
        since = now
    if since < now - cadence.stale_after:
        return Health.STALE
    return Health.OK


def data_behind(connection: Connection, now: datetime) -> bool:
    """The newest reading is older than the provider's usual data delay plus its cadence's staleness (or there is
    none since a success): the sync may work while the device has stopped sending."""
    registered = PROVIDERS.get(connection.provider)
    if registered is None or connection.last_success_at is None:
        return False
    allowed = registered.data_delay + registered.cadence.stale_after
    newest = connection.latest_reading_at
    return newest is None or newest < now - allowed


def needs_reconnect(connection: Connection) -> bool:
    """The provider refused the connection's credentials (revoked, or a refresh lost in doubt that keeps
    failing): only the patient signing in again fixes it, not a reactivation."""
    from connections.tokens import MUST_RECONNECT

    if connection.status != ConnectionStatus.ACTIVE:
        return MUST_RECONNECT in connection.status_reason
    return connection.failure_streak > 0 and MUST_RECONNECT in connection.last_error
