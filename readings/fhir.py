"""A FHIR R4 `transaction` Bundle of a patient's CGM period, following the HL7 FHIR CGM IG 1.0.0 profiles
(hl7.org/fhir/uv/cgm; shared/reference/cgm_analytics.md):

- CGM Summary Observation (LOINC 107931-8, `effectivePeriod` as dates) with `hasMember` to: mean glucose
  (97507-8, mg/dL), the times-in-ranges panel (106793-3; components 104642-4 very low, 104641-6 low, 97510-2
  target, 104640-8 high, 104639-0 very high, in % with two decimals), GMI (97506-0, %), CV (104638-2, %), days of
  wear (104636-6, d) and sensor active % (104637-4);
- a CGM Device per sensor source in the period (user-friendly name, identifier);
- with `readings=True`, each counted reading as a CGM Sensor Reading (99504-3, mg/dL). A reading beyond the
  sensor's range keeps its limit with the Quantity comparator (`>` 400, `<` 40): the value is a bound, not absent.
A member whose value cannot be computed (GMI under 70 % active, or no readings) carries `dataAbsentReason`
instead of a value, with a note saying why.

Identifiers are deterministic (patient, period, member; device source; reading instant), every entry is a
conditional create (`ifNoneExist` on its identifier), so submitting the same period again creates nothing.
Percentages are rendered with exactly two decimals (`render` writes the JSON; Python's float printing would
drop a trailing zero).
"""

from __future__ import annotations

import json
import uuid
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from django.db import connection as db
from django.utils import timezone

from readings import glucose_metrics as gm
from readings.store import local_day_bounds

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
IG = "http://hl7.org/fhir/uv/cgm/StructureDefinition"
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
IDENTIFIER_SYSTEM = "urn:loopsync:cgm"
PATIENT_SYSTEM = "urn:loopsync:patient"
DEVICE_SYSTEM = "urn:loopsync:cgm-device"
# uuid5 namespace of every fullUrl: the same resource gets the same urn:uuid in every export.
NAMESPACE = uuid.UUID("3f7c1d52-9a0e-5b6c-8d41-2e9f0a7b6c15")

SUMMARY_CODE = ("107931-8", "CGM summary panel - reporting period")
MEMBERS = {
    "mean": ("97507-8", "Glucose [Mass/volume] mean by CGM", "cgm-summary-mean-glucose-mass-per-volume"),
    "tir": ("106793-3", "CGM time in ranges panel", "cgm-summary-times-in-ranges"),
    "gmi": ("97506-0", "Glucose management indicator", "cgm-summary-gmi"),
    "cv": ("104638-2", "Coefficient of variation of glucose by CGM", "cgm-summary-coefficient-of-variation"),
    "days": ("104636-6", "CGM duration of use (days of wear)", "cgm-summary-days-of-wear"),
    "active": ("104637-4", "CGM sensor wear time active", "cgm-summary-sensor-active-percentage"),
}
RANGE_COMPONENTS = (
    ("very_low_percent", "104642-4", "Time in very low range (< 54 mg/dL)"),
    ("low_percent", "104641-6", "Time in low range (54-69 mg/dL)"),
    ("target_percent", "97510-2", "Time in target range (70-180 mg/dL)"),
    ("high_percent", "104640-8", "Time in high range (181-250 mg/dL)"),
    ("very_high_percent", "104639-0", "Time in very high range (> 250 mg/dL)"),
)
READING_CODE = ("99504-3", "Glucose [Mass/volume] in Interstitial fluid by CGM")
MANUFACTURERS = {"dexcom": "Dexcom", "libre": "Abbott", "freestyle": "Abbott"}


class _Number:
    """A decimal to be written as a JSON number with its exact digits (71.50, not 71.5)."""

    def __init__(self, value: Decimal) -> None:
        self.value = value


def two_decimals(value: float) -> _Number:
    return _Number(Decimal(repr(value)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def one_decimal(value: float) -> _Number:
    return _Number(Decimal(repr(value)).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))


def render(bundle: dict[str, Any], *, indent: int | None = None) -> str:
    """JSON text of a bundle built here: every `_Number` written as a number with its own digits."""
    numbers: list[str] = []

    def placeholder(value: Any) -> str:
        if isinstance(value, _Number):
            numbers.append(format(value.value, "f"))
            return f"\x00{len(numbers) - 1}\x00"
        raise TypeError(type(value).__name__)

    text = json.dumps(bundle, default=placeholder, indent=indent, ensure_ascii=False)
    for index, number in enumerate(numbers):
        text = text.replace(f'"\\u0000{index}\\u0000"', number, 1)
    return text


def plain(bundle: dict[str, Any]) -> dict[str, Any]:
    """The bundle as plain JSON data (for validation and tests)."""
    return json.loads(render(bundle))


def _urn(*parts: object) -> str:
    return f"urn:uuid:{uuid.uuid5(NAMESPACE, ':'.join(map(str, parts)))}"


def _code(code: tuple[str, ...]) -> dict[str, Any]:
    return {"coding": [{"system": LOINC, "code": code[0], "display": code[1]}], "text": code[1]}


def _percent(value: float) -> dict[str, Any]:
    return {"value": two_decimals(value), "unit": "%", "system": UCUM, "code": "%"}


def _absent(why: str) -> dict[str, Any]:
    return {
        "dataAbsentReason": {
            "coding": [{"system": DATA_ABSENT, "code": "not-performed", "display": "Not Performed"}],
            "text": why,
        }
    }


def _entry(resource: dict[str, Any], full_url: str, identifier: str) -> dict[str, Any]:
    kind = resource["resourceType"]
    return {
        "fullUrl": full_url,
        "resource": resource,
        "request": {
            "method": "POST",
            "url": kind,
            "ifNoneExist": f"identifier={IDENTIFIER_SYSTEM if kind != 'Device' else DEVICE_SYSTEM}|{identifier}",
        },
    }


def _devices(patient_id: int, lo: datetime, hi: datetime) -> list[tuple[str, str, int]]:
    with db.cursor() as cursor:
        cursor.execute(
            "SELECT g.source, g.device, count(*) FROM patient_glucose_readings g "
            "WHERE g.patient_id = %s AND g.measured_at >= %s AND g.measured_at < %s "
            "GROUP BY 1, 2 ORDER BY 1, 2",
            [patient_id, lo, hi],
        )
        return cursor.fetchall()


def _readings(
    patient_id: int, lo: datetime, hi: datetime
) -> list[tuple[str, datetime, float, str | None, str]]:
    with db.cursor() as cursor:
        cursor.execute(
            f"SELECT c.source, c.measured_at, c.value_mg_dl, c.range_flag, coalesce(g.device, '') "
            f"FROM ({gm.counted_glucose_sql('g.patient_id = %s')}) c JOIN patient_glucose_readings g "
            "ON g.patient_id = c.patient_id AND g.source = c.source AND g.measured_at = c.measured_at "
            "WHERE c.patient_id = %s AND c.measured_at >= %s AND c.measured_at < %s ORDER BY 2, 1",
            [patient_id, patient_id, lo, hi],
        )
        return cursor.fetchall()


def cgm_bundle(
    patient_id: int,
    time_zone: str,
    start: date,
    end: date,
    *,
    include_readings: bool = False,
    subject: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The transaction Bundle of the local days [start, end] (inclusive)."""
    now = now or timezone.now()
    tz = ZoneInfo(time_zone)
    lo, _ = local_day_bounds(start, tz)
    _, hi = local_day_bounds(end, tz)
    days = (end - start).days + 1
    metrics = gm.window_metrics(patient_id, time_zone, end, days, until=now)
    period = {"start": start.isoformat(), "end": end.isoformat()}
    key = f"{patient_id}:{start.isoformat()}:{end.isoformat()}"
    patient_ref = (
        {"reference": subject}
        if subject
        else {"identifier": {"system": PATIENT_SYSTEM, "value": str(patient_id)}}
    )
    entries: list[dict[str, Any]] = []

    def observation(name: str, body: dict[str, Any]) -> str:
        code, display, profile = MEMBERS[name]
        identifier = f"{key}:{name}"
        full_url = _urn("observation", identifier)
        entries.append(
            _entry(
                {
                    "resourceType": "Observation",
                    "meta": {"profile": [f"{IG}/{profile}"]},
                    "identifier": [{"system": IDENTIFIER_SYSTEM, "value": identifier}],
                    "status": "final",
                    "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "laboratory"}]}],
                    "code": _code((code, display)),
                    "subject": patient_ref,
                    "effectivePeriod": period,
                    **body,
                },
                full_url,
                identifier,
            )
        )
        return full_url

    no_data = "no glucose readings in the period"
    members = [
        observation(
            "mean",
            {
                "valueQuantity": {
                    "value": one_decimal(metrics.mean_mg_dl),
                    "unit": "mg/dL",
                    "system": UCUM,
                    "code": "mg/dL",
                }
            }
            if metrics.mean_mg_dl is not None
            else _absent(no_data),
        ),
        observation(
            "tir",
            {
                "component": [
                    {
                        "code": _code((code, display)),
                        **(
                            {"valueQuantity": _percent(getattr(metrics, field))}
                            if getattr(metrics, field) is not None
                            else _absent(no_data)
                        ),
                    }
                    for field, code, display in RANGE_COMPONENTS
                ]
            },
        ),
        observation(
            "gmi",
            {"valueQuantity": _percent(metrics.gmi_percent)}
            if metrics.gmi_percent is not None
            else _absent(metrics.gmi_absent_reason or no_data),
        ),
        observation(
            "cv",
            {"valueQuantity": _percent(metrics.cv_percent)}
            if metrics.cv_percent is not None
            else _absent(no_data),
        ),
        observation(
            "days",
            {"valueQuantity": {"value": metrics.days_worn, "unit": "days", "system": UCUM, "code": "d"}},
        ),
        observation("active", {"valueQuantity": _percent(metrics.active_percent or 0.0)}),
    ]
    summary_id = f"{key}:summary"
    summary_url = _urn("observation", summary_id)
    entries.insert(
        0,
        _entry(
            {
                "resourceType": "Observation",
                "meta": {"profile": [f"{IG}/cgm-summary"]},
                "identifier": [{"system": IDENTIFIER_SYSTEM, "value": summary_id}],
                "status": "final",
                "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "laboratory"}]}],
                "code": _code(SUMMARY_CODE),
                "subject": patient_ref,
                "effectivePeriod": period,
                "hasMember": [{"reference": url} for url in members],
            },
            summary_url,
            summary_id,
        ),
    )
    device_urls: dict[tuple[str, str], str] = {}
    for source, device, _count in _devices(patient_id, lo, hi):
        identifier = f"{patient_id}:{source}:{device}"
        url = _urn("device", identifier)
        device_urls[(source, device)] = url
        maker = next((m for prefix, m in MANUFACTURERS.items() if prefix in source), source)
        name = f"{maker} CGM" + (f" ({device})" if device else "")
        entries.append(
            _entry(
                {
                    "resourceType": "Device",
                    "meta": {"profile": [f"{IG}/cgm-device"]},
                    "identifier": [{"system": DEVICE_SYSTEM, "value": identifier}],
                    "deviceName": [{"name": name, "type": "user-friendly-name"}],
                    "manufacturer": maker,
                },
                url,
                identifier,
            )
        )
    if include_readings:
        for source, measured_at, value, flag, device in _readings(patient_id, lo, hi):
            instant = measured_at.astimezone(ZoneInfo("UTC")).isoformat().replace("+00:00", "Z")
            identifier = f"{patient_id}:{source}:{instant}"
            quantity: dict[str, Any] = {
                "value": one_decimal(value),
                "unit": "mg/dL",
                "system": UCUM,
                "code": "mg/dL",
            }
            if flag == "above":
                quantity["comparator"] = ">"
            elif flag == "below":
                quantity["comparator"] = "<"
            resource: dict[str, Any] = {
                "resourceType": "Observation",
                "meta": {"profile": [f"{IG}/cgm-sensor-reading-mass-per-volume"]},
                "identifier": [{"system": IDENTIFIER_SYSTEM, "value": identifier}],
                "status": "final",
                "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "laboratory"}]}],
                "code": _code(READING_CODE),
                "subject": patient_ref,
                "effectiveDateTime": instant,
                "valueQuantity": quantity,
            }
            if (source, device) in device_urls:
                resource["device"] = {"reference": device_urls[(source, device)]}
            entries.append(_entry(resource, _urn("observation", identifier), identifier))
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "timestamp": now.astimezone(ZoneInfo("UTC")).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "entry": entries,
    }


def default_period(time_zone: str, days: int = 14) -> tuple[date, date]:
    today = timezone.now().astimezone(ZoneInfo(time_zone)).date()
    return today - timedelta(days=days - 1), today
