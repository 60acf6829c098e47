"""Request and response shapes of the REST API (also the OpenAPI components drf-spectacular renders)."""

from __future__ import annotations

from rest_framework import serializers

from connections.api.errors import PROBLEM_CHOICES
from connections.api.openapi import DAILY_METRIC, SOURCE, enum_field
from connections.models import ConnectionStatus, SyncErrorCode, SyncRequest, SyncRequestStatus


@enum_field(SOURCE)
class SourceField(serializers.CharField):
    """A source name (the `Source` enum of the schema, derived from the provider registry)."""


@enum_field(DAILY_METRIC)
class DailyMetricField(serializers.CharField):
    """A daily statistic's metric (the `DailyMetric` enum, derived from the provider registry)."""


class FieldErrorSerializer(serializers.Serializer):
    field = serializers.CharField(
        required=False,
        help_text="The field, query parameter or header at fault (`readings[3].value` for a row's field); "
        "absent when the error is about the body as a whole.",
    )
    message = serializers.CharField(help_text="What is wrong with it, for people; never echoes the value.")


class ProblemSerializer(serializers.Serializer):
    """RFC 9457 problem details: the body of every error under /api/ (`application/problem+json`)."""

    type = serializers.CharField(
        help_text="URI reference of the problem type, `/api/problems/<code>`, which documents it."
    )
    title = serializers.CharField(
        help_text="Short summary of the problem type; the same for every occurrence."
    )
    status = serializers.IntegerField(help_text="The HTTP status code, repeated.")
    detail = serializers.CharField(help_text="What went wrong this time, for people.")
    instance = serializers.CharField(help_text="The request's path (without its query string).")
    code = serializers.ChoiceField(
        choices=PROBLEM_CHOICES,
        help_text="Stable machine-readable code; branch on this (or on `type`), never on `detail`.",
    )
    errors = FieldErrorSerializer(
        many=True, required=False, help_text="Each invalid field, when the request broke field rules."
    )
    accepted_sources = serializers.ListField(
        child=SourceField(),
        required=False,
        help_text="`invalid_source` only: the sources this API syncs.",
    )
    accepted_metrics = serializers.ListField(
        child=DailyMetricField(),
        required=False,
        help_text="`invalid_parameter` of `metric` only: the metrics this endpoint knows.",
    )
    max_body_bytes = serializers.IntegerField(
        required=False, help_text="`body_too_large` only: the endpoint's body limit in bytes."
    )
    retry_after_seconds = serializers.IntegerField(
        required=False, help_text="`rate_limited` only: the Retry-After header's seconds."
    )


class ManualSyncBodySerializer(serializers.Serializer):
    # A free string, not a choice: an unknown source gets the API's own 400 naming the accepted ones.
    source = SourceField(
        max_length=64,
        help_text="The source to sync: a direct provider (whoop, dexcom, libre) or a provider connected through "
        "Junction (oura, ...).",
    )


def _error_code() -> serializers.ChoiceField:
    return serializers.ChoiceField(
        choices=SyncErrorCode.choices,
        allow_null=True,
        help_text="Why the last sync failed, a stable code (the README lists them); null unless it failed.",
    )


def _error_message() -> serializers.CharField:
    return serializers.CharField(
        allow_null=True, help_text="The error code's message, for people; null unless it failed."
    )


class SyncRequestSerializer(serializers.ModelSerializer):
    id = serializers.IntegerField(help_text="The sync request's id; its status is at the Location URL.")
    source = SourceField(help_text="The source asked for.")
    status = serializers.ChoiceField(
        choices=SyncRequestStatus.choices,
        help_text="queued, then running, then success or failed; poll the Location URL until it is final.",
    )
    created_at = serializers.DateTimeField(help_text="When it was asked for (UTC).")
    started_at = serializers.DateTimeField(
        allow_null=True, help_text="When a worker started it; null while queued."
    )
    finished_at = serializers.DateTimeField(allow_null=True, help_text="When it ended; null until then.")
    junction_refresh = serializers.CharField(
        help_text="A Junction source only: what Junction answered to the refresh asked first (refreshed, "
        "rate_limited, failed); empty otherwise or until then."
    )
    records_fetched = serializers.IntegerField(help_text="Records read from the provider.")
    records_stored = serializers.IntegerField(
        help_text="Rows written or changed (unchanged ones are not counted)."
    )
    records_skipped = serializers.IntegerField(help_text="Invalid records skipped (logged without values).")
    error_code = _error_code()
    error_message = _error_message()
    sync_event_id = serializers.IntegerField(
        allow_null=True,
        read_only=True,
        help_text="The audit row of the sync it ran (ops use it); null until then.",
    )

    class Meta:
        model = SyncRequest
        fields = [
            "id",
            "source",
            "status",
            "created_at",
            "started_at",
            "finished_at",
            "junction_refresh",
            "records_fetched",
            "records_stored",
            "records_skipped",
            "error_code",
            "error_message",
            "sync_event_id",
        ]
        read_only_fields = fields


class DataFreshnessSerializer(serializers.Serializer):
    latest_data_day = serializers.DateField(
        allow_null=True, help_text="The latest patient-local day with any daily statistic (all sources)."
    )
    hours_since_last_sync = serializers.FloatField(
        allow_null=True,
        help_text="Hours since the sync cursor's time (the data synced up to); null before one.",
    )


class BackfillSerializer(serializers.Serializer):
    status = serializers.ChoiceField(
        choices=["pending", "running", "done", "failed"],
        help_text="pending (queued), running (chunks being fetched, newest first), done, or failed (see reason).",
    )
    percent_done = serializers.IntegerField(help_text="Chunks stored of the backfill's chunks, 0-100.")
    range_start = serializers.DateTimeField(help_text="The oldest instant the backfill reaches (UTC).")
    range_end = serializers.DateTimeField(
        help_text="The newest instant the backfill covers (UTC): the connect."
    )
    reason = serializers.CharField(help_text="Why it failed (empty unless failed); never PHI.")


class DataCompletenessSerializer(serializers.Serializer):
    days = serializers.IntegerField(help_text="The window: the patient's last N local days, today included.")
    share = serializers.FloatField(
        allow_null=True,
        help_text="Received over expected in the window for the connection's main kind of data (a CGM's "
        "5-minute readings, a band's heart-rate minutes, a night's sleep), 0-1.",
    )
    by_kind = serializers.DictField(
        child=serializers.FloatField(allow_null=True),
        help_text="The same share per kind of data the connection brings (glucose, heart_rate, sleep), 0-1; "
        "null when nothing is expected in the window.",
    )


class ConnectionSerializer(serializers.Serializer):
    id = serializers.IntegerField(help_text="The connection's id.")
    provider = serializers.CharField(help_text="The provider connected: junction or a direct provider's key.")
    status = serializers.ChoiceField(
        choices=ConnectionStatus.choices,
        help_text="active, or inactive (deactivated by ops, or its credentials were revoked: reconnect).",
    )
    sources = serializers.ListField(
        child=SourceField(),
        help_text="The sources this connection syncs: a direct provider's own name; for Junction, the "
        "providers the user connected there as last looked up (by a manual sync), empty until then.",
    )
    last_sync_at = serializers.DateTimeField(
        allow_null=True, help_text="The end of the window the last successful sync covered (its cursor)."
    )
    last_attempt_at = serializers.DateTimeField(allow_null=True, help_text="When a sync was last tried.")
    healthy = serializers.BooleanField(
        help_text="The admin's health is ok: active, not failing, and synced successfully within the provider's "
        "cadence (late data by design, such as Dexcom's, does not count against it)."
    )
    backfill = BackfillSerializer(
        allow_null=True,
        help_text="The history fetched on connect, newest first (null: none planned for this connection).",
    )
    data_completeness = DataCompletenessSerializer(
        help_text="How much of the data a worn device sends arrived over the patient's last 14 local days."
    )
    data_freshness = DataFreshnessSerializer(help_text="How recent the patient's data is.")
    error_code = _error_code()
    error_message = _error_message()


class ConnectionListSerializer(serializers.Serializer):
    results = ConnectionSerializer(many=True, help_text="The patient's connections, by provider.")


class PingSerializer(serializers.Serializer):
    ok = serializers.BooleanField(help_text="Always true: the API answers.")


class ProblemTypeSerializer(serializers.Serializer):
    type = serializers.CharField(help_text="This problem type's URI, as problems carry it.")
    code = serializers.ChoiceField(choices=PROBLEM_CHOICES, help_text="The stable code.")
    status = serializers.IntegerField(help_text="The HTTP status problems of this type answer with.")
    title = serializers.CharField(help_text="Short summary, as problems carry it.")
    description = serializers.CharField(help_text="What it means and what a client should do.")
