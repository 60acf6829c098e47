"""The webhook inbox: receive fast, process through the engine, lose nothing.

    POST /webhooks/<provider> ──> receive(): provider.verify_webhook (401 if bad or stale, nothing stored)
        ──> INSERT into webhook_inbox ON CONFLICT (provider, delivery_id) DO NOTHING (a redelivery is a no-op)
        ──> with it, in the same statement, its django-q2 task in the ORM broker's queue table ──> 202
    worker ──> process_event(id): the inbox row locked (skip locked: one worker per event) ──> the connection
        (provider.webhook_connection; none yet: `unmatched`, kept) ──> provider.handle_webhook ──> rows through
        engine.store_batch_and_cursor (the pull's store: natural-key upserts, no cursor move), or a window
        through engine.sync_connection ──> the row `processed` in the SAME transaction as its data.
    sweep (process-webhook-inbox, every minute) ──> rows still `received` after WEBHOOK_PENDING_SECONDS (their
        task was lost with a worker), `failed` ones under MAX_ATTEMPTS, `unmatched` ones whose user appeared.

The body is PHI: encrypted at rest (connections.crypto), never logged; errors are scrubbed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import orjson
from django.conf import settings
from django.db import DatabaseError, transaction
from django.db import connection as db
from django.db.models import F, Q
from django.utils import timezone
from django_q.tasks import async_task

from connections import crypto
from connections.models import (
    Connection,
    ConnectionStatus,
    SyncTrigger,
    WebhookEvent,
    WebhookStatus,
)
from connections.providers.base import ProviderError
from connections.providers.contract import Delivery, InvalidPayload, WebhookRefused
from connections.providers.registry import PROVIDERS, open_provider
from loopsync.sentry import scrub_text

logger = logging.getLogger("loopsync.webhooks")

# Automatic attempts of a failed event (the sweep's); past them only the admin's Replay retries it.
MAX_ATTEMPTS = 5
SWEEP_BATCH = 500
PROCESSABLE = (WebhookStatus.RECEIVED, WebhookStatus.FAILED, WebhookStatus.UNMATCHED)


@dataclass(frozen=True)
class Receipt:
    event_id: int | None
    status: str
    duplicate: bool = False


def push_providers() -> list[str]:
    """Providers that implement the push half of the contract."""
    from connections.providers.contract import SyncProvider

    return [
        key
        for key, p in PROVIDERS.items()
        if p.verify_webhook.__func__ is not SyncProvider.verify_webhook.__func__
    ]  # type: ignore[attr-defined]


_INSERT = """
INSERT INTO webhook_inbox
    (provider, delivery_id, event_type, external_user_id, body, status, sent_at, received_at, processed_at,
     attempts, error, records_stored)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 0, '', 0)
ON CONFLICT (provider, delivery_id) DO NOTHING
RETURNING id
"""


# The inbox row and its django-q2 task in ONE statement (so one round trip and one commit, which is most of an
# acknowledgement's cost): the ORM broker's queue is a table in this database, and its row is exactly what
# the broker's own enqueue() writes (key, the package async_task signed, lock = now). Data-modifying CTEs run
# once, to completion: a redelivery inserts neither row.
_INSERT_AND_QUEUE = """
WITH event AS (
    INSERT INTO webhook_inbox
        (provider, delivery_id, event_type, external_user_id, body, status, sent_at, received_at, processed_at,
         attempts, error, records_stored)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 0, '', 0)
    ON CONFLICT (provider, delivery_id) DO NOTHING
    RETURNING id
), queued AS (
    INSERT INTO {queue} (key, payload, lock) SELECT %s, %s, %s FROM event WHERE %s
)
SELECT id FROM event
"""


class _Package:
    """A broker that keeps the package async_task built and signed, for the statement above to queue."""

    def __init__(self, list_key: str) -> None:
        self.list_key = list_key
        self.payload = ""

    def enqueue(self, task: str) -> None:
        self.payload = task


def _orm_broker_here() -> str | None:
    """The ORM broker's list key when its queue is a table of our default database (the production set-up);
    None (queue through async_task after the insert) otherwise, or when tasks run in-process (tests).

    Read from the configuration, as django_q.brokers.get_broker decides, without building a broker: building
    one closes and reopens the database connection outside a transaction."""
    from django_q.conf import Conf

    if Conf.SYNC or Conf.BROKER_CLASS or Conf.IRON_MQ or isinstance(Conf.SQS, dict) or Conf.ORM != "default":
        return None
    return Conf.CLUSTER_NAME


def receive(provider_key: str, body: bytes, headers: Mapping[str, str]) -> Receipt:
    """Verify, record and queue one delivery. WebhookRefused (→ 401) when the signature is bad or stale."""
    from django_q.models import OrmQ

    provider = PROVIDERS[provider_key]
    delivery = provider.verify_webhook(body, headers)
    handled = provider.handles_webhook(delivery.event_type)
    now = timezone.now()
    status = WebhookStatus.RECEIVED if handled else WebhookStatus.IGNORED
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise WebhookRefused("the signed body is not UTF-8") from None
    row_values = [
        provider_key,
        delivery.delivery_id,
        delivery.event_type,
        delivery.external_user_id,
        crypto.encrypt(text),
        status,
        delivery.sent_at,
        now,
        None if handled else now,
    ]
    list_key = _orm_broker_here()
    if list_key is not None:
        package = _Package(list_key)
        async_task(
            "connections.tasks.process_delivery_task",
            provider_key,
            delivery.delivery_id,
            group="webhook",
            task_name=f"webhook:{provider_key}:{delivery.delivery_id}"[:100],
            broker=package,
        )
        with db.cursor() as cursor:
            cursor.execute(
                _INSERT_AND_QUEUE.format(queue=db.ops.quote_name(OrmQ._meta.db_table)),
                [*row_values, list_key, package.payload, now, handled],
            )
            row = cursor.fetchone()
        if row is None:
            return Receipt(None, "duplicate", duplicate=True)
        return Receipt(row[0], status)
    with transaction.atomic():
        with db.cursor() as cursor:
            cursor.execute(_INSERT, row_values)
            row = cursor.fetchone()
        if row is None:
            return Receipt(None, "duplicate", duplicate=True)
        event_id = row[0]
        if handled:
            transaction.on_commit(lambda: enqueue(event_id))
    return Receipt(event_id, status)


def enqueue(event_id: int) -> None:
    async_task(
        "connections.tasks.process_webhook_task", event_id, group="webhook", task_name=f"webhook:{event_id}"
    )


def queue_processing(event_id: int) -> None:
    """Queue an event after a commit (replays); a lost enqueue is the sweep's to pick up."""
    try:
        enqueue(event_id)
    except DatabaseError:
        logger.warning(
            "webhook processing not queued; the sweep will take it", extra={"webhook_event_id": event_id}
        )


def _delivery(event: WebhookEvent) -> Delivery:
    try:
        payload = orjson.loads(event.body)
    except orjson.JSONDecodeError:
        raise InvalidPayload("the stored body is not JSON") from None
    return Delivery(
        delivery_id=event.delivery_id,
        event_type=event.event_type,
        external_user_id=event.external_user_id,
        sent_at=event.sent_at or event.received_at,
        payload=payload if isinstance(payload, dict) else {},
    )


def process_event(event_id: int, *, statuses: tuple[str, ...] = PROCESSABLE) -> str | None:
    """Process one inbox event if it is still to do; returns its new status, None when there was nothing to do
    (already processed, or another worker holds it). Safe to run twice and concurrently."""
    try:
        with transaction.atomic():
            event = (
                WebhookEvent.objects.select_for_update(skip_locked=True)
                .filter(pk=event_id, status__in=statuses)
                .first()
            )
            if event is None:
                return None
            _process(event)
            event.save()
            if event.status == WebhookStatus.PROCESSED and event.event_type.endswith("connection.created"):
                _replay_unmatched(event.provider, event.external_user_id)
            return event.status
    except (ProviderError, InvalidPayload) as exc:
        return _failed(event_id, f"{type(exc).__name__}: {exc}")
    except DatabaseError:
        # Not this event's fault: the task raises and django-q delivers it again (the row is untouched).
        raise
    except Exception as exc:  # noqa: BLE001 - a bug in one event must not stop the queue; it is kept, failed
        logger.exception("webhook processing crashed", extra={"webhook_event_id": event_id})
        return _failed(event_id, f"internal error: {type(exc).__name__}")


def _failed(event_id: int, error: str) -> str:
    WebhookEvent.objects.filter(pk=event_id).update(
        status=WebhookStatus.FAILED, attempts=F("attempts") + 1, error=scrub_text(error)[:2000]
    )
    logger.warning("webhook processing failed", extra={"webhook_event_id": event_id})
    return WebhookStatus.FAILED


def _process(event: WebhookEvent) -> None:
    from connections.engine import store_batch_and_cursor, sync_connection
    from connections.tokens import TokenSession

    provider_type = PROVIDERS[event.provider]
    delivery = _delivery(event)
    connection = provider_type.webhook_connection(delivery)
    event.error = ""
    if connection is None:
        # Kept, not dropped: processed when the user appears (the connection's creation, or the sweep).
        event.status = WebhookStatus.UNMATCHED
        event.error = "no connection for this user yet"
        return
    event.attempts += 1
    event.connection = connection
    if connection.status != ConnectionStatus.ACTIVE:
        event.status = WebhookStatus.IGNORED
        event.error = "the connection is inactive"
        event.processed_at = timezone.now()
        return
    # One delivery of a connection at a time: a provider's check of what is stored (a newer version of the
    # record) and its write are then one step. The pull's store waits for it too.
    connection = Connection.objects.select_for_update().select_related("patient").get(pk=connection.pk)
    stored = 0
    with open_provider(event.provider) as provider:
        refresher = provider.refresher()
        session = (
            TokenSession(connection, refresher, margin=provider.token_margin(), trigger=SyncTrigger.WEBHOOK)
            if refresher is not None
            else None
        )
        outcome = provider.handle_webhook(delivery, connection, session=session)
        if outcome.batch is not None:
            # Push stores like the pull, without moving the pull's cursor or judging the sync's health.
            stored += store_batch_and_cursor(connection, outcome.batch, provider.writer(), complete=False)
        if outcome.fetch_window is not None:
            sync = sync_connection(
                connection, trigger=SyncTrigger.WEBHOOK, window=outcome.fetch_window, provider=provider
            )
            stored += sync.records_stored
            if sync.status != "success":
                raise ProviderError(
                    event.provider,
                    scrub_text(sync.error.splitlines()[-1] if sync.error else "window fetch failed"),
                )
    if outcome.connection_error:
        Connection.objects.filter(pk=connection.pk).update(
            last_error=outcome.connection_error[:2000], updated_at=timezone.now()
        )
    event.records_stored = stored
    event.status = WebhookStatus.PROCESSED
    event.processed_at = timezone.now()


def _replay_unmatched(provider: str, external_user_id: str) -> None:
    ids = list(
        WebhookEvent.objects.filter(
            provider=provider, external_user_id=external_user_id, status=WebhookStatus.UNMATCHED
        ).values_list("pk", flat=True)
    )
    for event_id in ids:
        transaction.on_commit(lambda event_id=event_id: queue_processing(event_id))


def sweep(now: timezone.datetime | None = None) -> dict[str, int]:
    """Process what the queue lost or could not do yet; the process-webhook-inbox job. Returns counts."""
    now = now or timezone.now()
    due = now - timedelta(seconds=settings.WEBHOOK_PENDING_SECONDS)
    pending = WebhookEvent.objects.filter(
        Q(status=WebhookStatus.RECEIVED) | Q(status=WebhookStatus.FAILED, attempts__lt=MAX_ATTEMPTS),
        received_at__lt=due,
    )
    ids = list(pending.order_by("received_at").values_list("pk", flat=True)[:SWEEP_BATCH])
    # Then the unmatched ones, after the lost work: a user who never appears must not starve it.
    ids += list(
        WebhookEvent.objects.filter(status=WebhookStatus.UNMATCHED, received_at__lt=due)
        .order_by("received_at")
        .values_list("pk", flat=True)[: max(0, SWEEP_BATCH - len(ids))]
    )
    counts: dict[str, int] = {}
    for event_id in ids:
        status = process_event(event_id) or "skipped"
        counts[status] = counts.get(status, 0) + 1
    if ids:
        logger.info(
            "webhook inbox swept", extra={"events": len(ids), **{f"events_{k}": v for k, v in counts.items()}}
        )
    return counts


def remove_expired(now: timezone.datetime | None = None, *, dry_run: bool = False) -> int:
    """Processed and ignored events past WEBHOOK_INBOX_RETENTION_DAYS (weekly cleanup); failed and unmatched
    ones stay for ops to see."""
    now = now or timezone.now()
    expired = WebhookEvent.objects.filter(
        status__in=(WebhookStatus.PROCESSED, WebhookStatus.IGNORED),
        received_at__lt=now - timedelta(days=settings.WEBHOOK_INBOX_RETENTION_DAYS),
    )
    if dry_run:
        return expired.count()
    return expired._raw_delete(expired.db)  # no cascade to follow, no signals: one DELETE
