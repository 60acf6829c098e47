"""Small helpers the direct-provider clients share (the HTTP layer itself is providers/base.py)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from django.conf import settings

from connections.providers.base import ProviderHTTP, RetryPolicy
from connections.providers.contract import InvalidPayload, InvalidRecord, plausible_instant

logger = logging.getLogger("loopsync.providers")


def http_for(
    provider: str, base_url: str, headers: dict[str, str] | None = None, *, gated: bool = True
) -> ProviderHTTP:
    """A ProviderHTTP with the configured timeout (30 s by spec) and retry policy, behind the provider's shared
    budgets and circuit breaker (connections.budgets): every provider client is made here. `gated=False` for
    our own services (the patient-graph API), which are neither rate limited by a provider nor one to break
    away from: the sync's retries and cursor already handle their outages."""
    from connections.budgets import ProviderGate

    return ProviderHTTP(
        provider,
        base_url,
        headers=headers,
        timeout=settings.PROVIDER_HTTP_TIMEOUT,
        policy=RetryPolicy(
            attempts=settings.PROVIDER_HTTP_ATTEMPTS,
            base=settings.PROVIDER_BACKOFF_BASE,
            cap=settings.PROVIDER_BACKOFF_CAP,
        ),
        gate=ProviderGate(provider, base_url) if gated else None,
    )


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def canonical(moment: datetime) -> str:
    """The canonical UTC text readings.store takes: "YYYY-MM-DD HH:MM:SS[.ffffff]+00:00"."""
    return moment.astimezone(UTC).isoformat(sep=" ")


def parse_instant(raw: object, field_name: str, *, naive_is_utc: bool = False) -> datetime:
    """An ISO-8601 instant ("Z" or an offset; naive only where the API documents UTC)."""
    if not isinstance(raw, str) or not raw:
        raise InvalidRecord(f"{field_name} is missing")
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00") if raw.endswith("Z") else raw)
    except ValueError:
        raise InvalidRecord(f"{field_name} is not an ISO-8601 datetime") from None
    if parsed.tzinfo is None:
        if not naive_is_utc:
            raise InvalidRecord(f"{field_name} has no UTC offset")
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise InvalidRecord(f"{field_name} is out of range") from None


def reading_instant(raw: object, field_name: str, *, naive_is_utc: bool = False) -> datetime:
    """The instant a reading was taken: parsed as parse_instant, then refused if before 2000 or in the future."""
    return plausible_instant(parse_instant(raw, field_name, naive_is_utc=naive_is_utc), field_name)


def warn_invalid(provider: str, resource: str, index: int, error: InvalidRecord) -> None:
    # Values are PHI: the log names the provider, resource, position and rule only.
    logger.warning(
        "skipped invalid record",
        extra={"provider": provider, "resource": resource, "index": index, "reason": str(error)},
    )


def as_dict(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidPayload(f"{what} response is not a JSON object")
    return body
