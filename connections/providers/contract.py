"""The provider contract: what a provider declares, what it hands the sync engine (row shapes, batches,
record errors), and when a reading can have happened."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Self

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from connections.providers.base import ProviderError

if TYPE_CHECKING:
    from connections.models import Connection, Patient
    from connections.tokens import Refresher, TokenSession
    from readings.writers import ReadingsWriter
    from sandbox.server import SandboxServer

# Row shapes handed to readings.store (tuples, not objects: the ingest path handles millions of them).
# WearableRow: (metric, source, source_type, measured_at, end_at | None, value, unit)
# GlucoseRow: (source, measured_at, value_mg_dl, original_value, original_unit, trend, trend_rate, device
#              [, range_flag])
# range_flag: None, or RANGE_ABOVE / RANGE_BELOW for a reading beyond the sensor's reporting range, stored at the
# sensor's limit. Optional ninth element: producers that never see such readings keep the eight-element tuple.
# Timestamps are canonical UTC strings "YYYY-MM-DD HH:MM:SS[.ffffff]+00:00".
WearableRow = tuple[str, str, str, str, str | None, float, str]
GlucoseRow = (
    tuple[str, str, float, float, str, str, float | None, str]
    | tuple[str, str, float, float, str, str, float | None, str, str | None]
)
RANGE_ABOVE, RANGE_BELOW = "above", "below"
RANGE_FLAGS = (RANGE_ABOVE, RANGE_BELOW)


def glucose_range_flag(row: GlucoseRow) -> str | None:
    return row[8] if len(row) > 8 else None  # type: ignore[misc]


def full_glucose_row(
    row: GlucoseRow,
) -> tuple[str, str, float, float, str, str, float | None, str, str | None]:
    """The nine-element form (range_flag None when the producer sent eight)."""
    return row if len(row) > 8 else (*row, None)  # type: ignore[return-value]


# mmol/L → mg/dL: the molar mass of glucose (180.156 g/mol) / 10.
MGDL_PER_MMOLL = 18.0156
# What a CGM can report; outside it a value is a transmission error, not a reading.
GLUCOSE_LOW_MGDL, GLUCOSE_HIGH_MGDL = 20.0, 600.0


class InvalidRecord(ValueError):
    """A record that fails validation; the message names the field and the rule, never the value."""


class InvalidPayload(ValueError):
    """The response's envelope is not what the API documents (the whole page is unusable)."""


# No provider we sync existed before 2000; an earlier stamp is an unset device clock (1970) or a sentinel.
EARLIEST_READING = datetime(2000, 1, 1, tzinfo=UTC)
# Sensor and phone clocks run a little ahead of ours; a reading further ahead than this is a broken clock,
# and storing it would move a CGM cursor past every real reading still to come.
CLOCK_SKEW = timedelta(minutes=15)
# Day-level summaries are stamped at 00:00 UTC of their calendar date; the patient's local today (UTC+14 at
# most) starts up to 14 h before that instant.
DAY_STAMP_AHEAD = timedelta(hours=14)


def latest_plausible(now: datetime | None = None) -> datetime:
    """The newest instant a reading (or a cursor) may carry."""
    return (now or timezone.now()) + CLOCK_SKEW


def plausible_instant(
    moment: datetime, field_name: str, now: datetime | None = None, *, ahead: timedelta = CLOCK_SKEW
) -> datetime:
    """`moment` in UTC if a reading can have happened then; InvalidRecord if before 2000 or more than `ahead`
    after now.

    Also the guard that keeps extreme years (0001, 9999) out of the database, where a patient-local day
    computed from them would overflow and fail the whole batch.
    """
    try:
        utc = moment.astimezone(UTC)
    except OverflowError:
        raise InvalidRecord(f"{field_name} is out of range") from None
    if utc < EARLIEST_READING:
        raise InvalidRecord(f"{field_name} is before {EARLIEST_READING.year}")
    if utc > (now or timezone.now()) + ahead:
        raise InvalidRecord(f"{field_name} is in the future")
    return utc


def number_in_range(raw: object, field_name: str, low: float, high: float) -> float:
    """A measurement's value as a float, if it is a finite number within the plausible [low, high]."""
    # bool is an int subclass; True is not a heart rate.
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise InvalidRecord(f"{field_name} is not a number")
    value = float(raw)
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidRecord(f"{field_name} is outside the plausible range")
    return value


def cursor_start(stored: datetime, overlap: timedelta, now: datetime) -> datetime:
    """Where an incremental fetch starts: the cursor minus the overlap, and never after now."""
    return min(stored, now) - overlap


def plausible_day(day: date, local_today: date, field_name: str) -> date:
    """A day-level summary's calendar date: not before 2000, not after the patient's local today."""
    if day < EARLIEST_READING.date():
        raise InvalidRecord(f"{field_name} is before {EARLIEST_READING.year}")
    if day > local_today:
        raise InvalidRecord(f"{field_name} is in the future")
    return day


# --- Errors every provider raises the same way -------------------------------------------------------------


class CredentialsRefused(ProviderError):
    """The provider refused the stored credentials (a refresh grant, a login). `dead` when they can never work
    again (the patient must reconnect); otherwise the fault is ours (client configuration) or passing."""

    @property
    def dead(self) -> bool:
        return True


# --- What a provider is ------------------------------------------------------------------------------------


class ConnectMethod(StrEnum):
    OAUTH = "oauth"  # authorization-code flow through /connect/<key>/start and /callback
    LOGIN = "login"  # the patient's username and password for the provider's app (LibreLinkUp)
    AGGREGATOR = "aggregator"  # a user at an aggregator we hold the team key for (Junction)


@dataclass(frozen=True)
class Cadence:
    """How often a provider's job runs, and when its connections count as stale or failing (connections.health)."""

    every: timedelta
    grace: timedelta
    failing_streak: int

    @property
    def stale_after(self) -> timedelta:
        return self.every + self.grace


CGM_CADENCE = Cadence(every=timedelta(minutes=30), grace=timedelta(minutes=30), failing_streak=2)
# A daily run already retried each user SYNC_USER_ATTEMPTS times, so one failed run is failing; 6 h of grace
# lets a long 03:00 run finish before its connections look stale.
DAILY_CADENCE = Cadence(every=timedelta(hours=24), grace=timedelta(hours=6), failing_streak=1)


@dataclass
class Batch:
    """What one fetch produced, handed to the engine to store with the cursor in one transaction."""

    readings: list[WearableRow] = field(default_factory=list)
    glucose: list[GlucoseRow] = field(default_factory=list)
    # Records that failed validation (logged without values).
    skipped: int = 0
    # Records in parts (e.g. a resource's day) the provider recognised as unchanged and did not parse again:
    # counted as fetched.
    unchanged: int = 0
    unchanged_parts: int = 0
    window_start: datetime | None = None
    window_end: datetime | None = None
    # Where the next incremental fetch starts; None leaves the stored cursor as it is.
    cursor: datetime | None = None
    # Provider state that must commit with the rows (Junction's day fingerprints, WHOOP's unscored mark):
    # called inside the store transaction with the locked connection.
    save_state: Callable[[Connection], None] | None = None

    @property
    def fetched(self) -> int:
        return len(self.readings) + len(self.glucose) + self.skipped + self.unchanged


class WebhookRefused(Exception):  # noqa: N818 - a refusal the receiver answers with 401
    """A delivery whose signature is missing, wrong or stale: answered 401, nothing stored."""


@dataclass(frozen=True)
class Delivery:
    """A verified webhook delivery: what the inbox records before anything is processed."""

    delivery_id: str
    event_type: str
    external_user_id: str
    sent_at: datetime
    payload: dict[str, Any]


@dataclass
class WebhookOutcome:
    """What processing one delivery asks the engine to do."""

    # Rows (and provider state, e.g. a deletion, run in the store transaction) to store like a pull's.
    batch: Batch | None = None
    # A window to fetch over REST through the engine (a provider's backfill completed).
    fetch_window: tuple[datetime, datetime] | None = None
    # The provider reports the connection broken (scrubbed: a provider slug and an error type).
    connection_error: str = ""


class PartialFetch(Exception):  # noqa: N818 - a control-flow signal carrying data, not an error kind
    """A fetch that failed part-way: `batch` holds what was fetched completely (its cursor set only as far as
    everything before it is complete, else None), `cause` is the failure. The engine stores the batch, then
    handles the cause like any failure."""

    def __init__(self, batch: Batch, cause: ProviderError | InvalidPayload) -> None:
        super().__init__(str(cause))
        self.batch = batch
        self.cause = cause


class SyncProvider:
    """One data source. Subclass it in `connections/providers/<key>/provider.py` and list it in the registry.

    Everything else that lists providers (schedules, run_job names, health rules, OAuth routes, the read API's
    metrics, retention's source families, the admin filter, the sandbox set-up) reads these attributes.
    """

    key: ClassVar[str]
    label: ClassVar[str]
    connect: ClassVar[ConnectMethod]
    # The scheduled job that syncs it (providers of one job share its cron) and how it is judged healthy.
    job: ClassVar[str]
    cron: ClassVar[str]
    cadence: ClassVar[Cadence]
    job_description: ClassVar[str] = ""
    # How late the newest data arrives by design (a CGM's upload delay, a score computed in the morning): data
    # younger than this plus the cadence's staleness is on time (connections.health.data_behind).
    data_delay: ClassVar[timedelta] = timedelta(0)
    # Wearable metrics it stores, and whether it stores glucose.
    metrics: ClassVar[tuple[str, ...]] = ()
    glucose: ClassVar[bool] = False
    # The `source` its readings carry, and the priority of that source when one measurement arrives by two
    # routes (higher wins; Junction relays the same devices, so it ranks below a direct connection).
    source_family: ClassVar[str]
    priority: ClassVar[int] = 0
    # SQL LIKE patterns of the source names that are this family's devices, whichever route they came by
    # (Junction relays Dexcom as "dexcom_v3", Libre as "abbott_libreview"...).
    source_patterns: ClassVar[tuple[str, ...]] = ()
    # The Django setting holding this provider's frozen configuration (validated at start-up).
    settings_name: ClassVar[str]
    # Backfill on connect (connections/backfill.py): one window fetch per chunk, newest first, as deep as
    # settings.BACKFILL_DAYS[key] and never deeper than the history the provider holds (None: no known limit).
    backfill_chunk: ClassVar[timedelta] = timedelta(days=30)
    history_limit: ClassVar[timedelta | None] = None
    # What its completeness is judged by (readings/completeness.py KINDS): a CGM's glucose slots, a band's
    # heart-rate minutes, a night's sleep. The first one is the connection's heat-map strip and list filter.
    completeness_kinds: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any = None, *, concurrency: int = 1) -> None:
        """`config` replaces the setting (tests, --sandbox); `concurrency` is how many connections a job run
        syncs at once through this instance (its clients and pools are shared by them)."""
        if config is None:
            config = getattr(settings, self.settings_name, None)
        self.config = config if config is not None else self.config_from_env()
        self.concurrency = concurrency

    @classmethod
    def config_from_env(cls) -> Any:
        """This provider's frozen configuration from the environment, raising ImproperlyConfigured (naming the
        variable) when it is wrong: for a provider whose setting settings.py does not build. Checked at start-up
        (system check connections.E202)."""
        raise ImproperlyConfigured(f"{cls.settings_name} is not set and {cls.__name__} reads no environment")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release HTTP clients and pools held for a job run."""

    def check_configured(self) -> None:
        """Raise ImproperlyConfigured (naming the setting) when a job of this provider cannot run."""

    def job_connections(self, connection_ids: list[int] | None = None) -> list[Connection]:
        """The connections a run of the job syncs: active ones with credentials, in id order."""
        from connections.models import Connection, ConnectionStatus

        query = Connection.objects.select_related("patient").filter(
            provider=self.key, status=ConnectionStatus.ACTIVE
        )
        if self.connect is not ConnectMethod.AGGREGATOR:
            query = query.filter(credential__isnull=False)
        if connection_ids is not None:
            query = query.filter(pk__in=connection_ids)
        return list(query.order_by("pk"))

    def writer(self) -> ReadingsWriter:
        """Where the rows go: this database, or the patient-graph service API (PATIENT_GRAPH_API_URL)."""
        from readings.writers import writer_for

        return writer_for(settings.JUNCTION_SYNC)

    def user_label(self, connection: Connection) -> str:
        """How a job summary names the connection's user (never PHI)."""
        return str(connection.pk)

    def refresher(self) -> Refresher | None:
        """How to get a new access token (an OAuth refresh, a new login); None when the provider has none."""
        return None

    def token_margin(self) -> timedelta:
        return timedelta(seconds=getattr(self.config, "token_refresh_margin_seconds", 300))

    def fetch(
        self,
        connection: Connection,
        since: datetime | None,
        *,
        session: TokenSession | None,
        window: tuple[datetime, datetime] | None = None,
        force: bool = False,
    ) -> Batch:
        """Pull the connection's data since the cursor `since` (or exactly `window`); `force` ignores what the
        provider recognises as unchanged."""
        raise NotImplementedError

    # --- Push (webhooks through the inbox, connections/inbox.py); a provider that pushes implements these ---

    @classmethod
    def verify_webhook(cls, body: bytes, headers: Mapping[str, str]) -> Delivery:
        """Check the delivery's signature over the raw body (WebhookRefused if bad or stale) and read its
        envelope. Runs in the request: no database, no provider call."""
        raise NotImplementedError(f"{cls.key} does not push data")

    @classmethod
    def handles_webhook(cls, event_type: str) -> bool:
        """Whether an event type means anything to us; others are acknowledged and recorded as ignored."""
        return False

    @classmethod
    def webhook_connection(cls, delivery: Delivery) -> Connection | None:
        """The connection a delivery is for (created when the event announces it), None when unknown yet."""
        return None

    def handle_webhook(
        self, delivery: Delivery, connection: Connection, *, session: TokenSession | None
    ) -> WebhookOutcome:
        """Turn a verified delivery into what the engine stores or fetches (providers that push implement it)."""
        raise NotImplementedError(f"{self.key} does not push data")

    # --- The provider sandbox (demo, tests, benchmarks) ---

    @classmethod
    def sandbox_config(cls, sandbox: SandboxServer, config: Any) -> Any:
        """`config` pointed at the sandbox's fake of this provider."""
        return config

    def connect_sandbox_user(self, sandbox: SandboxServer, index: int, patient: Patient | None) -> Connection:
        """Connect sandbox user `index` through the provider's real connect flow."""
        raise NotImplementedError

    def sandbox_external_id(self, sandbox: SandboxServer, index: int) -> str:
        """The provider's id of sandbox user `index` (finds an earlier connection of the same account)."""
        raise NotImplementedError
