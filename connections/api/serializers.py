"""Request and response shapes of the REST API (also the OpenAPI components drf-spectacular renders)."""

from __future__ import annotations

from rest_framework import serializers

from connections.api.errors import PROBLEMS
from connections.models import SyncErrorCode, SyncRequest, SyncRequestStatus


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
        choices=[(p.code, p.title) for p in PROBLEMS.values()],
        help_text="Stable machine-readable code; branch on this (or on `type`), never on `detail`.",
    )
    errors = FieldErrorSerializer(
        many=True, required=False, help_text="Each invalid field, when the request broke field rules."
    )
    accepted_sources = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        help_text="`invalid_source` only: the sources this API syncs.",
    )
    accepted_metrics = serializers.ListField(
        child=serializers.CharField(),
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
    source = serializers.CharField(
        max_length=64,
        help_text="A direct provider (whoop, dexcom, libre) or a provider connected through Junction (oura, ...).",
    )


class SyncErrorFields(serializers.Serializer):
    error_code = serializers.ChoiceField(
        choices=SyncErrorCode.choices,
        allow_null=True,
        help_text="Why the sync failed, a stable code (see the README's table); null unless it failed.",
    )
    error_message = serializers.CharField(
        allow_null=True, help_text="The code's message, for people; null unless it failed."
    )


class SyncRequestSerializer(serializers.ModelSerializer):
    status = serializers.ChoiceField(choices=SyncRequestStatus.choices)
    sync_event_id = serializers.IntegerField(allow_null=True, read_only=True)
    error_code = SyncErrorFields().fields["error_code"]
    error_message = SyncErrorFields().fields["error_message"]

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
    hours_since_last_sync = serializers.FloatField(allow_null=True)


class ConnectionSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    provider = serializers.CharField()
    status = serializers.CharField()
    sources = serializers.ListField(
        child=serializers.CharField(),
        help_text="The sources this connection syncs: a direct provider's own name; for Junction, the "
        "providers the user connected there as last looked up (by a manual sync), empty until then.",
    )
    last_sync_at = serializers.DateTimeField(allow_null=True)
    last_attempt_at = serializers.DateTimeField(allow_null=True)
    healthy = serializers.BooleanField(
        help_text="The admin's health is ok: active, not failing, and synced successfully within the provider's "
        "cadence (late data by design, such as Dexcom's, does not count against it)."
    )
    data_freshness = DataFreshnessSerializer()
    error_code = SyncErrorFields().fields["error_code"]
    error_message = SyncErrorFields().fields["error_message"]


class ConnectionListSerializer(serializers.Serializer):
    results = ConnectionSerializer(many=True)


class PingSerializer(serializers.Serializer):
    ok = serializers.BooleanField()


class ProblemTypeSerializer(serializers.Serializer):
    type = serializers.CharField(help_text="This problem type's URI, as problems carry it.")
    code = serializers.ChoiceField(
        choices=[(p.code, p.title) for p in PROBLEMS.values()], help_text="The stable code."
    )
    status = serializers.IntegerField(help_text="The HTTP status problems of this type answer with.")
    title = serializers.CharField(help_text="Short summary, as problems carry it.")
    description = serializers.CharField(help_text="What it means and what a client should do.")
