"""Patients, their provider connections, and the audit trail of every sync."""

from __future__ import annotations

import zoneinfo

from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.functions import Now
from django.utils import timezone

from connections.crypto import EncryptedTextField


def validate_time_zone(value: str) -> None:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"{value!r} is not an IANA time zone") from None


class Patient(models.Model):
    """A person whose data we sync. Identified by Junction user id and/or Clerk user id, never by name."""

    junction_user_id = models.CharField(max_length=64, unique=True, null=True, blank=True)
    clerk_user_id = models.CharField(max_length=64, unique=True, null=True, blank=True)
    # The patient's IANA zone: daily statistics are per patient-local day.
    time_zone = models.CharField(max_length=64, default="UTC", validators=[validate_time_zone])
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "patients"

    def __str__(self) -> str:
        return f"Patient {self.pk}"


class Provider(models.TextChoices):
    """The keys of the built-in providers, for code that addresses one of them. Which providers exist is the
    registry's to say (connections.providers.registry): the model fields take their choices from there."""

    JUNCTION = "junction", "Junction"
    WHOOP = "whoop", "WHOOP"
    DEXCOM = "dexcom", "Dexcom"
    LIBRE = "libre", "FreeStyle Libre"


def provider_choices() -> list[tuple[str, str]]:
    # A callable, so registering a provider needs no migration.
    from connections.providers.registry import provider_choices as registered

    return registered()


class ConnectionStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    INACTIVE = "inactive", "Inactive"


class SyncErrorCode(models.TextChoices):
    """Why a sync failed, stable for API clients (never renamed; new codes added at the end); the label is the
    human message the API shows. Set by the engine's one classifier, connections/sync_errors.py."""

    PROVIDER_UNAVAILABLE = (
        "provider_unavailable",
        "The provider did not answer (a server error or a network failure); the next sync tries again.",
    )
    TIMEOUT = "timeout", "The provider took too long to answer; the next sync tries again."
    RATE_LIMITED = "rate_limited", "The provider asked us to slow down; the next sync tries again."
    CREDENTIALS_REVOKED = (
        "credentials_revoked",
        "The provider no longer accepts this connection's authorization; the patient must reconnect.",
    )
    PROVIDER_REJECTED_REQUEST = (
        "provider_rejected_request",
        "The provider refused the request; retrying will not help until it is fixed on our side.",
    )
    PROVIDER_USER_NOT_FOUND = (
        "provider_user_not_found",
        "The provider does not know this user (the account was deleted or disconnected there).",
    )
    INVALID_PROVIDER_DATA = (
        "invalid_provider_data",
        "The provider answered with data its API does not document; the next sync tries again.",
    )
    CONNECTION_INACTIVE = "connection_inactive", "The connection was removed or deactivated."
    SOURCE_NOT_CONNECTED = "source_not_connected", "The source is not connected through Junction."
    INTERRUPTED = (
        "interrupted",
        "The sync stopped before it finished (its worker stopped); it is tried again.",
    )
    INTERNAL_ERROR = "internal_error", "An internal error stopped the sync; it is reported to the team."


class Connection(models.Model):
    """A patient's link to one provider; `last_sync_at` is the sync cursor for it."""

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="connections")
    provider = models.CharField(max_length=16, choices=provider_choices)
    status = models.CharField(
        max_length=16, choices=ConnectionStatus.choices, default=ConnectionStatus.ACTIVE
    )
    # The end of the window covered by the last successful sync; moved only in the transaction that stored
    # that window's data.
    last_sync_at = models.DateTimeField(null=True, blank=True)
    # When a sync last succeeded. Not the cursor: a CGM's cursor is its newest reading, which arrives hours late
    # by design, so "the sync works" and "how old the data is" are told apart (connections/health.py).
    last_success_at = models.DateTimeField("last successful sync", null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    failure_streak = models.PositiveIntegerField(default=0)
    # Scrubbed: an error class and status code, never a token, a reading or a response body.
    last_error = models.TextField(blank=True, default="")
    # last_error's stable code (SyncErrorCode), for the API; empty after a successful sync.
    last_error_code = models.CharField(max_length=32, blank=True, default="", choices=SyncErrorCode.choices)
    status_reason = models.TextField(blank=True, default="")
    # The newest measured_at stored from this connection, kept by readings.store in the storing transaction:
    # the admin shows it for 100,000 connections without a max() over tens of millions of readings.
    latest_reading_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "patient_connections"
        permissions = [
            ("force_resync_connection", "Can force a resync of a connection"),
            ("deactivate_connection", "Can deactivate or reactivate a connection"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["patient", "provider"], name="connection_one_per_patient_provider"
            ),
        ]
        indexes = [
            # The schedulers select active connections of one provider.
            models.Index(fields=["provider", "status"], name="connection_provider_status"),
        ]

    def __str__(self) -> str:
        return f"{self.get_provider_display()} connection {self.pk}"


class SyncTrigger(models.TextChoices):
    SCHEDULE = "schedule", "Schedule"
    MANUAL = "manual", "Manual (API)"
    ADMIN = "admin", "Admin"
    COMMAND = "command", "Command line"
    WEBHOOK = "webhook", "Webhook"
    BACKFILL = "backfill", "Backfill"


class SyncStatus(models.TextChoices):
    # An ops request (Force resync) waiting for a worker; it moves to running, then to its sync's result.
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCESS = "success", "Success"
    FAILED = "failed", "Failed"


class SyncEventKind(models.TextChoices):
    SYNC = "sync", "Sync run"
    RESYNC_REQUESTED = "resync_requested", "Resync requested"
    DEACTIVATED = "deactivated", "Deactivated"
    REACTIVATED = "reactivated", "Reactivated"
    WEBHOOK_REPLAYED = "webhook_replayed", "Webhook replayed"
    BACKFILL_COMPLETED = "backfill.completed", "Backfill completed"
    GAP_REPAIR_REQUESTED = "gap_repair_requested", "Gap repair requested"


class SyncEvent(models.Model):
    """One row per sync run of one connection, and one per staff action on it: the `wearable_sync` audit trail."""

    connection = models.ForeignKey(
        Connection, on_delete=models.SET_NULL, null=True, related_name="sync_events"
    )
    # Copied from the connection so the trail survives the connection's removal.
    patient = models.ForeignKey(Patient, on_delete=models.SET_NULL, null=True, related_name="sync_events")
    provider = models.CharField(max_length=16, choices=provider_choices)
    trigger = models.CharField(max_length=16, choices=SyncTrigger.choices)
    status = models.CharField(max_length=16, choices=SyncStatus.choices, default=SyncStatus.RUNNING)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    window_start = models.DateTimeField(null=True, blank=True)
    window_end = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    records_fetched = models.PositiveIntegerField(default=0)
    records_stored = models.PositiveIntegerField(default=0)
    records_skipped = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True, default="")
    error_code = models.CharField(max_length=32, blank=True, default="", choices=SyncErrorCode.choices)
    # Who acted, for manual and admin triggers (a staff username or "patient"); empty for schedules.
    actor = models.CharField(max_length=150, blank=True, default="")
    # A sync run, or an ops action (resync requested, deactivated, reactivated) recorded with its actor.
    kind = models.CharField(max_length=20, choices=SyncEventKind.choices, default=SyncEventKind.SYNC)
    # The reason staff gave for an action; never PHI by policy (the admin form says so).
    note = models.CharField(max_length=500, blank=True, default="")
    # A Force resync request: the sync run it caused (its status is this request's result).
    result_event = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # The job run this sync belongs to (a scheduled fan-out, run_job, sync_wearables); none for manual syncs.
    job_run = models.ForeignKey(
        "JobRun", on_delete=models.SET_NULL, null=True, blank=True, related_name="sync_events"
    )
    # The django-q2 task that runs a queued request (Force resync), to find it on the queue's pages.
    task_id = models.CharField(max_length=32, blank=True, default="")

    class Meta:
        db_table = "wearable_sync"
        indexes = [
            models.Index(fields=["connection", "-started_at"], name="sync_event_connection_recent"),
            models.Index(fields=["-started_at"], name="sync_event_recent"),
        ]

    def __str__(self) -> str:
        return f"Sync {self.pk} ({self.provider}, {self.status})"

    @property
    def duration_seconds(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


class SyncFingerprint(models.Model):
    """A digest of what a provider served for one (connection, resource, UTC day).

    A re-sync that gets byte-identical data for a day skips parsing and storing it: that is most of the
    7-day lookback on every daily run. Written in the same transaction as the day's readings.
    """

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="+")
    resource = models.CharField(max_length=40)
    day = models.DateField()
    digest = models.CharField(max_length=64)
    # Records the day held when it was parsed: a skipped day still counts as fetched in the summary.
    records = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "sync_fingerprints"
        constraints = [
            models.UniqueConstraint(fields=["connection", "resource", "day"], name="fingerprint_unique_day"),
        ]

    def __str__(self) -> str:
        return f"{self.resource} {self.day}"


class ProviderCredential(models.Model):
    """How we reach a direct provider for one connection: OAuth tokens (WHOOP, Dexcom) or a LibreLinkUp login.

    Secrets are encrypted at rest (connections.crypto); `expires_at` stays plaintext so schedules can find tokens
    due for refresh. Rows are changed only under `select_for_update` (connections.tokens), because refresh tokens
    are single use: two workers must never spend the same one.
    """

    connection = models.OneToOneField(Connection, on_delete=models.CASCADE, related_name="credential")
    access_token = EncryptedTextField(blank=True, default="")
    refresh_token = EncryptedTextField(blank=True, default="")
    expires_at = models.DateTimeField(null=True, blank=True)
    scope = models.CharField(max_length=255, blank=True, default="")
    # WHOOP user_id, Dexcom's per-app userId, or the LibreLinkUp account's user id.
    external_user_id = models.CharField(max_length=128, blank=True, default="")
    # LibreLinkUp: the follower account's login, its region, and the patient it follows.
    libre_email = EncryptedTextField(blank=True, default="")
    libre_password = EncryptedTextField(blank=True, default="")
    region = models.CharField(max_length=16, blank=True, default="")
    libre_patient_id = models.CharField(max_length=64, blank=True, default="")
    # WHOOP: the start of the oldest record not yet final (PENDING_SCORE, or the open cycle); the next sync
    # fetches from here so the record is fetched again until it is scored. Moves with the data it covers.
    pending_since = models.DateTimeField(null=True, blank=True)
    refreshed_at = models.DateTimeField(null=True, blank=True)
    # A refresh call failed without an answer (timeout, network): the provider may have rotated the pair and the
    # new one was lost with the response, so a later invalid_grant on the token we hold proves nothing.
    refresh_in_doubt = models.BooleanField(default=False)
    created_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "provider_credentials"

    def __str__(self) -> str:
        return f"Credential of connection {self.connection_id}"

    def __repr__(self) -> str:  # never the tokens
        return f"<ProviderCredential connection={self.connection_id} expires_at={self.expires_at}>"


class OAuthState(models.Model):
    """One authorization-code flow in progress: single use, expiring, bound to the patient who started it."""

    state = models.CharField(max_length=64, unique=True)
    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="+")
    provider = models.CharField(max_length=16, choices=provider_choices)
    redirect_uri = models.CharField(max_length=500)
    # SHA-256 of the key set as a cookie on the browser that started the flow (RFC 6749 §10.12): the callback
    # must come from that browser, or a victim approving an attacker's link would link their account to the
    # attacker's patient. Only the hash is kept, so the table alone cannot complete a flow.
    browser_binding = models.CharField(max_length=64, default="")
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "oauth_states"
        indexes = [models.Index(fields=["expires_at"], name="oauth_state_expires")]

    def __str__(self) -> str:
        return f"OAuth state for {self.provider} (patient {self.patient_id})"


class JobRunStatus(models.TextChoices):
    RUNNING = "running", "Running"
    SUCCESS = "success", "Success"
    # Finished, but some users failed (they are retried by the next run).
    PARTIAL = "partial", "Partial"
    FAILED = "failed", "Failed"


class JobRun(models.Model):
    """One run of a scheduled job, written by `connections.jobruns.track_job` around its entry point.

    A fan-out job's run stays `running` until its per-user tasks have all reported (`record_unit`), so
    users, records and duration are those of the whole run, not of the dispatcher.
    """

    job = models.CharField(max_length=64)
    status = models.CharField(max_length=16, choices=JobRunStatus.choices, default=JobRunStatus.RUNNING)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    users_expected = models.PositiveIntegerField(default=0)
    users_synced = models.PositiveIntegerField(default=0)
    users_failed = models.PositiveIntegerField(default=0)
    # Users the run chose not to sync (an inactive connection, a connection removed meanwhile).
    users_skipped = models.PositiveIntegerField(default=0)
    records_stored = models.PositiveBigIntegerField(default=0)
    # An exception class and a scrubbed message when the entry point itself failed.
    error = models.TextField(blank=True, default="")
    # The Sentry Crons check-in opened by the dispatcher and closed by whichever task finishes the run.
    sentry_check_in_id = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        db_table = "job_runs"
        indexes = [
            # The job health page reads each job's recent runs.
            models.Index(fields=["job", "-started_at"], name="job_run_recent"),
        ]

    def __str__(self) -> str:
        return f"{self.job} run {self.pk} ({self.status})"

    @property
    def duration_seconds(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


class JobRunUnit(models.Model):
    """One unit (a connection) of a fan-out run that has reported: a task the queue delivers twice (a lost
    acknowledgement, a worker killed after the sync) finds its row and is not counted again."""

    job_run = models.ForeignKey(JobRun, on_delete=models.CASCADE, related_name="units")
    unit = models.BigIntegerField()
    outcome = models.CharField(max_length=16)
    recorded_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "job_run_units"
        constraints = [models.UniqueConstraint(fields=["job_run", "unit"], name="job_run_unit_once")]

    def __str__(self) -> str:
        return f"unit {self.unit} of run {self.job_run_id} ({self.outcome})"


class JobHealth(JobRun):
    """The admin's job health page (a proxy so it gets its own entry and permission in the admin)."""

    class Meta:
        proxy = True
        verbose_name = "job health"
        verbose_name_plural = "job health"


class SyncRequestStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCESS = "success", "Success"
    FAILED = "failed", "Failed"


ACTIVE_SYNC_REQUEST_STATUSES = (SyncRequestStatus.QUEUED, SyncRequestStatus.RUNNING)


class SyncRequest(models.Model):
    """A manual sync the consumer app asked for (`POST /api/.../sync`), run in the background by django-q2.

    At most one queued-or-running request per (patient, source), enforced by a partial unique index: two
    simultaneous POSTs collapse into one request, whatever the number of web processes.
    """

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="sync_requests")
    # The API's source name: a direct provider (whoop, dexcom, libre) or a Junction provider slug (oura).
    source = models.CharField(max_length=40)
    connection = models.ForeignKey(Connection, on_delete=models.SET_NULL, null=True, related_name="+")
    status = models.CharField(
        max_length=16, choices=SyncRequestStatus.choices, default=SyncRequestStatus.QUEUED
    )
    # The client's Idempotency-Key header, when it sent one: the same key returns the same request.
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    # The audit row of the sync this request ran.
    sync_event = models.ForeignKey(SyncEvent, on_delete=models.SET_NULL, null=True, related_name="+")
    # What Junction answered to the refresh asked before fetching: refreshed | rate_limited | failed | "".
    junction_refresh = models.CharField(max_length=16, blank=True, default="")
    records_fetched = models.PositiveIntegerField(default=0)
    records_stored = models.PositiveIntegerField(default=0)
    records_skipped = models.PositiveIntegerField(default=0)
    # Scrubbed like SyncEvent.error: an error class and a status code, never a token or a reading.
    error = models.TextField(blank=True, default="")
    # Why it failed, for the API (SyncErrorCode; its label is the message the API shows).
    error_code = models.CharField(max_length=32, blank=True, default="", choices=SyncErrorCode.choices)
    # Python-side default so the hourly limit and tests share one clock.
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "wearable_sync_requests"
        constraints = [
            models.UniqueConstraint(
                fields=["patient", "source"],
                condition=models.Q(status__in=ACTIVE_SYNC_REQUEST_STATUSES),
                name="sync_request_one_active_per_source",
            ),
            models.UniqueConstraint(
                fields=["patient", "idempotency_key"],
                condition=models.Q(idempotency_key__isnull=False),
                name="sync_request_idempotency_key",
            ),
        ]
        indexes = [
            # The hourly limit counts a patient's recent requests.
            models.Index(fields=["patient", "-created_at"], name="sync_request_patient_recent"),
        ]

    def __str__(self) -> str:
        return f"Sync request {self.pk} ({self.source}, {self.status})"


class WebhookStatus(models.TextChoices):
    RECEIVED = "received", "Received"
    PROCESSED = "processed", "Processed"
    FAILED = "failed", "Failed"
    IGNORED = "ignored", "Ignored"
    # Verified, but for a user we have no connection of yet: kept and processed when the user appears.
    UNMATCHED = "unmatched", "Unmatched"


class WebhookEvent(models.Model):
    """The durable inbox: one row per verified provider delivery, written before the 2xx is answered.

    Unique on (provider, delivery_id), so a redelivery is a no-op. The raw body is PHI: encrypted at rest like
    credentials and never logged; `error` is scrubbed (an error class and a status code, never a value).
    """

    provider = models.CharField(max_length=16, choices=provider_choices)
    # Svix's svix-id for Junction (identical across redeliveries); WHOOP's trace_id.
    delivery_id = models.CharField(max_length=128)
    event_type = models.CharField(max_length=100)
    external_user_id = models.CharField(max_length=128, blank=True, default="")
    body = EncryptedTextField()
    status = models.CharField(max_length=16, choices=WebhookStatus.choices, default=WebhookStatus.RECEIVED)
    # The signature's timestamp: when the provider sent it (freshness is measured from here).
    sent_at = models.DateTimeField(null=True, blank=True)
    received_at = models.DateTimeField(default=timezone.now)
    processed_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    error = models.TextField(blank=True, default="")
    connection = models.ForeignKey(
        Connection, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    records_stored = models.PositiveIntegerField(default=0)

    class Meta:
        db_table = "webhook_inbox"
        constraints = [
            models.UniqueConstraint(fields=["provider", "delivery_id"], name="webhook_delivery_once"),
        ]
        indexes = [
            # The pending sweep and the admin's status filter.
            models.Index(fields=["status", "received_at"], name="webhook_status_received"),
            # Replaying a user's unmatched events when the user appears.
            models.Index(
                fields=["provider", "external_user_id"],
                condition=models.Q(status="unmatched"),
                name="webhook_unmatched_user",
            ),
            models.Index(fields=["connection", "-received_at"], name="webhook_connection_recent"),
        ]

    def __str__(self) -> str:
        return f"{self.provider} {self.event_type} ({self.status})"

    @property
    def freshness_seconds(self) -> float | None:
        if self.processed_at is None or self.sent_at is None:
            return None
        return (self.processed_at - self.sent_at).total_seconds()


class ProviderRecord(models.Model):
    """A provider's record (a Junction summary, a WHOOP sleep or workout) as last stored for a connection.

    `version` (the record's updated_at) keeps an older delivery arriving after a newer one from overwriting it;
    `measured_at` is where its rows are keyed, so a `*.deleted` event that carries only the id removes them.
    Written in the same transaction as the rows.
    """

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="+")
    resource = models.CharField(max_length=40)
    record_id = models.CharField(max_length=64)
    version = models.CharField(max_length=40, blank=True, default="")
    measured_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "provider_records"
        constraints = [
            models.UniqueConstraint(
                fields=["connection", "resource", "record_id"], name="provider_record_once"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.resource} {self.record_id}"


# --- Shared provider budgets and circuit breakers (connections/budgets.py) ---------------------------------


class ProviderBudget(models.Model):
    """One token bucket of a provider's rate limit, shared by every worker on every machine.

    `key` names the provider, the app (its API host) or account, and the limit. Claimed by one
    UPDATE … RETURNING statement (connections.budgets); `capacity` and `rate` are rewritten from the settings on
    every claim, so they show what is in force.
    """

    key = models.CharField(max_length=200, primary_key=True)
    provider = models.CharField(max_length=16)
    capacity = models.FloatField()
    rate = models.FloatField(help_text="tokens per second")
    # The provider's own limit the bucket keeps under (for the job health page).
    limit = models.PositiveIntegerField(default=0)
    window_seconds = models.FloatField(default=0)
    tokens = models.FloatField()
    refilled_at = models.DateTimeField()
    granted = models.PositiveBigIntegerField(default=0)

    class Meta:
        db_table = "provider_budgets"

    def __str__(self) -> str:
        return self.key


class BreakerState(models.TextChoices):
    CLOSED = "closed", "Closed"
    OPEN = "open", "Open"
    HALF_OPEN = "half_open", "Half-open (probing)"


class ProviderBreaker(models.Model):
    """A provider's circuit breaker, shared in the database by every worker (connections.budgets)."""

    provider = models.CharField(max_length=16, primary_key=True)
    state = models.CharField(max_length=16, choices=BreakerState.choices, default=BreakerState.CLOSED)
    window_started_at = models.DateTimeField()
    successes = models.PositiveIntegerField(default=0)
    failures = models.PositiveIntegerField(default=0)
    opened_at = models.DateTimeField(null=True, blank=True)
    open_until = models.DateTimeField(null=True, blank=True)
    probe_started_at = models.DateTimeField(null=True, blank=True)
    times_opened = models.PositiveIntegerField(default=0)

    class Meta:
        db_table = "provider_breakers"

    def __str__(self) -> str:
        return f"{self.provider}: {self.state}"


class LoginGuard(models.Model):
    """Recent login attempts of one provider account (a hash of the login name), so that no worker logs in
    into a provider's lock-out (LibreLinkUp locks an account after 3 failed logins in 60 s)."""

    key = models.CharField(max_length=200, primary_key=True)
    # Attempts not known to have succeeded (failed, or still in flight), kept for the guard's interval.
    attempts = ArrayField(models.DateTimeField(), default=list)

    class Meta:
        db_table = "provider_login_guards"

    def __str__(self) -> str:
        return self.key


# --- Backfill on connect (connections/backfill.py) ---------------------------------------------------------


class BackfillStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class Backfill(models.Model):
    """A connection's history, fetched once on connect as deep as the provider allows, newest chunk first.

    `next_end` is where the next chunk ends; it moves (with `chunks_done` and `rows_stored`) in the transaction
    that stores the chunk's rows, so a worker killed mid-chunk leaves the row at the last stored chunk and the
    next run fetches that chunk again: nothing is skipped, and the natural keys make the repeat a no-op.
    """

    connection = models.OneToOneField(Connection, on_delete=models.CASCADE, related_name="backfill")
    status = models.CharField(max_length=16, choices=BackfillStatus.choices, default=BackfillStatus.PENDING)
    range_start = models.DateTimeField()
    range_end = models.DateTimeField()
    next_end = models.DateTimeField()
    chunk_seconds = models.PositiveIntegerField()
    chunks_total = models.PositiveIntegerField(default=0)
    chunks_done = models.PositiveIntegerField(default=0)
    rows_stored = models.PositiveBigIntegerField(default=0)
    # Scrubbed like SyncEvent.error: a provider, a route, a status; never a token or a reading.
    reason = models.TextField(blank=True, default="")
    attempts = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "connection_backfills"

    def __str__(self) -> str:
        return f"backfill of connection {self.connection_id} ({self.status})"

    @property
    def percent_done(self) -> int:
        if self.status == BackfillStatus.DONE:
            return 100
        return 0 if not self.chunks_total else min(99, int(100 * self.chunks_done / self.chunks_total))

    @property
    def label(self) -> str:
        if self.status == BackfillStatus.RUNNING:
            return f"running, {self.percent_done} %"
        if self.status == BackfillStatus.FAILED:
            return f"failed: {self.reason[:120]}"
        return self.get_status_display().lower()


# --- The gap ledger (connections/gaps.py) --------------------------------------------------------------------


class GapStatus(models.TextChoices):
    OPEN = "open", "Open"
    REPAIRING = "repairing", "Repairing"
    CLOSED = "closed", "Closed"
    UNAVAILABLE = "unavailable", "Not available at the provider"


class GapCause(models.TextChoices):
    LOW_COMPLETENESS = "low_completeness", "Days below the expected share"
    RECONNECT = "reconnect", "Reconnected after a pause"


class DataGap(models.Model):
    """A window of a connection's data known to be missing: days below the expected share of data, or the pause
    before a reconnect. A repair re-fetches exactly [start, end) and closes it, or marks it not available at the
    provider (nothing more came, or it is older than the history the provider holds)."""

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="gaps")
    kind = models.CharField(max_length=16, blank=True, default="")
    start = models.DateTimeField()
    end = models.DateTimeField()
    cause = models.CharField(max_length=20, choices=GapCause.choices)
    status = models.CharField(max_length=16, choices=GapStatus.choices, default=GapStatus.OPEN)
    detected_at = models.DateTimeField(default=timezone.now)
    closed_at = models.DateTimeField(null=True, blank=True)
    repair_attempts = models.PositiveSmallIntegerField(default=0)
    rows_repaired = models.PositiveIntegerField(default=0)
    # Scrubbed like SyncEvent.error: never a token or a reading.
    note = models.CharField(max_length=500, blank=True, default="")

    class Meta:
        db_table = "connection_data_gaps"
        constraints = [
            models.UniqueConstraint(fields=["connection", "kind", "start", "end"], name="data_gap_once"),
        ]
        indexes = [models.Index(fields=["status", "-detected_at"], name="data_gap_open")]

    def __str__(self) -> str:
        return f"gap {self.start:%Y-%m-%d %H:%M}–{self.end:%Y-%m-%d %H:%M} of connection {self.connection_id}"
