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
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
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
from connections.api.base import ERRORS, PatientAPIView, problem
from connections.api.errors import PROBLEMS, APIError
from connections.api.openapi import SOURCE, enum_ref
from connections.api.serializers import (
    ConnectionListSerializer,
    ManualSyncBodySerializer,
    PingSerializer,
    ProblemTypeSerializer,
    SyncRequestSerializer,
)
from connections.health import Health, health_of
from connections.models import Connection, Provider, SyncErrorCode, SyncRequest
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
SYNC_REQUEST_EXAMPLE = {
    "id": 42,
    "source": "oura",
    "status": "queued",
    "created_at": "2026-03-10T12:00:00Z",
    "started_at": None,
    "finished_at": None,
    "junction_refresh": "",
    "records_fetched": 0,
    "records_stored": 0,
    "records_skipped": 0,
    "error_code": None,
    "error_message": None,
    "sync_event_id": None,
}
FAILED_SYNC_REQUEST_EXAMPLE = SYNC_REQUEST_EXAMPLE | {
    "source": "dexcom",
    "status": "failed",
    "started_at": "2026-03-10T12:00:01Z",
    "finished_at": "2026-03-10T12:00:09Z",
    "error_code": SyncErrorCode.PROVIDER_UNAVAILABLE.value,
    "error_message": SyncErrorCode.PROVIDER_UNAVAILABLE.label,
    "sync_event_id": 1234,
}
SYNC_EXAMPLES = [
    OpenApiExample("Sync Oura", value={"source": "oura"}, request_only=True),
    OpenApiExample(
        "Queued (or the one already queued or running)",
        value=SYNC_REQUEST_EXAMPLE,
        response_only=True,
        status_codes=["202"],
    ),
]
SYNC_RESPONSES = {
    202: OpenApiResponse(
        SyncRequestSerializer,
        description="Queued, or the sync already queued or running for this source; poll the Location URL.",
    ),
    **problem(
        "Unknown source (`accepted_sources` lists those accepted), a malformed body, or a bad Idempotency-Key.",
        "invalid_source",
        "invalid_request",
        "malformed_request",
        "invalid_idempotency_key",
        detail="Unknown source 'myspace'. Accepted sources: dexcom, garmin, libre, oura, whoop.",
        accepted_sources=["dexcom", "garmin", "libre", "oura", "whoop"],
        errors=[{"field": "source", "message": "is not a source this API syncs"}],
    ),
    **ERRORS,
    **problem("No active connection syncs this source.", "no_connection"),
    **problem("Idempotency-Key already used for another source.", "idempotency_key_reused"),
    **problem(
        "Hourly manual-sync limit reached; retry after the Retry-After header's seconds.",
        "rate_limited",
        detail="Too many manual syncs in the last hour for this patient.",
        retry_after_seconds=2400,
    ),
}


def start_manual_sync(view: PatientAPIView, request: Request, source: str) -> Response:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not _IDEMPOTENCY_KEY.match(key):
        raise APIError(
            "invalid_idempotency_key",
            "Idempotency-Key must be 1-255 printable characters without spaces.",
            errors={"Idempotency-Key": "must be 1-255 printable characters without spaces"},
        )
    try:
        outcome = request_manual_sync(view.patient(request), source, idempotency_key=key)
    except UnknownSource as exc:
        raise APIError(
            "invalid_source",
            f"Unknown source {str(exc)[:64]!r}. Accepted sources: {', '.join(accepted_sources())}.",
            errors={"source": "is not a source this API syncs"},
            accepted_sources=list(accepted_sources()),
        ) from None
    except NoConnection as exc:
        raise APIError(
            "no_connection", f"No active connection syncs {str(exc)!r} for this patient."
        ) from None
    except IdempotencyKeyReused:
        raise APIError(
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
        **sync_error(sync.error_code),
        "sync_event_id": sync.sync_event_id,
    }


_SYNC_ERROR_MESSAGES = dict(SyncErrorCode.choices)


def sync_error(code: str) -> dict[str, str | None]:
    """A failed sync's stable code and its human message (null when it did not fail); the scrubbed internal
    message stays in the admin."""
    return {"error_code": code or None, "error_message": _SYNC_ERROR_MESSAGES.get(code) if code else None}


class ManualSyncView(PatientAPIView):
    @extend_schema(
        operation_id="wearables_sync_create",
        summary="Start a manual sync of one source",
        request=ManualSyncBodySerializer,
        parameters=[IDEMPOTENCY_HEADER],
        responses=SYNC_RESPONSES,
        examples=SYNC_EXAMPLES,
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
        parameters=[
            IDEMPOTENCY_HEADER,
            OpenApiParameter(
                "source", enum_ref(SOURCE), OpenApiParameter.PATH, description="The source to sync."
            ),
        ],
        responses=SYNC_RESPONSES,
        examples=SYNC_EXAMPLES[1:],
        tags=["manual sync"],
    )
    def post(self, request: Request, source: str) -> Response:
        return start_manual_sync(self, request, source)


class SyncStatusView(PatientAPIView):
    @extend_schema(
        operation_id="wearables_sync_retrieve",
        parameters=[
            OpenApiParameter(
                "sync_id", int, OpenApiParameter.PATH, description="The id a sync POST answered with."
            )
        ],
        examples=[
            OpenApiExample("Queued", value=SYNC_REQUEST_EXAMPLE, response_only=True, status_codes=["200"]),
            OpenApiExample(
                "Failed", value=FAILED_SYNC_REQUEST_EXAMPLE, response_only=True, status_codes=["200"]
            ),
        ],
        summary="A manual sync's status and counts (its owner only)",
        responses={
            200: SyncRequestSerializer,
            **ERRORS,
            **problem("No such sync for this patient.", "not_found"),
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
        examples=[
            OpenApiExample(
                "A Junction and a failing Dexcom connection",
                value={
                    "results": [
                        {
                            "id": 7,
                            "provider": "dexcom",
                            "status": "active",
                            "sources": ["dexcom"],
                            "last_sync_at": "2026-03-10T09:55:00Z",
                            "last_attempt_at": "2026-03-10T11:30:00Z",
                            "healthy": False,
                            "data_freshness": {
                                "latest_data_day": "2026-03-10",
                                "hours_since_last_sync": 2.08,
                            },
                            "error_code": SyncErrorCode.RATE_LIMITED.value,
                            "error_message": SyncErrorCode.RATE_LIMITED.label,
                        },
                        {
                            "id": 3,
                            "provider": "junction",
                            "status": "active",
                            "sources": ["garmin", "oura"],
                            "last_sync_at": "2026-03-10T03:00:12Z",
                            "last_attempt_at": "2026-03-10T03:00:12Z",
                            "healthy": True,
                            "data_freshness": {
                                "latest_data_day": "2026-03-10",
                                "hours_since_last_sync": 8.99,
                            },
                            "error_code": None,
                            "error_message": None,
                        },
                    ]
                },
                response_only=True,
                status_codes=["200"],
            )
        ],
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
            # A direct provider is its own source; Junction's are those it last said the user connected
            # (looked up by a manual sync, cached), none until then.
            sources: list[str] = [connection.provider]
            if connection.provider == Provider.JUNCTION:
                sources = sorted(cache.get(junction_sources_cache_key(connection.pk)) or ())
            last = connection.last_sync_at
            results.append(
                {
                    "id": connection.pk,
                    "provider": connection.provider,
                    "status": connection.status,
                    "sources": sources,
                    "last_sync_at": last,
                    "last_attempt_at": connection.last_attempt_at,
                    # The admin's health, the same rules: ok means syncing on time without failing.
                    "healthy": health_of(connection, now) == Health.OK,
                    # The last sync's failure, while it is the latest word (a success clears it).
                    **sync_error(connection.last_error_code if connection.failure_streak else ""),
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


class ProblemTypeView(APIView):
    """What a problem `type` URI (`/api/problems/<code>`) points at: the code's status, title and meaning."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="problem_type_retrieve",
        summary="What a problem type (an error's `type` URI) means (no auth)",
        parameters=[
            OpenApiParameter(
                "code",
                str,
                OpenApiParameter.PATH,
                enum=list(PROBLEMS),
                description="A problem's stable `code`.",
            )
        ],
        responses={200: ProblemTypeSerializer, **problem("No such problem type.", "not_found")},
        examples=[
            OpenApiExample(
                "no_connection",
                value={
                    "type": PROBLEMS["no_connection"].type,
                    "code": "no_connection",
                    "status": 404,
                    "title": PROBLEMS["no_connection"].title,
                    "description": PROBLEMS["no_connection"].description,
                },
                response_only=True,
                status_codes=["200"],
            )
        ],
        tags=["errors"],
    )
    def get(self, request: Request, code: str) -> Response:
        problem = PROBLEMS.get(code)
        if problem is None:
            raise exceptions.NotFound("No such problem type.")
        return Response(
            {
                "type": problem.type,
                "code": problem.code,
                "status": problem.status,
                "title": problem.title,
                "description": problem.description,
            }
        )


class PingView(APIView):
    """A trivial DRF endpoint: the benchmark's reference for the framework's own cost."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="ping",
        summary="Liveness of the API (no auth)",
        responses={200: PingSerializer},
        examples=[OpenApiExample("Up", value={"ok": True}, response_only=True, status_codes=["200"])],
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
