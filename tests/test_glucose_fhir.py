"""The FHIR CGM export: an R4 transaction Bundle (validated with fhir.resources) that follows the HL7 FHIR CGM IG
profiles, with deterministic identifiers and conditional creates; the service route and the command agree."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.core.management import call_command
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle

from connections.config import DirectProvidersConfig
from connections.models import Patient, Provider
from readings.models import GlucoseReading
from readings.store import local_day_bounds
from sandbox import SandboxServer
from tests.api_helpers import client_for, error_of
from tests.direct_helpers import connect, sync

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_time")]

URL = "/api/patient-graph/service/fhir/cgm"
KEY = "pg_fhir_key_0123456789"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
MEMBER_CODES = {"97507-8", "106793-3", "97506-0", "104638-2", "104636-6", "104637-4"}
RANGE_CODES = ["104642-4", "104641-6", "97510-2", "104640-8", "104639-0"]
START, END = "2026-02-28", "2026-03-09"


@pytest.fixture
def service(settings, junction_config):  # type: ignore[no-untyped-def]
    settings.JUNCTION_SYNC = junction_config.replace(patient_graph_key=KEY)
    return client_for(KEY)


@pytest.fixture
def wearer(direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer) -> Patient:
    """Dexcom sandbox user 3 (long highs beyond the sensor's 400 mg/dL), 14 days synced."""
    config = direct_config.replace(cgm_initial_days=14)
    connection = connect(clean_sandbox, config, Provider.DEXCOM, 3)
    assert sync(connection, config).status == "success"
    return Patient.objects.get(pk=connection.patient_id)


def export(service, patient: Patient, **params: str) -> tuple[dict, str]:  # type: ignore[no-untyped-def]
    response = service.get(URL, {"patient_id": patient.pk, "start": START, "end": END, **params})
    assert response.status_code == 200, response.content[:500]
    assert response["Content-Type"] == "application/fhir+json"
    text = response.content.decode()
    return json.loads(text), text


def by_code(bundle: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for entry in bundle["entry"]:
        resource = entry["resource"]
        key = resource["code"]["coding"][0]["code"] if "code" in resource else resource["resourceType"]
        out.setdefault(key, []).append(entry)
    return out


def loinc(resource: dict) -> str:
    (coding,) = resource["code"]["coding"]
    assert coding["system"] == LOINC
    return coding["code"]


def test_the_bundle_validates_as_fhir_r4_resources(service, wearer: Patient) -> None:  # type: ignore[no-untyped-def]
    bundle, _ = export(service, wearer, readings="true")

    Bundle.model_validate(bundle)
    for entry in bundle["entry"]:
        resource = entry["resource"]
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    assert bundle["type"] == "transaction" and bundle["timestamp"].endswith("Z")


def test_each_profile_has_its_required_elements(service, wearer: Patient) -> None:  # type: ignore[no-untyped-def]
    bundle, text = export(service, wearer, readings="true")
    entries = by_code(bundle)
    urls = {e["fullUrl"]: e["resource"] for e in bundle["entry"]}

    # CGM Summary Observation: 107931-8, the period as dates, a subject, the six members.
    (summary,) = entries["107931-8"]
    resource = summary["resource"]
    assert resource["status"] == "final" and resource["subject"]
    assert resource["effectivePeriod"] == {"start": START, "end": END}
    members = [urls[m["reference"]] for m in resource["hasMember"]]
    assert {loinc(m) for m in members} == MEMBER_CODES and len(members) == 6
    for member in members:
        assert (
            member["effectivePeriod"] == {"start": START, "end": END}
            and member["subject"] == resource["subject"]
        )
        assert member["status"] == "final"

    # Times in ranges: five components, % in UCUM, each with at least two decimals in the JSON text.
    (panel,) = [m for m in members if loinc(m) == "106793-3"]
    assert [loinc(c) for c in panel["component"]] == RANGE_CODES
    assert sum(c["valueQuantity"]["value"] for c in panel["component"]) == pytest.approx(100, abs=0.03)
    exact = json.loads(text, parse_float=Decimal)
    panel_exact = next(
        e["resource"]
        for e in exact["entry"]
        if e["resource"].get("code", {}).get("coding", [{}])[0].get("code") == "106793-3"
    )
    for component in panel_exact["component"]:
        quantity = component["valueQuantity"]
        assert (quantity["unit"], quantity["system"], quantity["code"]) == ("%", UCUM, "%")
        assert isinstance(quantity["value"], Decimal) and quantity["value"].as_tuple().exponent <= -2

    units = {loinc(m): m["valueQuantity"] for m in members if "valueQuantity" in m}
    assert units["97507-8"]["code"] == "mg/dL" and units["104636-6"]["code"] == "d"
    for code in ("97506-0", "104638-2", "104637-4"):
        assert (units[code]["system"], units[code]["code"]) == (UCUM, "%")
    assert units["104636-6"]["value"] == 10  # days of wear in the 10-day period

    # CGM Device: a user-friendly name and an identifier.
    (device,) = entries["Device"]
    names = device["resource"]["deviceName"]
    assert names[0]["type"] == "user-friendly-name" and "Dexcom" in names[0]["name"]
    assert device["resource"]["identifier"][0]["value"]

    # CGM Sensor Readings: 99504-3 in mg/dL with an effectiveDateTime; beyond-range ones as a bound.
    readings = entries["99504-3"]
    tz = ZoneInfo(wearer.time_zone)
    lo, _ = local_day_bounds(date.fromisoformat(START), tz)
    _, hi = local_day_bounds(date.fromisoformat(END), tz)
    stored = GlucoseReading.objects.filter(patient=wearer, measured_at__gte=lo, measured_at__lt=hi)
    assert len(readings) == stored.count() > 2000
    for entry in readings:
        r = entry["resource"]
        assert r["effectiveDateTime"] and r["subject"] == resource["subject"]
        assert (r["valueQuantity"]["unit"], r["valueQuantity"]["system"], r["valueQuantity"]["code"]) == (
            "mg/dL",
            UCUM,
            "mg/dL",
        )
        assert r["device"]["reference"] == device["fullUrl"]
    above = [e for e in readings if e["resource"]["valueQuantity"].get("comparator") == ">"]
    assert len(above) == stored.filter(range_flag="above").count() > 0
    assert all(e["resource"]["valueQuantity"]["value"] == 400 for e in above)


def test_identifiers_are_deterministic_and_every_entry_is_a_conditional_create(
    service, wearer: Patient
) -> None:  # type: ignore[no-untyped-def]
    first, _ = export(service, wearer)
    second, _ = export(service, wearer)

    first.pop("timestamp"), second.pop("timestamp")
    assert first == second
    urls = [e["fullUrl"] for e in first["entry"]]
    assert len(set(urls)) == len(urls) and all(u.startswith("urn:uuid:") for u in urls)
    for entry in first["entry"]:
        identifier = entry["resource"]["identifier"][0]
        assert entry["request"]["method"] == "POST"
        assert entry["request"]["ifNoneExist"] == f"identifier={identifier['system']}|{identifier['value']}"


def test_gmi_is_absent_with_a_reason_when_the_sensor_was_active_under_70_percent(
    service, direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:  # type: ignore[no-untyped-def]
    connection = connect(clean_sandbox, direct_config, Provider.DEXCOM, 2)  # one day of data in ten
    assert sync(connection, direct_config).status == "success"
    bundle, _ = export(service, connection.patient)

    gmi = next(
        e["resource"] for e in bundle["entry"] if e["resource"]["code"]["coding"][0]["code"] == "97506-0"
    )
    assert "valueQuantity" not in gmi
    assert gmi["dataAbsentReason"]["coding"][0]["code"] == "not-performed"
    assert "70%" in gmi["dataAbsentReason"]["text"]
    get_fhir_model_class("Observation").model_validate(gmi)


def test_the_command_writes_the_same_bundle(service, wearer: Patient, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "cgm.json"
    call_command(
        "export_fhir_cgm", "--patient", str(wearer.pk), "--start", START, "--end", END, "--output", str(out)
    )
    written = json.loads(out.read_text())
    served, _ = export(service, wearer)
    written.pop("timestamp"), served.pop("timestamp")
    assert written == served


def test_the_service_route_needs_the_key_and_says_what_is_wrong(service, wearer: Patient) -> None:  # type: ignore[no-untyped-def]
    assert client_for(None).get(URL, {"patient_id": wearer.pk}).status_code == 401
    assert client_for("wrong").get(URL, {"patient_id": wearer.pk}).status_code == 401
    assert service.get(URL, {"patient_id": 999999}).status_code == 404
    for params, name in (
        ({}, "patient_id"),
        ({"patient_id": wearer.pk, "start": "2026-03-09", "end": "2026-03-01"}, "start"),
        ({"patient_id": wearer.pk, "start": "2025-01-01", "end": "2026-03-09"}, "end"),
        ({"patient_id": wearer.pk, "readings": "yes"}, "readings"),
        ({"patient_id": wearer.pk, "window": "14"}, "window"),
    ):
        response = service.get(URL, params)
        assert response.status_code == 400, params
        assert name in error_of(response)["detail"]


def test_an_export_holds_only_its_own_patients_data(service, wearer: Patient) -> None:  # type: ignore[no-untyped-def]
    """Another patient's export has none of this patient's readings."""
    other = Patient.objects.create(time_zone="UTC")
    bundle, _ = export(service, other, readings="true")
    assert not [e for e in bundle["entry"] if e["resource"]["resourceType"] == "Device"]
    assert not [
        e
        for e in bundle["entry"]
        if e["resource"].get("code", {}).get("coding", [{}])[0].get("code") == "99504-3"
    ]
