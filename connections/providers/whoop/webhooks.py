"""WHOOP's webhooks (provider_apis.md §1.4): `{user_id, id, type, trace_id}` signed with the app's client secret.

An event carries an id only: `sleep.updated` / `workout.updated` fetch that one record, `recovery.updated`
(v2: the id is the sleep's) fetches the sleep, then its cycle's recovery; `*.deleted` removes the record's rows,
found by the id through provider_records (written by the pull and by these fetches).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
from django.conf import settings
from django.utils import timezone

from connections.providers.contract import Batch, Delivery, InvalidPayload, WebhookOutcome, WebhookRefused
from connections.providers.whoop.client import KIND_METRICS, SOURCE, WhoopClient, WhoopParsed, parse_records

if TYPE_CHECKING:
    from connections.models import Connection
    from connections.tokens import TokenSession

# Ours, as Svix's: a delivery signed longer ago than this is refused (a replayed capture).
TOLERANCE = timedelta(minutes=5)
KINDS = ("sleep", "workout", "recovery")
PATHS = {"sleep": "/v2/activity/sleep/{}", "workout": "/v2/activity/workout/{}"}
COLLECTION = {"sleep": "activity/sleep", "workout": "activity/workout", "recovery": "recovery"}


def verify(body: bytes, headers: Mapping[str, str]) -> Delivery:
    secret = settings.DIRECT_PROVIDERS.whoop_client_secret
    lowered = {k.lower(): v for k, v in headers.items()}
    signature, stamp = lowered.get("x-whoop-signature", ""), lowered.get("x-whoop-signature-timestamp", "")
    if not secret:
        raise WebhookRefused("WHOOP_CLIENT_SECRET is not set: deliveries cannot be verified")
    if not signature or not stamp.isdigit():
        raise WebhookRefused("missing X-WHOOP-Signature or X-WHOOP-Signature-Timestamp header")
    expected = base64.b64encode(
        hmac.new(secret.encode(), stamp.encode() + body, hashlib.sha256).digest()
    ).decode()
    if not hmac.compare_digest(expected, signature):
        raise WebhookRefused("X-WHOOP-Signature does not match")
    # Milliseconds since the epoch.
    sent_at = datetime.fromtimestamp(int(stamp) / 1000, UTC)
    if abs(timezone.now() - sent_at) > TOLERANCE:
        raise WebhookRefused("X-WHOOP-Signature-Timestamp is outside the 5-minute tolerance")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise WebhookRefused("the signed body is not JSON") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
        raise WebhookRefused("the signed body has no type")
    trace = payload.get("trace_id")
    delivery_id = str(trace) if trace else hashlib.sha256(body).hexdigest()
    return Delivery(
        delivery_id=delivery_id[:128],
        event_type=payload["type"][:100],
        external_user_id=str(payload.get("user_id") or "")[:128],
        sent_at=sent_at,
        payload=payload,
    )


def handles(event_type: str) -> bool:
    kind, _, verb = event_type.partition(".")
    return kind in KINDS and verb in ("updated", "deleted")


def connection_for(delivery: Delivery) -> Connection | None:
    from connections.models import Connection

    if not delivery.external_user_id:
        return None
    return (
        Connection.objects.select_related("patient")
        .filter(provider="whoop", credential__external_user_id=delivery.external_user_id)
        .order_by("-pk")
        .first()
    )


def handle(
    client: WhoopClient, delivery: Delivery, connection: Connection, session: TokenSession | None
) -> WebhookOutcome:
    kind, _, verb = delivery.event_type.partition(".")
    record_id = delivery.payload.get("id")
    if not isinstance(record_id, str | int) or isinstance(record_id, bool) or not str(record_id):
        raise InvalidPayload(f"{delivery.event_type} has no id")
    record_id = str(record_id)
    if verb == "deleted":
        return WebhookOutcome(batch=Batch(save_state=_deleter(connection, kind, record_id)))
    assert session is not None

    def fetch(path: str) -> dict[str, Any] | None:
        return session.call(lambda token: client.record(path, lambda: token))

    if kind == "recovery":
        sleep = fetch(PATHS["sleep"].format(record_id))
        cycle = sleep.get("cycle_id") if sleep else None
        record = fetch(f"/v2/cycle/{cycle}/recovery") if isinstance(cycle, int) else None
    else:
        record = fetch(PATHS[kind].format(record_id))
    if record is None:
        return WebhookOutcome()  # deleted since: its own *.deleted event removes it
    parsed = WhoopParsed()
    parse_records(COLLECTION[kind], [record], parsed)
    return WebhookOutcome(
        batch=Batch(readings=parsed.readings, skipped=parsed.skipped, save_state=index_saver(parsed))
    )


def index_saver(parsed: WhoopParsed):  # type: ignore[no-untyped-def]
    """Save where each record's rows are keyed (with the rows, in the store transaction)."""
    from connections.models import ProviderRecord

    def save(locked: Connection) -> None:
        if parsed.records:
            ProviderRecord.objects.bulk_create(
                [
                    ProviderRecord(
                        connection=locked,
                        resource=kind,
                        record_id=record_id,
                        measured_at=datetime.fromisoformat(at),
                    )
                    for kind, record_id, at in parsed.records
                ],
                update_conflicts=True,
                unique_fields=["connection", "resource", "record_id"],
                update_fields=["measured_at", "updated_at"],
            )

    return save


def _deleter(connection: Connection, kind: str, record_id: str):  # type: ignore[no-untyped-def]
    from connections.models import ProviderRecord
    from readings.store import delete_readings

    # A recovery is deleted with its sleep (both keyed by the sleep's id).
    kinds = ("sleep", "recovery") if kind == "sleep" else (kind,)

    def delete(locked: Connection) -> None:
        known = ProviderRecord.objects.filter(connection=locked, resource__in=kinds, record_id=record_id)
        for record in known:
            if record.measured_at is not None:
                delete_readings(
                    locked.patient_id,
                    locked.patient.time_zone,
                    SOURCE,
                    KIND_METRICS[record.resource],
                    record.measured_at,
                )
        known.delete()

    return delete
