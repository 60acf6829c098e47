"""Patient-graph service API: sync workers that cannot reach the database write through these endpoints.

Authenticated by `PATIENT_GRAPH_API_KEY` (`Authorization: Bearer <key>`). Ingest goes through
`readings.store.store_batch`, the direct path's own write, so it is idempotent on the same natural keys and
recomputes the same daily statistics. Rows are validated in one tight loop (a batch holds thousands); a
batch with an invalid row is rejected whole with the row's index and the rule it broke, never its values.
Daily statistics are never written here as sent: `readings` computes them, from the rows ingested.
A request's size is bounded by its body's bytes (PATIENT_GRAPH_MAX_BODY_BYTES, the sync worker's batch budget
too), not by a row count: a larger body is a 413 problem response naming the limit.
"""

from __future__ import annotations

import math
from typing import Any

from django.conf import settings
from django.db import transaction
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from connections.api.authentication import IsPatientGraphService, PatientGraphKeyAuthentication
from connections.api.base import problem
from connections.api.errors import APIError
from connections.api.jsoncodec import BodyLimitedJSONParser
from connections.models import Connection, Patient, Provider
from connections.providers.contract import (
    CLOCK_SKEW,
    DAY_STAMP_AHEAD,
    RANGE_FLAGS,
    GlucoseRow,
    InvalidRecord,
    WearableRow,
)
from connections.providers.junction.client import canonical_utc
from readings.horizon import canonical_horizon
from readings.store import store_batch

MAX_ERRORS_REPORTED = 20


MEASURED_AT = (
    "When it was measured: ISO-8601 with a UTC offset, from 2000 to now (day summaries: local noon)."
)


class ReadingIn(serializers.Serializer):
    metric = serializers.CharField(
        max_length=40, help_text="The metric, as the sync worker's provider stores it."
    )
    source = serializers.CharField(
        max_length=40, help_text="The provider that measured it (oura, whoop, ...)."
    )
    source_type = serializers.CharField(
        max_length=32, allow_blank=True, required=False, help_text="The kind of device (ring, watch, ...)."
    )
    measured_at = serializers.DateTimeField(help_text=MEASURED_AT)
    end_at = serializers.DateTimeField(
        allow_null=True, required=False, help_text="A span's end (sleep, workouts), same format; else null."
    )
    value = serializers.FloatField(help_text="A finite number, in `unit`.")
    unit = serializers.CharField(max_length=16, help_text="The value's unit.")


class GlucoseIn(serializers.Serializer):
    source = serializers.CharField(max_length=40, help_text="The CGM's provider (dexcom, libre, ...).")
    measured_at = serializers.DateTimeField(help_text=MEASURED_AT)
    value_mg_dl = serializers.FloatField(help_text="The glucose value in mg/dL, a finite number.")
    original_value = serializers.FloatField(help_text="The value as the provider sent it.")
    original_unit = serializers.CharField(max_length=16, help_text="The provider's unit: mg/dL or mmol/L.")
    trend = serializers.CharField(
        max_length=32, allow_blank=True, required=False, help_text="The provider's trend arrow, if any."
    )
    trend_rate = serializers.FloatField(
        allow_null=True, required=False, help_text="Rate of change in mg/dL/min, if sent."
    )
    device = serializers.CharField(
        max_length=64, allow_blank=True, required=False, help_text="The sensor or device, if known."
    )
    range_flag = serializers.ChoiceField(
        choices=RANGE_FLAGS,
        allow_null=True,
        required=False,
        help_text="Beyond the sensor's reporting range: value_mg_dl is then the sensor's limit.",
    )


class IngestIn(serializers.Serializer):
    patient_id = serializers.IntegerField(
        min_value=1,
        required=False,
        help_text="This deployment's patient id; or send junction_user_id or clerk_user_id.",
    )
    junction_user_id = serializers.CharField(
        max_length=64,
        required=False,
        help_text="Identifies the patient across databases (a sync worker's own).",
    )
    clerk_user_id = serializers.CharField(
        max_length=64,
        required=False,
        help_text="Identifies the patient across databases when it has no Junction user id.",
    )
    provider = serializers.ChoiceField(
        choices=Provider.choices, required=False, help_text="The connection that delivered the rows."
    )
    readings = ReadingIn(many=True, required=False, help_text="Wearable readings; stored idempotently.")
    glucose = GlucoseIn(many=True, required=False, help_text="Glucose readings; stored idempotently.")


class IngestOut(serializers.Serializer):
    readings_written = serializers.IntegerField(
        help_text="Readings inserted or changed (unchanged: not counted)."
    )
    glucose_written = serializers.IntegerField(help_text="Glucose readings inserted or changed.")
    days_refreshed = serializers.IntegerField(help_text="(metric, local day) statistics recomputed.")


SERVICE_ERRORS = {
    **problem(
        "Malformed body, or invalid rows (each named in `errors` by index and field; nothing is stored).",
        "invalid_rows",
        "invalid_request",
        "malformed_request",
        detail="Some rows are invalid; nothing was stored.",
        errors=[{"field": "readings[1].value", "message": "must be a finite number"}],
    ),
    **problem("Missing or wrong PATIENT_GRAPH_API_KEY.", "not_authenticated"),
    **problem("No such patient.", "not_found"),
}


class ServiceAPIView(APIView):
    authentication_classes = [PatientGraphKeyAuthentication]
    permission_classes = [IsPatientGraphService]


class _Rows:
    """Collects row errors as `{"readings[12].value": "is not a finite number"}`."""

    def __init__(self) -> None:
        self.errors: dict[str, str] = {}

    def fail(self, where: str, why: str) -> None:
        if len(self.errors) < MAX_ERRORS_REPORTED:
            self.errors[where] = why

    def text(self, row: dict[str, Any], name: str, limit: int, where: str, *, required: bool = True) -> str:
        if not required and name not in row:
            return ""
        value = row.get(name)
        if not isinstance(value, str) or (required and not value) or len(value) > limit:
            raise InvalidRecord(f"{where}.{name}: must be a string of 1 to {limit} characters")
        if "\x00" in value:
            # PostgreSQL refuses NUL in text: the whole batch's write would fail, not this row.
            raise InvalidRecord(f"{where}.{name}: must not contain a NUL character")
        return value

    def number(self, row: dict[str, Any], name: str, where: str, *, required: bool = True) -> float | None:
        value = row.get(name)
        if value is None and not required:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidRecord(f"{where}.{name}: must be a finite number")
        return float(value)

    def moment(self, row: dict[str, Any], name: str, where: str, *, required: bool = True) -> str | None:
        value = row.get(name)
        if value is None and not required:
            return None
        try:
            # Rows of day-level summaries sit at 00:00 UTC of their date, which may still be ahead today.
            return canonical_utc(value, name, ahead=DAY_STAMP_AHEAD + CLOCK_SKEW)
        except InvalidRecord as exc:
            rule = str(exc).removeprefix(f"{name} ")
            if rule.startswith(("is in the future", "is before", "is out of range")):
                raise InvalidRecord(f"{where}.{name}: {rule}") from None
            raise InvalidRecord(f"{where}.{name}: must be an ISO-8601 datetime with a UTC offset") from None


def parse_readings(raw: Any, rows: _Rows) -> list[WearableRow]:
    out: list[WearableRow] = []
    for index, row in enumerate(raw):
        where = f"readings[{index}]"
        try:
            if not isinstance(row, dict):
                raise InvalidRecord(f"{where}: must be an object")
            out.append(
                (
                    rows.text(row, "metric", 40, where),
                    rows.text(row, "source", 40, where),
                    rows.text(row, "source_type", 32, where, required=False),
                    rows.moment(row, "measured_at", where),  # type: ignore[arg-type]
                    rows.moment(row, "end_at", where, required=False),
                    rows.number(row, "value", where),  # type: ignore[arg-type]
                    rows.text(row, "unit", 16, where),
                )
            )
        except InvalidRecord as exc:
            where_field, _, why = str(exc).partition(": ")
            rows.fail(where_field, why)
    return out


def _range_flag(row: dict[str, Any], where: str) -> str | None:
    flag = row.get("range_flag")
    if flag is not None and flag not in RANGE_FLAGS:
        raise InvalidRecord(f"{where}.range_flag: must be null or one of {', '.join(RANGE_FLAGS)}")
    return flag


def parse_glucose(raw: Any, rows: _Rows) -> list[GlucoseRow]:
    out: list[GlucoseRow] = []
    for index, row in enumerate(raw):
        where = f"glucose[{index}]"
        try:
            if not isinstance(row, dict):
                raise InvalidRecord(f"{where}: must be an object")
            out.append(
                (
                    rows.text(row, "source", 40, where),
                    rows.moment(row, "measured_at", where),  # type: ignore[arg-type]
                    rows.number(row, "value_mg_dl", where),  # type: ignore[arg-type]
                    rows.number(row, "original_value", where),  # type: ignore[arg-type]
                    rows.text(row, "original_unit", 16, where),
                    rows.text(row, "trend", 32, where, required=False),
                    rows.number(row, "trend_rate", where, required=False),
                    rows.text(row, "device", 64, where, required=False),
                    _range_flag(row, where),
                )
            )
        except InvalidRecord as exc:
            where_field, _, why = str(exc).partition(": ")
            rows.fail(where_field, why)
    return out


def _body(request: Request) -> dict[str, Any]:
    body = request.data
    if not isinstance(body, dict):
        raise APIError("invalid_request", "The body must be a JSON object.")
    return body


def _patient(body: dict[str, Any], *, by_external_id: bool = False) -> Patient:
    """The patient a service call is about: `patient_id`, or (ingest from a sync worker, whose database has
    its own ids) `junction_user_id` or `clerk_user_id`."""
    patient_id = body.get("patient_id")
    if "patient_id" in body and (
        isinstance(patient_id, bool) or not isinstance(patient_id, int) or not 0 < patient_id < 2**63
    ):
        raise APIError(
            "invalid_request",
            "patient_id: must be a positive integer",
            errors={"patient_id": "must be a positive integer"},
        )
    external: dict[str, str] = {}
    for name in ("junction_user_id", "clerk_user_id") if by_external_id else ():
        value = body.get(name)
        if name in body and (not isinstance(value, str) or not 0 < len(value) <= 64 or "\x00" in value):
            why = "must be a string of 1 to 64 characters, without NUL"
            raise APIError("invalid_request", f"{name}: {why}", errors={name: why})
        if value:
            external[name] = value
    patient = None
    if patient_id is not None:
        patient = Patient.objects.filter(pk=patient_id).first()
    elif external:
        name, value = next(iter(external.items()))
        patient = Patient.objects.filter(**{name: value}).first()
    if patient is None:
        raise APIError("not_found", "No such patient (send patient_id, junction_user_id or clerk_user_id).")
    return patient


def _list(body: dict[str, Any], name: str) -> list[Any]:
    if name not in body:
        return []
    value = body[name]
    if not isinstance(value, list):
        raise APIError("invalid_request", f"{name}: must be a list", errors={name: "must be a list"})
    return value


def _refuse_past_horizon(readings: list[WearableRow], glucose: list[GlucoseRow], rows: _Rows) -> None:
    """A row older than the raw retention horizon would recompute a final day from partial raw rows."""
    horizon = canonical_horizon()
    why = (
        f"is older than the raw retention horizon ({settings.RAW_READING_RETENTION_DAYS} days): "
        "that day's statistics are final"
    )
    for name, table, column in (("readings", readings, 3), ("glucose", glucose, 1)):
        for index, row in enumerate(table):
            if row[column] < horizon:
                rows.fail(f"{name}[{index}].measured_at", why)


class IngestView(ServiceAPIView):
    parser_classes = [BodyLimitedJSONParser]

    @extend_schema(
        operation_id="patient_graph_ingest",
        summary="Bulk ingest of readings and glucose readings (idempotent on their natural keys)",
        request=IngestIn,
        responses={
            200: IngestOut,
            **SERVICE_ERRORS,
            **problem(
                "The body exceeds PATIENT_GRAPH_MAX_BODY_BYTES (`max_body_bytes`).",
                "body_too_large",
                max_body_bytes=2097152,
            ),
        },
        examples=[
            OpenApiExample(
                "Two heart-rate readings",
                value={
                    "junction_user_id": "6f2ac5e1-2f4b-4f3c-9d7e-0a1b2c3d4e5f",
                    "provider": "junction",
                    "readings": [
                        {
                            "metric": "heart_rate",
                            "source": "oura",
                            "source_type": "ring",
                            "measured_at": f"2026-03-09T08:0{minute}:00Z",
                            "value": 58.0 + minute,
                            "unit": "bpm",
                        }
                        for minute in range(2)
                    ],
                },
                request_only=True,
            ),
            OpenApiExample(
                "Stored",
                value={"readings_written": 2, "glucose_written": 0, "days_refreshed": 1},
                response_only=True,
                status_codes=["200"],
            ),
        ],
        tags=["patient-graph service"],
    )
    def post(self, request: Request) -> Response:
        body = _body(request)
        patient = _patient(body, by_external_id=True)
        raw_readings, raw_glucose = _list(body, "readings"), _list(body, "glucose")
        provider = body.get("provider")
        connection_id = None
        if "provider" in body:
            if not isinstance(provider, str) or provider not in Provider.values:
                why = f"must be one of {', '.join(Provider.values)}"
                raise APIError("invalid_request", f"provider: {why}", errors={"provider": why})
            connection_id = (
                Connection.objects.filter(patient=patient, provider=provider)
                .values_list("pk", flat=True)
                .first()
            )
        rows = _Rows()
        readings = parse_readings(raw_readings, rows)
        glucose = parse_glucose(raw_glucose, rows)
        if not rows.errors:
            _refuse_past_horizon(readings, glucose, rows)
        if rows.errors:
            raise APIError("invalid_rows", "Some rows are invalid; nothing was stored.", errors=rows.errors)
        with transaction.atomic():
            # The direct path holds the connection's row lock while it writes; so does this one, so the two never
            # interleave their daily-statistic recomputations for one patient.
            if connection_id is not None:
                Connection.objects.select_for_update().filter(pk=connection_id).values_list("pk").first()
            else:
                Patient.objects.select_for_update().filter(pk=patient.pk).values_list("pk").first()
            result = store_batch(
                patient.pk, patient.time_zone, readings, glucose, connection_id=connection_id
            )
        return Response(
            {
                "readings_written": result.readings_written,
                "glucose_written": result.glucose_written,
                "days_refreshed": len(result.touched),
            }
        )
