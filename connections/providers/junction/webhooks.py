"""Junction's webhooks (junction_api.md §8): Svix-signed envelopes, the event families we act on, and their
payloads turned into the same rows as the pull.

- `daily.data.<resource>.created|updated`: the data itself (a summary object, or a grouped timeseries
  `{source, data: [samples]}`); re-sent mutable buckets upsert on the readings' natural key.
- `historical.data.<resource>.created`: a backfill completed; its window is fetched over REST.
- `provider.connection.created` creates (or reactivates) the connection; `provider.connection.error` marks it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import orjson
from django.conf import settings
from django.utils import timezone

from connections.providers.contract import (
    Batch,
    Delivery,
    InvalidPayload,
    WebhookOutcome,
    WebhookRefused,
)
from connections.providers.junction.client import (
    GLUCOSE_RESOURCE,
    SUMMARY_KINDS,
    TIMESERIES,
    ParsedPayload,
    parse_glucose,
    parse_summaries,
    parse_timeseries,
)

if TYPE_CHECKING:
    from connections.models import Connection, Patient

logger = logging.getLogger("loopsync.webhooks")

_SERIES = {spec.resource: spec for spec in TIMESERIES}
DATA_RESOURCES = frozenset({*SUMMARY_KINDS, *_SERIES, GLUCOSE_RESOURCE})
CONNECTION_CREATED = "provider.connection.created"
CONNECTION_ERROR = "provider.connection.error"


def verify(body: bytes, headers: Mapping[str, str]) -> Delivery:
    """Svix signature over the raw body (svix-id, svix-timestamp within 5 minutes, svix-signature)."""
    secret = settings.JUNCTION_WEBHOOK_SECRET
    if not secret:
        raise WebhookRefused("JUNCTION_WEBHOOK_SECRET is not set: deliveries cannot be verified")
    # Imported here: `svix` loads its whole API client (about a second), which only the receiver needs.
    from svix.webhooks import Webhook, WebhookVerificationError

    wanted = {
        k: v for k, v in headers.items() if k.lower() in ("svix-id", "svix-timestamp", "svix-signature")
    }
    try:
        Webhook(secret).verify(body, wanted)
    except WebhookVerificationError as exc:
        raise WebhookRefused(f"svix signature refused: {exc}") from None
    try:
        envelope = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise WebhookRefused("the signed body is not JSON") from None
    if not isinstance(envelope, dict) or not isinstance(envelope.get("event_type"), str):
        raise WebhookRefused("the signed body has no event_type")
    data = envelope.get("data") if isinstance(envelope.get("data"), dict) else {}
    user_id = envelope.get("user_id") or data.get("user_id") or ""
    lowered = {k.lower(): v for k, v in wanted.items()}
    return Delivery(
        delivery_id=lowered["svix-id"][:128],
        event_type=envelope["event_type"][:100],
        external_user_id=str(user_id)[:128],
        sent_at=datetime.fromtimestamp(int(lowered["svix-timestamp"]), UTC),
        payload=envelope,
    )


def _split(event_type: str) -> tuple[str, str, str]:
    """`daily.data.steps.created` -> ("daily.data", "steps", "created")."""
    parts = event_type.split(".")
    if len(parts) == 4 and parts[1] == "data":
        return f"{parts[0]}.data", parts[2], parts[3]
    return "", "", ""


def handles(event_type: str) -> bool:
    if event_type in (CONNECTION_CREATED, CONNECTION_ERROR):
        return True
    family, resource, verb = _split(event_type)
    if family == "daily.data":
        return resource in DATA_RESOURCES and verb in ("created", "updated")
    return family == "historical.data" and resource in DATA_RESOURCES and verb == "created"


def connection_for(delivery: Delivery) -> Connection | None:
    from connections.models import Connection, ConnectionStatus, Patient

    user_id = delivery.external_user_id
    if not user_id:
        return None
    if delivery.event_type == CONNECTION_CREATED:
        patient = Patient.objects.filter(junction_user_id=user_id).first() or _new_patient(user_id)
        connection, created = Connection.objects.get_or_create(patient=patient, provider="junction")
        if not created and connection.status != ConnectionStatus.ACTIVE:
            from connections.actions import do_reactivate_connection

            do_reactivate_connection(connection, actor="junction webhook", trigger="webhook")
            connection.refresh_from_db()
        return connection
    return (
        Connection.objects.select_related("patient")
        .filter(provider="junction", patient__junction_user_id=user_id)
        .first()
    )


def _new_patient(user_id: str) -> Patient:
    """A patient for a user Junction announces, in the user's time zone when Junction knows it (a day is the
    patient's local day), as the pull creates the patients of JUNCTION_SYNC_USER_IDS."""
    from connections.models import Patient
    from connections.providers.base import ProviderError
    from connections.providers.junction.client import JunctionClient, fallback_time_zone

    time_zone = "UTC"
    try:
        with JunctionClient.from_config(settings.JUNCTION_SYNC) as client:
            time_zone = fallback_time_zone(client.get_user(user_id)) or "UTC"
    except ProviderError as exc:
        logger.warning("junction user lookup failed", extra={"error": str(exc)})
    patient, _ = Patient.objects.get_or_create(junction_user_id=user_id, defaults={"time_zone": time_zone})
    return patient


def _instant(raw: object) -> datetime:
    if not isinstance(raw, str):
        raise InvalidPayload("a window bound is not a string")
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise InvalidPayload("a window bound is not an ISO-8601 datetime") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def handle(delivery: Delivery, connection: Connection) -> WebhookOutcome:
    event_type = delivery.event_type
    data = delivery.payload.get("data")
    if event_type == CONNECTION_CREATED:
        return WebhookOutcome()
    if event_type == CONNECTION_ERROR:
        data = data if isinstance(data, dict) else {}
        provider = data.get("provider")
        slug = provider.get("slug") if isinstance(provider, dict) else provider
        # The type only: Junction's message and details may quote the provider's answer.
        return WebhookOutcome(
            connection_error=f"junction reports {str(slug or 'a provider')[:40]} connection error: "
            f"{str(data.get('error_type') or 'unknown')[:60]}"
        )
    family, resource, _ = _split(event_type)
    if not isinstance(data, dict):
        raise InvalidPayload(f"{event_type} has no data object")
    if family == "historical.data":
        end = _instant(data.get("end_date"))
        start = _instant(data.get("start_date"))
        # Older raw rows would be removed by the next cleanup anyway.
        start = max(start, timezone.now() - timedelta(days=settings.RAW_READING_RETENTION_DAYS))
        end = min(end, timezone.now())
        return WebhookOutcome(fetch_window=(start, end) if start < end else None)
    tz = ZoneInfo(connection.patient.time_zone)
    if resource in SUMMARY_KINDS:
        return _summary(connection, resource, data, tz)
    source = data.get("source")
    slug = source.get("provider") if isinstance(source, dict) else None
    grouped = {"groups": {str(slug or "unknown"): [data]}}
    parsed = (
        parse_glucose(grouped)
        if resource == GLUCOSE_RESOURCE
        else parse_timeseries(_SERIES[resource], grouped)
    )
    return WebhookOutcome(batch=_batch(parsed))


def _batch(parsed: ParsedPayload) -> Batch:
    return Batch(readings=parsed.readings, glucose=parsed.glucose, skipped=parsed.skipped)


def _summary(connection: Connection, kind: str, data: dict[str, object], tz: ZoneInfo) -> WebhookOutcome:
    """A summary as delivered, unless a newer version of it was stored already (deliveries come in any order;
    the caller holds the connection's row lock, so the check and the write are one step)."""
    from connections.models import ProviderRecord

    record_id, version = str(data.get("id") or "")[:64], str(data.get("updated_at") or "")[:40]
    if record_id and version:
        stored = (
            ProviderRecord.objects.filter(connection=connection, resource=kind, record_id=record_id)
            .values_list("version", flat=True)
            .first()
        )
        # Junction renders every timestamp in one fixed +00:00 form: the strings compare like the instants.
        if stored and stored > version:
            return WebhookOutcome()
    batch = _batch(parse_summaries(kind, {kind: [data]}, tz))
    if record_id and version:

        def save_version(locked: Connection) -> None:
            ProviderRecord.objects.update_or_create(
                connection=locked, resource=kind, record_id=record_id, defaults={"version": version}
            )

        batch.save_state = save_version
    return WebhookOutcome(batch=batch)
