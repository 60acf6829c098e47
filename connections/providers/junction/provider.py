"""Junction as a SyncProvider: an aggregator user per patient, the daily pull of summaries and timeseries.

One user's window:
1. The user's connected providers (is there a CGM?), then for every UTC day of the window the sleep, activity,
   workouts and body summaries and the grouped timeseries, following `next_cursor`; requests run concurrently
   and the HTTP layer retries 429/5xx/timeouts with backoff and Retry-After.
2. A (resource, day) whose bytes hash to its stored fingerprint is not parsed again (nor written).
3. The fingerprints of the days that changed commit with their rows (Batch.save_state).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from connections.config import JunctionSyncConfig
from connections.providers.base import ProviderError
from connections.providers.contract import (
    DAILY_CADENCE,
    Batch,
    ConnectMethod,
    Delivery,
    InvalidPayload,
    PartialFetch,
    SyncProvider,
    WebhookOutcome,
)
from connections.providers.junction import webhooks
from connections.providers.junction.client import (
    ACTIVITY_FIELDS,
    BODY_FIELDS,
    GLUCOSE_RESOURCE,
    SLEEP_FIELDS,
    SUMMARY_KINDS,
    TIMESERIES,
    WORKOUT_FIELDS,
    JunctionClient,
    ParsedPayload,
    fallback_time_zone,
    has_cgm,
    parse_glucose,
    parse_summaries,
    parse_timeseries,
    utc_days,
)

if TYPE_CHECKING:
    from connections.models import Connection, Patient
    from connections.tokens import TokenSession
    from readings.writers import ReadingsWriter
    from sandbox.server import SandboxServer

logger = logging.getLogger("loopsync.sync")

# Requests in flight per user: enough to hide loopback/WAN latency, small enough to be polite.
FETCH_CONCURRENCY = 8
_SERIES_BY_RESOURCE = {spec.resource: spec for spec in TIMESERIES}
METRICS: tuple[str, ...] = (
    *(metric for spec in TIMESERIES for metric in spec.metrics),
    *(f[1] for fields in (SLEEP_FIELDS, ACTIVITY_FIELDS, WORKOUT_FIELDS, BODY_FIELDS) for f in fields),
    "workout_duration",
)


@dataclass
class FetchedWindow:
    """What one user's window produced before storing."""

    payload: ParsedPayload = field(default_factory=ParsedPayload)
    # (resource, day) -> (digest, records) for the days that changed.
    fingerprints: dict[tuple[str, date], tuple[str, int]] = field(default_factory=dict)
    unchanged_days: int = 0
    unchanged_records: int = 0


def _digest(pages: Iterable[bytes]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for page in pages:
        h.update(len(page).to_bytes(8, "big"))
        h.update(page)
    return h.hexdigest()


def fetch_junction_window(
    client: JunctionClient,
    user_id: str,
    days: list[date],
    known: dict[tuple[str, date], tuple[str, int]],
    tz: ZoneInfo,
    *,
    executor: ThreadPoolExecutor,
    force: bool = False,
) -> FetchedWindow:
    """Fetch every resource for every day; parse only the days whose bytes changed.

    When a (resource, day) fails for good (after the HTTP layer's retries), no further request of this user is
    issued, and _WindowFailed carries every (resource, day) that did complete, so they are stored.
    """
    cgm = has_cgm(client.connected_providers(user_id))
    resources = [*SUMMARY_KINDS, *(_SERIES_BY_RESOURCE), *([GLUCOSE_RESOURCE] if cgm else [])]
    work = [(resource, day) for day in days for resource in resources]
    # Per user, not per pool: the pool is shared by the users a job syncs in parallel.
    failed = threading.Event()

    def fetch_one(item: tuple[str, date]) -> tuple[str, date, str, ParsedPayload | None] | None:
        if failed.is_set():
            return None  # the user has failed: its remaining requests would only add load
        resource, day = item
        try:
            if resource in SUMMARY_KINDS:
                pages = [client.summary_bytes(resource, user_id, day, day)]
            else:
                pages = client.timeseries_pages(user_id, resource, day, day)
            digest = _digest(pages)
            previous = known.get(item)
            if previous and previous[0] == digest and not force:
                return resource, day, digest, None
            parsed = ParsedPayload()
            for page in pages:
                body = client.http.decode(resource, page)
                if resource in SUMMARY_KINDS:
                    parsed.extend(parse_summaries(resource, body, tz))
                elif resource == GLUCOSE_RESOURCE:
                    parsed.extend(parse_glucose(body))
                else:
                    parsed.extend(parse_timeseries(_SERIES_BY_RESOURCE[resource], body))
        except BaseException:
            failed.set()
            raise
        return resource, day, digest, parsed

    futures = [executor.submit(fetch_one, item) for item in work]
    window = FetchedWindow()
    cause: ProviderError | InvalidPayload | None = None
    for future in futures:
        try:
            done = future.result()
        except (ProviderError, InvalidPayload) as exc:
            cause = cause or exc
            continue
        if done is None:
            continue
        resource, day, digest, parsed = done
        if parsed is None:
            window.unchanged_days += 1
            window.unchanged_records += known[(resource, day)][1]
            continue
        window.payload.extend(parsed)
        window.fingerprints[(resource, day)] = (digest, parsed.records)
    if cause is not None:
        raise _WindowFailed(window, cause)
    return window


class _WindowFailed(Exception):  # noqa: N818 - carries the completed part of a failed window
    def __init__(self, window: FetchedWindow, cause: ProviderError | InvalidPayload) -> None:
        super().__init__(str(cause))
        self.window = window
        self.cause = cause


class JunctionProvider(SyncProvider):
    key = "junction"
    label = "Junction"
    connect = ConnectMethod.AGGREGATOR
    job = "wearable-sync-daily"
    cron = "0 3 * * *"
    # A day's summaries are pulled once a day, and devices upload when they next sync with their phone.
    data_delay = timedelta(hours=24)
    cadence = DAILY_CADENCE
    job_description = (
        "Junction users: last JUNCTION_SYNC_LOOKBACK_DAYS days of wearable data, one task per user."
    )
    metrics = METRICS
    glucose = True
    # Junction relays other makers' devices under their own source names; a direct connection to the same
    # maker is the closer route and wins.
    source_family = "junction"
    priority = 1
    settings_name = "JUNCTION_SYNC"
    # A week of days per chunk (each day a request per resource); Junction's own historical pull on connect
    # decides how deep the data goes, and its `historical.data.*` event extends the backfill
    # (connections.backfill.mark_junction_backfill_complete).
    backfill_chunk = timedelta(days=7)
    completeness_kinds = ("heart_rate", "sleep")
    config: JunctionSyncConfig

    def __init__(self, config: Any = None, *, concurrency: int = 1) -> None:
        super().__init__(config, concurrency=concurrency)
        self.client = JunctionClient.from_config(self.config)
        # One fetch pool for the whole job run: its threads (and their HTTP connections) are reused user after
        # user, and users synced in parallel share it.
        self.executor = ThreadPoolExecutor(
            max_workers=FETCH_CONCURRENCY * max(1, concurrency), thread_name_prefix="junction-fetch"
        )

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self.client.close()

    def check_configured(self) -> None:
        if not self.config.api_key:
            raise ImproperlyConfigured("JUNCTION_API_KEY is empty: set it, or run with --sandbox")

    def writer(self) -> ReadingsWriter:
        from readings.writers import writer_for

        return writer_for(self.config)

    def user_label(self, connection: Connection) -> str:
        return connection.patient.junction_user_id or ""

    def job_connections(self, connection_ids: list[int] | None = None) -> list[Connection]:
        """The union of the configured users and every active Junction connection, each user once.

        A configured user unknown to the database gets a patient (time zone from Junction when it has one)
        and a Junction connection. A configured user whose connection ops deactivated stays deactivated and
        is listed, so the run reports it as skipped.
        """
        from connections.models import Connection, ConnectionStatus, Patient

        config = self.config
        known = {p.junction_user_id: p for p in Patient.objects.filter(junction_user_id__in=config.user_ids)}
        for user_id in config.user_ids:
            patient = known.get(user_id) or self._create_patient(user_id)
            connection, created = Connection.objects.get_or_create(patient=patient, provider=self.key)
            if created:
                from connections.backfill import start_backfill_on_commit

                start_backfill_on_commit(connection)
        ours = Connection.objects.select_related("patient").filter(
            provider=self.key, patient__junction_user_id__isnull=False
        )
        if connection_ids is not None:
            ours = ours.filter(pk__in=connection_ids)
        active = list(ours.filter(status=ConnectionStatus.ACTIVE).order_by("patient__junction_user_id"))
        inactive = list(
            ours.filter(patient__junction_user_id__in=config.user_ids).exclude(status=ConnectionStatus.ACTIVE)
        )
        return active + inactive

    def _create_patient(self, user_id: str) -> Patient:
        from connections.models import Patient

        time_zone = "UTC"
        try:
            time_zone = fallback_time_zone(self.client.get_user(user_id)) or "UTC"
        except ProviderError as exc:
            # The sync of this user will report the real problem (unknown user, bad key); creating the
            # patient first keeps the audit trail attached to it.
            logger.warning("junction user lookup failed", extra={"error": str(exc)})
        patient, _ = Patient.objects.get_or_create(
            junction_user_id=user_id, defaults={"time_zone": time_zone}
        )
        return patient

    def fetch(
        self,
        connection: Connection,
        since: datetime | None,
        *,
        session: TokenSession | None,
        window: tuple[datetime, datetime] | None = None,
        force: bool = False,
    ) -> Batch:
        from connections.models import SyncFingerprint

        # The lookback window is re-read every run (summaries and buckets are revised for days): the cursor
        # records how far a run reached, it does not narrow the next one.
        end = window[1] if window else timezone.now()
        start = window[0] if window else end - timedelta(days=self.config.lookback_days)
        days = utc_days(start, end)
        known = {
            (fp.resource, fp.day): (fp.digest, fp.records)
            for fp in SyncFingerprint.objects.filter(connection=connection, day__in=days)
        }
        try:
            fetched = fetch_junction_window(
                self.client,
                connection.patient.junction_user_id or "",
                days,
                known,
                ZoneInfo(connection.patient.time_zone),
                executor=self.executor,
                force=force,
            )
        except _WindowFailed as failed:
            # What completed is stored with its fingerprints; no cursor: the window is not covered.
            partial = self._batch(failed.window, start, end, cursor=None)
            raise PartialFetch(partial, failed.cause) from failed.cause
        return self._batch(fetched, start, end, cursor=end)

    def _batch(
        self, fetched: FetchedWindow, start: datetime, end: datetime, cursor: datetime | None
    ) -> Batch:
        from connections.models import SyncFingerprint

        def save_fingerprints(locked: Connection) -> None:
            if fetched.fingerprints:
                SyncFingerprint.objects.bulk_create(
                    [
                        SyncFingerprint(
                            connection=locked, resource=resource, day=day, digest=digest, records=records
                        )
                        for (resource, day), (digest, records) in fetched.fingerprints.items()
                    ],
                    update_conflicts=True,
                    unique_fields=["connection", "resource", "day"],
                    update_fields=["digest", "records", "updated_at"],
                )

        return Batch(
            readings=fetched.payload.readings,
            glucose=fetched.payload.glucose,
            skipped=fetched.payload.skipped,
            unchanged=fetched.unchanged_records,
            unchanged_parts=fetched.unchanged_days,
            window_start=start,
            window_end=end,
            cursor=cursor,
            save_state=save_fingerprints,
        )

    # --- Push: Svix-signed webhooks (providers/junction/webhooks.py) ---

    @classmethod
    def verify_webhook(cls, body: bytes, headers: Mapping[str, str]) -> Delivery:
        return webhooks.verify(body, headers)

    @classmethod
    def handles_webhook(cls, event_type: str) -> bool:
        return webhooks.handles(event_type)

    @classmethod
    def webhook_connection(cls, delivery: Delivery) -> Connection | None:
        return webhooks.connection_for(delivery)

    def handle_webhook(
        self, delivery: Delivery, connection: Connection, *, session: TokenSession | None
    ) -> WebhookOutcome:
        return webhooks.handle(delivery, connection)

    @classmethod
    def sandbox_config(cls, sandbox: SandboxServer, config: JunctionSyncConfig) -> JunctionSyncConfig:
        return config.replace(
            base_url_override=sandbox.junction_url,
            api_key=sandbox.api_key,
            environment="sandbox",
            user_ids=config.user_ids or tuple(sandbox.junction.user_ids),
        )
