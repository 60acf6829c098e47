"""Request and response shapes of the REST API (also the OpenAPI components drf-spectacular renders)."""

from __future__ import annotations

from rest_framework import serializers

from connections.models import SyncRequest, SyncRequestStatus


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Stable machine-readable code, e.g. `invalid_source`.")
    message = serializers.CharField(help_text="What is wrong, for people.")
    details = serializers.JSONField(allow_null=True, help_text="Field errors or extra facts; may be null.")


class ErrorSerializer(serializers.Serializer):
    """Every 4xx body has this shape."""

    error = ErrorDetailSerializer()


class ManualSyncBodySerializer(serializers.Serializer):
    # A free string, not a choice: an unknown source gets the API's own 400 naming the accepted ones.
    source = serializers.CharField(
        max_length=64,
        help_text="A direct provider (whoop, dexcom, libre) or a provider connected through Junction (oura, ...).",
    )


class SyncRequestSerializer(serializers.ModelSerializer):
    status = serializers.ChoiceField(choices=SyncRequestStatus.choices)
    sync_event_id = serializers.IntegerField(allow_null=True, read_only=True)

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
            "error",
            "sync_event_id",
        ]
        read_only_fields = fields


class DataFreshnessSerializer(serializers.Serializer):
    latest_data_day = serializers.DateField(
        allow_null=True, help_text="The latest patient-local day with any daily statistic (all sources)."
    )
    hours_since_last_sync = serializers.FloatField(allow_null=True)


class BackfillSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["pending", "running", "done", "failed"])
    percent_done = serializers.IntegerField(help_text="Chunks stored of the backfill's chunks, 0-100.")
    range_start = serializers.DateTimeField()
    range_end = serializers.DateTimeField()
    reason = serializers.CharField(help_text="Why it failed (empty unless failed); never PHI.")


class DataCompletenessSerializer(serializers.Serializer):
    days = serializers.IntegerField(help_text="The window: the patient's last N local days, today included.")
    share = serializers.FloatField(
        allow_null=True,
        help_text="Received over expected in the window for the connection's main kind of data (a CGM's "
        "5-minute readings, a band's heart-rate minutes, a night's sleep), 0-1.",
    )
    by_kind = serializers.DictField(child=serializers.FloatField(allow_null=True))


class ConnectionSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    provider = serializers.CharField()
    status = serializers.CharField()
    sources = serializers.ListField(
        child=serializers.CharField(),
        allow_null=True,
        help_text="Providers connected through Junction, when known (null when not looked up recently).",
    )
    last_sync_at = serializers.DateTimeField(allow_null=True)
    last_attempt_at = serializers.DateTimeField(allow_null=True)
    healthy = serializers.BooleanField(
        help_text="The admin's health is ok: active, not failing, and synced successfully within the provider's "
        "cadence (late data by design, such as Dexcom's, does not count against it)."
    )
    backfill = BackfillSerializer(
        allow_null=True,
        help_text="The history fetched on connect, newest first (null: none planned for this connection).",
    )
    data_completeness = DataCompletenessSerializer()
    data_freshness = DataFreshnessSerializer()


class ConnectionListSerializer(serializers.Serializer):
    results = ConnectionSerializer(many=True)


class PingSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
