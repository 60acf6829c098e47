"""Read API of the consensus CGM metrics and the AGP (readings/glucose_metrics.py), scoped to the caller like
the other read routes: `GET .../glucose/summary` and `GET .../glucose/agp`."""

from __future__ import annotations

from dataclasses import asdict
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from django.http import HttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from connections.api.authentication import IsPatientGraphService, PatientGraphKeyAuthentication
from connections.api.base import ERRORS, PatientAPIView, problem
from connections.api.errors import APIError
from connections.models import Patient
from readings import fhir
from readings import glucose_metrics as gm
from readings.api import BAD_REQUEST, _bad, parse_day, reject_unknown_parameters

MAX_DAYS = 90
DEFAULT_DAYS = 14


def parse_days(request: Request, default: int = DEFAULT_DAYS) -> int:
    raw = request.query_params.get("days")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _bad("days", f"must be a whole number from 1 to {MAX_DAYS}") from None
    if not 1 <= value <= MAX_DAYS:
        raise _bad("days", f"must be from 1 to {MAX_DAYS}")
    return value


def local_today(time_zone: str) -> date:
    return timezone.now().astimezone(ZoneInfo(time_zone)).date()


def period_end(request: Request, time_zone: str) -> tuple[date, datetime]:
    """The window's last local day (`end`, default today) and the instant it is measured to (now, if sooner)."""
    today = local_today(time_zone)
    end = parse_day(request, "end") or today
    if end > today:
        raise _bad("end", "must not be after the patient's today")
    return end, timezone.now()


def _metrics_for(patient_id: int, time_zone: str, end: date, days: int, now: datetime) -> gm.Summary:
    return gm.summary(patient_id, time_zone, end, days, until=now)


class MetricsOut(serializers.Serializer):
    start = serializers.DateField(help_text="First local day of the period.")
    end = serializers.DateField(help_text="Last local day of the period (inclusive).")
    days = serializers.IntegerField(help_text="Number of local days in the period.")
    days_worn = serializers.IntegerField(help_text="Days with at least one reading.")
    readings = serializers.IntegerField(help_text="Glucose readings in the period.")
    readings_above_range = serializers.IntegerField(help_text="Readings beyond the sensor's upper limit.")
    readings_below_range = serializers.IntegerField(help_text="Readings beyond the sensor's lower limit.")
    active_percent = serializers.FloatField(
        allow_null=True, help_text="% of the period the CGM was active (time-weighted readings)."
    )
    mean_mg_dl = serializers.FloatField(allow_null=True, help_text="Time-weighted mean glucose, mg/dL.")
    sd_mg_dl = serializers.FloatField(allow_null=True, help_text="Time-weighted standard deviation, mg/dL.")
    cv_percent = serializers.FloatField(allow_null=True, help_text="SD / mean x 100; target at most 36%.")
    gmi_percent = serializers.FloatField(
        allow_null=True,
        help_text="3.31 + 0.02392 x mean mg/dL; null below 70% active (see gmi_absent_reason).",
    )
    gmi_absent_reason = serializers.CharField(allow_null=True, help_text="Why the GMI is null; else null.")
    very_low_percent = serializers.FloatField(allow_null=True, help_text="% of time below 54 mg/dL.")
    low_percent = serializers.FloatField(allow_null=True, help_text="% of time 54 to 69 mg/dL.")
    target_percent = serializers.FloatField(allow_null=True, help_text="% of time 70 to 180 mg/dL (TIR).")
    high_percent = serializers.FloatField(allow_null=True, help_text="% of time 181 to 250 mg/dL.")
    very_high_percent = serializers.FloatField(allow_null=True, help_text="% of time above 250 mg/dL.")
    tight_percent = serializers.FloatField(allow_null=True, help_text="% of time 70 to 140 mg/dL (TITR).")
    below_70_percent = serializers.FloatField(allow_null=True, help_text="% of time below 70 mg/dL (TBR).")
    above_180_percent = serializers.FloatField(allow_null=True, help_text="% of time above 180 mg/dL (TAR).")
    gri = serializers.FloatField(allow_null=True, help_text="Glycemia risk index, 0 to 100.")
    gri_zone = serializers.CharField(allow_null=True, help_text="A (0-20) to E (81-100).")
    hypo_episodes = serializers.IntegerField(help_text="Runs below 70 mg/dL of at least 15 minutes.")
    severe_hypo_episodes = serializers.IntegerField(help_text="Runs below 54 mg/dL of at least 15 minutes.")
    hyper_episodes = serializers.IntegerField(help_text="Runs above 180 mg/dL of at least 15 minutes.")
    severe_hyper_episodes = serializers.IntegerField(help_text="Runs above 250 mg/dL of at least 15 minutes.")
    min_mg_dl = serializers.FloatField(allow_null=True, help_text="Lowest reading, mg/dL.")
    max_mg_dl = serializers.FloatField(allow_null=True, help_text="Highest reading, mg/dL.")


class TargetOut(serializers.Serializer):
    metric = serializers.CharField(help_text="The field of `metrics` the target is about.")
    label = serializers.CharField(help_text="The target in words.")
    comparison = serializers.ChoiceField(
        choices=["<", "<=", ">", ">="], help_text="How the value must compare with the threshold."
    )
    threshold = serializers.FloatField(help_text="The target's threshold, in %.")
    value = serializers.FloatField(allow_null=True, help_text="The period's value of `metric`.")
    met = serializers.BooleanField(allow_null=True, help_text="null when the value is absent.")


class SummaryOut(serializers.Serializer):
    unit = serializers.CharField(help_text="Always mg/dL.")
    metrics = MetricsOut(help_text="The period's consensus metrics.")
    targets = TargetOut(many=True, help_text="Consensus targets for adults with type 1 or type 2 diabetes.")
    previous = MetricsOut(help_text="The period of the same length just before.")
    change = serializers.DictField(
        child=serializers.FloatField(allow_null=True), help_text="metrics minus previous, per metric."
    )


class AgpSlotOut(serializers.Serializer):
    slot = serializers.IntegerField(help_text="0 to 95: the 15-minute slot of the local day.")
    time = serializers.CharField(help_text="HH:MM local time at the slot's start.")
    readings = serializers.IntegerField(help_text="Readings in this slot over the period.")
    p5 = serializers.FloatField(help_text="5th percentile, mg/dL.")
    p25 = serializers.FloatField(help_text="25th percentile, mg/dL.")
    p50 = serializers.FloatField(help_text="Median, mg/dL.")
    p75 = serializers.FloatField(help_text="75th percentile, mg/dL.")
    p95 = serializers.FloatField(help_text="95th percentile, mg/dL.")


class AgpOut(serializers.Serializer):
    unit = serializers.CharField(help_text="Always mg/dL.")
    start = serializers.DateField(help_text="First local day of the period.")
    end = serializers.DateField(help_text="Last local day of the period (inclusive).")
    days = serializers.IntegerField(help_text="Number of local days in the period.")
    slot_minutes = serializers.IntegerField(help_text="Length of a slot: 15.")
    target_low = serializers.FloatField(help_text="Lower end of the target range, mg/dL (70).")
    target_high = serializers.FloatField(help_text="Upper end of the target range, mg/dL (180).")
    slots = AgpSlotOut(many=True, help_text="Slots without readings are left out.")


_PERIOD_PARAMS = [
    OpenApiParameter(
        "days",
        {"type": "integer", "minimum": 1, "maximum": MAX_DAYS},
        required=False,
        description=f"Length of the period in local days, 1 to {MAX_DAYS}; default {DEFAULT_DAYS}.",
    ),
    OpenApiParameter(
        "end",
        str,
        required=False,
        description="Last local day of the period (YYYY-MM-DD, inclusive); default the patient's today.",
    ),
]

_EXAMPLE_METRICS = {
    "start": "2026-02-25",
    "end": "2026-03-10",
    "days": 14,
    "days_worn": 14,
    "readings": 3960,
    "readings_above_range": 2,
    "readings_below_range": 0,
    "active_percent": 98.2,
    "mean_mg_dl": 151.3,
    "sd_mg_dl": 48.1,
    "cv_percent": 31.8,
    "gmi_percent": 6.93,
    "gmi_absent_reason": None,
    "very_low_percent": 0.4,
    "low_percent": 2.1,
    "target_percent": 71.5,
    "high_percent": 19.0,
    "very_high_percent": 7.0,
    "tight_percent": 44.2,
    "below_70_percent": 2.5,
    "above_180_percent": 26.0,
    "gri": 33.5,
    "gri_zone": "B",
    "hypo_episodes": 3,
    "severe_hypo_episodes": 1,
    "hyper_episodes": 21,
    "severe_hyper_episodes": 6,
    "min_mg_dl": 48.0,
    "max_mg_dl": 400.0,
}
_SUMMARY_EXAMPLE = {
    "unit": "mg/dL",
    "metrics": _EXAMPLE_METRICS,
    "targets": [
        {
            "metric": "target_percent",
            "label": "Time in range 70-180 mg/dL above 70%",
            "comparison": ">",
            "threshold": 70.0,
            "value": 71.5,
            "met": True,
        }
    ],
    "previous": {**_EXAMPLE_METRICS, "start": "2026-02-11", "end": "2026-02-24"},
    "change": {"mean_mg_dl": -4.2, "target_percent": 3.1},
}


class GlucoseSummaryView(PatientAPIView):
    @extend_schema(
        operation_id="wearables_glucose_summary",
        summary="Consensus CGM metrics of a period, with the consensus targets and whether each is met",
        description=(
            "Time in ranges, mean, SD, CV, GMI, GRI, episodes and % time active over `days` local days ending "
            "on `end`, and the change against the period of the same length before it. Time-weighted: each "
            "reading stands for the time until the next one, capped at the sensor's interval (5 minutes). "
            "Readings beyond the sensor's range count at its limit in their band."
        ),
        parameters=_PERIOD_PARAMS,
        responses={200: SummaryOut, **BAD_REQUEST, **ERRORS},
        examples=[OpenApiExample("14 days", value=_SUMMARY_EXAMPLE, response_only=True)],
        tags=["read"],
    )
    def get(self, request: Request) -> Response:
        reject_unknown_parameters(request, frozenset({"days", "end"}))
        patient = self.patient(request)
        days = parse_days(request)
        end, now = period_end(request, patient.time_zone)
        result = _metrics_for(patient.pk, patient.time_zone, end, days, now)
        return Response(summary_body(result))


def summary_body(result: gm.Summary) -> dict[str, Any]:
    return {
        "unit": "mg/dL",
        "metrics": result.current.as_dict(),
        "targets": gm.targets_for(result.current),
        "previous": result.previous.as_dict(),
        "change": result.change,
    }


class GlucoseAgpView(PatientAPIView):
    @extend_schema(
        operation_id="wearables_glucose_agp",
        summary="Ambulatory glucose profile: percentiles per 15-minute slot of the local day",
        description=(
            "All local days of the period folded onto one day: the 5th, 25th, 50th, 75th and 95th percentiles "
            "(PostgreSQL percentile_cont, interpolated) of the readings in each 15-minute slot."
        ),
        parameters=_PERIOD_PARAMS,
        responses={200: AgpOut, **BAD_REQUEST, **ERRORS},
        examples=[
            OpenApiExample(
                "14 days",
                response_only=True,
                value={
                    "unit": "mg/dL",
                    "start": "2026-02-25",
                    "end": "2026-03-10",
                    "days": 14,
                    "slot_minutes": 15,
                    "target_low": 70.0,
                    "target_high": 180.0,
                    "slots": [
                        {
                            "slot": 0,
                            "time": "00:00",
                            "readings": 42,
                            "p5": 88.0,
                            "p25": 104.5,
                            "p50": 118.0,
                            "p75": 131.0,
                            "p95": 162.4,
                        }
                    ],
                },
            )
        ],
        tags=["read"],
    )
    def get(self, request: Request) -> Response:
        reject_unknown_parameters(request, frozenset({"days", "end"}))
        patient = self.patient(request)
        days = parse_days(request)
        end, _ = period_end(request, patient.time_zone)
        return Response(agp_body(patient.pk, patient.time_zone, end, days))


def agp_body(patient_id: int, time_zone: str, end: date, days: int) -> dict[str, Any]:
    slots = gm.agp(patient_id, time_zone, end, days)
    return {
        "unit": "mg/dL",
        "start": (end - timedelta(days=days - 1)).isoformat(),
        "end": end.isoformat(),
        "days": days,
        "slot_minutes": gm.AGP_SLOT_MINUTES,
        "target_low": gm.LOW,
        "target_high": gm.HIGH,
        "slots": [
            {
                "slot": s.slot,
                "time": f"{s.minute // 60:02d}:{s.minute % 60:02d}",
                **{k: v for k, v in asdict(s).items() if k not in ("slot", "minute")},
            }
            for s in slots
        ],
    }


# --- FHIR export (service API) ----------------------------------------------------------------------------------

FHIR_PARAMS = frozenset(
    {"patient_id", "junction_user_id", "clerk_user_id", "start", "end", "readings", "subject"}
)
SERVICE_ERRORS = {
    **problem("Missing or wrong PATIENT_GRAPH_API_KEY.", "not_authenticated"),
    **problem("No such patient.", "not_found"),
}


def service_patient(request: Request) -> Patient:
    """The patient named by `patient_id`, `junction_user_id` or `clerk_user_id` (exactly one)."""
    given = [
        name for name in ("patient_id", "junction_user_id", "clerk_user_id") if name in request.query_params
    ]
    if len(given) != 1:
        raise _bad("patient_id", "send exactly one of patient_id, junction_user_id, clerk_user_id")
    name = given[0]
    raw = request.query_params[name]
    if name == "patient_id":
        if not raw.isdigit() or not 0 < int(raw) < 2**63:
            raise _bad("patient_id", "must be a positive integer")
        patient = Patient.objects.filter(pk=int(raw)).first()
    else:
        if not 0 < len(raw) <= 64 or "\x00" in raw:
            raise _bad(name, "must be a string of 1 to 64 characters")
        patient = Patient.objects.filter(**{name: raw}).first()
    if patient is None:
        raise APIError("not_found", "No such patient.")
    return patient


class FhirCgmView(APIView):
    authentication_classes = [PatientGraphKeyAuthentication]
    permission_classes = [IsPatientGraphService]

    @extend_schema(
        operation_id="patient_graph_fhir_cgm",
        summary="FHIR R4 transaction Bundle of a CGM period (HL7 FHIR CGM IG 1.0.0)",
        description=(
            "The CGM Summary Observation (LOINC 107931-8) with its members (mean glucose, times in ranges with "
            "five components in % to two decimals, GMI, CV, days of wear, sensor active %), a CGM Device per "
            "sensor source and, with `readings=true`, every reading as a CGM Sensor Reading (99504-3, mg/dL). "
            "Each entry is a conditional create on a deterministic identifier (`ifNoneExist`), so submitting "
            "the same period twice creates nothing new. `manage.py export_fhir_cgm` writes the same bundle."
        ),
        parameters=[
            OpenApiParameter("patient_id", int, required=False, description="This deployment's patient id."),
            OpenApiParameter("junction_user_id", str, required=False, description="Or the Junction user id."),
            OpenApiParameter("clerk_user_id", str, required=False, description="Or the Clerk user id."),
            OpenApiParameter("start", str, required=False, description="First local day (YYYY-MM-DD)."),
            OpenApiParameter(
                "end",
                str,
                required=False,
                description="Last local day (YYYY-MM-DD, inclusive); default today.",
            ),
            OpenApiParameter(
                "readings",
                {"type": "string", "enum": ["true", "false"]},
                required=False,
                description="Include every reading as a CGM Sensor Reading; default false.",
            ),
            OpenApiParameter(
                "subject",
                str,
                required=False,
                description="The receiving system's reference to the patient (e.g. Patient/123); default a "
                "logical reference by identifier (urn:loopsync:patient).",
            ),
        ],
        responses={
            (200, "application/fhir+json"): OpenApiResponse(
                OpenApiTypes.OBJECT,
                description="A FHIR R4 Bundle of type transaction.",
                examples=[
                    OpenApiExample(
                        "summary only",
                        value={
                            "resourceType": "Bundle",
                            "type": "transaction",
                            "timestamp": "2026-03-10T12:00:00Z",
                            "entry": [
                                {
                                    "fullUrl": "urn:uuid:8c5e0f1a-0d7b-5b1e-9a55-1f0b2c3d4e5f",
                                    "resource": {
                                        "resourceType": "Observation",
                                        "code": {"text": "CGM summary"},
                                    },
                                    "request": {
                                        "method": "POST",
                                        "url": "Observation",
                                        "ifNoneExist": "identifier=urn:loopsync:cgm|7:2026-02-25:2026-03-10:summary",
                                    },
                                }
                            ],
                        },
                    )
                ],
            ),
            **BAD_REQUEST,
            **SERVICE_ERRORS,
        },
        tags=["patient-graph service"],
    )
    def get(self, request: Request) -> HttpResponse:
        reject_unknown_parameters(request, FHIR_PARAMS)
        patient = service_patient(request)
        _, today = fhir.default_period(patient.time_zone)
        end = parse_day(request, "end") or today
        start = parse_day(request, "start") or end - timedelta(days=DEFAULT_DAYS - 1)
        if start > end:
            raise _bad("start", "must not be after end")
        if (end - start).days + 1 > MAX_DAYS:
            raise _bad("end", f"the period is limited to {MAX_DAYS} days")
        if end > today:
            raise _bad("end", "must not be after the patient's today")
        flag = request.query_params.get("readings", "false")
        if flag not in ("true", "false"):
            raise _bad("readings", "must be true or false")
        subject = request.query_params.get("subject")
        if subject is not None and not (0 < len(subject) <= 200 and "\x00" not in subject):
            raise _bad("subject", "must be a reference of 1 to 200 characters")
        bundle = fhir.cgm_bundle(
            patient.pk, patient.time_zone, start, end, include_readings=flag == "true", subject=subject
        )
        return HttpResponse(fhir.render(bundle), content_type="application/fhir+json")
