"""Consumer API views (Clerk session JWT): manual sync, its status, the patient's connections.

Views stay thin: every rule lives in `connections.actions`. Every query is scoped to the authenticated
patient; another patient's ids are 404, as if they did not exist.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo

from django.db.models import Max
from django.urls import get_script_prefix, reverse
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from connections.actions import (
    IdempotencyKeyReused,
    ManualSyncRateLimited,
    NoConnection,
    UnknownSource,
    accepted_sources,
    junction_sources_cache_key,
    request_manual_sync,
)
from connections.api.base import ERRORS, PatientAPIView
from connections.api.errors import APIError
from connections.api.serializers import (
    ConnectionListSerializer,
    ErrorSerializer,
    ManualSyncBodySerializer,
    PingSerializer,
    SyncRequestSerializer,
)
from connections.health import Health, health_of
from connections.models import Connection, Provider, SyncRequest
from connections.providers.registry import PROVIDERS
from readings.completeness import completeness_summary

# Printable ASCII without spaces: what Stripe-style clients send (UUIDs, ULIDs, hashes).
_IDEMPOTENCY_KEY = re.compile(r"^[!-~]{1,255}$")

IDEMPOTENCY_HEADER = OpenApiParameter(
    "Idempotency-Key",
    str,
    OpenApiParameter.HEADER,
    required=False,
    description="Optional; the same key returns the same sync request (up to 255 printable characters).",
)
SYNC_RESPONSES = {
    202: OpenApiResponse(
        SyncRequestSerializer, description="Queued, or the sync already queued or running for this source."
    ),
    400: OpenApiResponse(ErrorSerializer, description="Unknown source (the message lists accepted ones)."),
    **ERRORS,
    404: OpenApiResponse(ErrorSerializer, description="No active connection syncs this source."),
    422: OpenApiResponse(ErrorSerializer, description="Idempotency-Key already used for another source."),
    429: OpenApiResponse(ErrorSerializer, description="Hourly manual-sync limit reached; see Retry-After."),
}


def start_manual_sync(view: PatientAPIView, request: Request, source: str) -> Response:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not _IDEMPOTENCY_KEY.match(key):
        raise APIError(
            400,
            "invalid_idempotency_key",
            "Idempotency-Key must be 1-255 printable characters without spaces.",
        )
    try:
        outcome = request_manual_sync(view.patient(request), source, idempotency_key=key)
    except UnknownSource as exc:
        raise APIError(
            400,
            "invalid_source",
            f"Unknown source {str(exc)[:64]!r}. Accepted sources: {', '.join(accepted_sources())}.",
            {"accepted_sources": list(accepted_sources())},
        ) from None
    except NoConnection as exc:
        raise APIError(
            404, "no_connection", f"No active connection syncs {str(exc)!r} for this patient."
        ) from None
    except IdempotencyKeyReused:
        raise APIError(
            422,
            "idempotency_key_reused",
            "This Idempotency-Key was already used for a sync of another source.",
        ) from None
    except ManualSyncRateLimited as exc:
        raise exceptions.Throttled(
            wait=exc.retry_after, detail="Too many manual syncs in the last hour for this patient."
        ) from None
    sync = outcome.request
    return Response(
        sync_request_body(sync), status=status.HTTP_202_ACCEPTED, headers={"Location": _status_url(sync.pk)}
    )


def _status_url(sync_id: int) -> str:
    return _status_url_template(get_script_prefix()).format(id=sync_id)


@cache
def _status_url_template(script_prefix: str) -> str:
    # reverse() once per script prefix: resolving the pattern costs more than the rest of a coalesced POST.
    return reverse("api-sync-status", args=[0]).removesuffix("0") + "{id}"


def sync_request_body(sync: SyncRequest) -> dict[str, Any]:
    """SyncRequestSerializer's shape, built directly: a ModelSerializer re-introspects the model per instance,
    several times the cost of the rest of this hot path."""
    return {
        "id": sync.pk,
        "source": sync.source,
        "status": sync.status,
        "created_at": sync.created_at,
        "started_at": sync.started_at,
        "finished_at": sync.finished_at,
        "junction_refresh": sync.junction_refresh,
        "records_fetched": sync.records_fetched,
        "records_stored": sync.records_stored,
        "records_skipped": sync.records_skipped,
        "error": sync.error,
        "sync_event_id": sync.sync_event_id,
    }


class ManualSyncView(PatientAPIView):
    @extend_schema(
        operation_id="wearables_sync_create",
        summary="Start a manual sync of one source",
        request=ManualSyncBodySerializer,
        parameters=[IDEMPOTENCY_HEADER],
        responses=SYNC_RESPONSES,
        tags=["manual sync"],
    )
    def post(self, request: Request) -> Response:
        body = ManualSyncBodySerializer(data=request.data)
        body.is_valid(raise_exception=True)
        return start_manual_sync(self, request, body.validated_data["source"])


class SourceSyncView(PatientAPIView):
    @extend_schema(
        operation_id="wearables_source_sync_create",
        summary="Start a manual sync of the source named in the path",
        request=None,
        parameters=[IDEMPOTENCY_HEADER],
        responses=SYNC_RESPONSES,
        tags=["manual sync"],
    )
    def post(self, request: Request, source: str) -> Response:
        return start_manual_sync(self, request, source)


class SyncStatusView(PatientAPIView):
    @extend_schema(
        operation_id="wearables_sync_retrieve",
        parameters=[OpenApiParameter("sync_id", int, OpenApiParameter.PATH)],
        summary="A manual sync's status and counts (its owner only)",
        responses={
            200: SyncRequestSerializer,
            **ERRORS,
            404: OpenApiResponse(ErrorSerializer, description="No such sync for this patient."),
        },
        tags=["manual sync"],
    )
    def get(self, request: Request, sync_id: str) -> Response:
        # The route takes any segment so a malformed id is this API's JSON 404, not Django's HTML page.
        if not sync_id.isascii() or not sync_id.isdigit() or int(sync_id) >= 2**63:
            raise exceptions.NotFound("No such sync.")
        sync = SyncRequest.objects.filter(pk=int(sync_id), patient=self.patient(request)).first()
        if sync is None:
            raise exceptions.NotFound("No such sync.")
        return Response(sync_request_body(sync))


class ConnectionListView(PatientAPIView):
    @extend_schema(
        operation_id="wearables_connections_list",
        summary="The patient's provider connections: status, last sync, data freshness",
        responses={200: ConnectionListSerializer, **ERRORS},
        tags=["read"],
    )
    def get(self, request: Request) -> Response:
        from django.core.cache import cache

        from readings.models import DailyStat

        patient = self.patient(request)
        connections = list(
            Connection.objects.filter(patient=patient).select_related("backfill").order_by("provider")
        )
        latest_day = DailyStat.objects.filter(patient=patient).aggregate(day=Max("day"))["day"]
        now = timezone.now()
        results: list[dict[str, Any]] = []
        for connection in connections:
            sources = None
            if connection.provider == Provider.JUNCTION:
                sources = cache.get(junction_sources_cache_key(connection.pk))
            last = connection.last_sync_at
            results.append(
                {
                    "id": connection.pk,
                    "provider": connection.provider,
                    "status": connection.status,
                    "sources": list(sources) if sources is not None else None,
                    "last_sync_at": last,
                    "last_attempt_at": connection.last_attempt_at,
                    # The admin's health, the same rules: ok means syncing on time without failing.
                    "healthy": health_of(connection, now) == Health.OK,
                    "backfill": backfill_status(connection),
                    "data_completeness": completeness_summary(
                        patient.pk,
                        patient.time_zone,
                        PROVIDERS[connection.provider].completeness_kinds
                        if connection.provider in PROVIDERS
                        else (),
                        timezone.localtime(now, ZoneInfo(patient.time_zone)).date(),
                    ),
                    "data_freshness": {
                        "latest_data_day": latest_day,
                        "hours_since_last_sync": round((now - last).total_seconds() / 3600, 2)
                        if last
                        else None,
                    },
                }
            )
        return Response(ConnectionListSerializer({"results": results}).data)


class PingView(APIView):
    """A trivial DRF endpoint: the benchmark's reference for the framework's own cost."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="ping", summary="Liveness of the API (no auth)", responses={200: PingSerializer}
    )
    def get(self, request: Request) -> Response:
        return Response({"ok": True})


def backfill_status(connection: Connection) -> dict[str, Any] | None:
    backfill = getattr(connection, "backfill", None)
    if backfill is None:
        return None
    return {
        "status": backfill.status,
        "percent_done": backfill.percent_done,
        "range_start": backfill.range_start,
        "range_end": backfill.range_end,
        "reason": backfill.reason[:200] if backfill.status == "failed" else "",
    }
