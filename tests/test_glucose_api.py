"""The glucose summary and AGP routes: the caller's own data only, the consensus targets, 400s that say why."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from connections.config import DirectProvidersConfig
from connections.models import Patient, Provider
from readings.models import GlucoseReading
from readings.store import local_day_bounds
from sandbox import SandboxServer
from sandbox.clerk import ClerkSandbox
from tests.api_helpers import client_for, error_of
from tests.direct_helpers import connect, sync

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_time")]

SUMMARY = "/api/patient-graph/wearables/glucose/summary"
AGP = "/api/patient-graph/wearables/glucose/agp"


@pytest.fixture
def wearer(direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer) -> Patient:
    """Dexcom sandbox user 1 (nights below 54), 14 days synced, Clerk id user_cgm; and user_other, no CGM."""
    config = direct_config.replace(cgm_initial_days=14)
    connection = connect(clean_sandbox, config, Provider.DEXCOM, 1)
    assert sync(connection, config).status == "success"
    Patient.objects.filter(pk=connection.patient_id).update(clerk_user_id="user_cgm")
    Patient.objects.create(clerk_user_id="user_other", time_zone="UTC")
    return Patient.objects.get(pk=connection.patient_id)


def readings_in(patient: Patient, start: date, end: date, now: datetime) -> list[GlucoseReading]:
    tz = ZoneInfo(patient.time_zone)
    lo, _ = local_day_bounds(start, tz)
    _, hi = local_day_bounds(end, tz)
    return list(
        GlucoseReading.objects.filter(patient=patient, measured_at__gte=lo, measured_at__lt=min(hi, now))
    )


def test_summary_reports_the_consensus_metrics_and_targets(
    wearer: Patient, clerk: ClerkSandbox, frozen_time: datetime
) -> None:
    response = client_for(clerk.mint("user_cgm")).get(SUMMARY, {"days": 7})

    assert response.status_code == 200, response.json()
    body = response.json()
    metrics = body["metrics"]
    end = frozen_time.astimezone(ZoneInfo(wearer.time_zone)).date()
    assert (metrics["start"], metrics["end"], metrics["days"]) == (
        (end - timedelta(days=6)).isoformat(),
        end.isoformat(),
        7,
    )
    rows = readings_in(wearer, end - timedelta(days=6), end, frozen_time)
    assert metrics["readings"] == len(rows) > 1500
    # Evenly spaced readings: the time-weighted shares are (almost exactly) shares of readings.
    assert metrics["very_low_percent"] == pytest.approx(
        100 * sum(r.value_mg_dl < 54 for r in rows) / len(rows), abs=0.2
    )
    assert metrics["very_low_percent"] > 0 and metrics["readings_below_range"] > 0
    assert metrics["mean_mg_dl"] == pytest.approx(sum(r.value_mg_dl for r in rows) / len(rows), rel=1e-3)
    bands = ("very_low_percent", "low_percent", "target_percent", "high_percent", "very_high_percent")
    assert sum(metrics[b] for b in bands) == pytest.approx(100.0)
    assert metrics["gmi_percent"] == pytest.approx(3.31 + 0.02392 * metrics["mean_mg_dl"])
    assert metrics["gri_zone"] in "ABCDE"
    targets = {t["metric"]: t for t in body["targets"]}
    assert set(targets) >= {"target_percent", "below_70_percent", "very_low_percent", "cv_percent"}
    for target in targets.values():
        value, threshold = target["value"], target["threshold"]
        expected = {
            "<": value < threshold,
            "<=": value <= threshold,
            ">": value > threshold,
            ">=": value >= threshold,
        }
        assert target["met"] is expected[target["comparison"]]
    assert body["previous"]["end"] == (end - timedelta(days=7)).isoformat()
    assert body["change"]["mean_mg_dl"] == pytest.approx(
        metrics["mean_mg_dl"] - body["previous"]["mean_mg_dl"]
    )


def test_summary_without_readings_has_no_values_and_says_why_gmi_is_absent(
    wearer: Patient, clerk: ClerkSandbox
) -> None:
    body = client_for(clerk.mint("user_other")).get(SUMMARY).json()

    assert body["metrics"]["readings"] == 0 and body["metrics"]["mean_mg_dl"] is None
    assert body["metrics"]["gmi_percent"] is None and body["metrics"]["gmi_absent_reason"]
    assert all(t["met"] is None for t in body["targets"] if t["metric"] != "active_percent")


def test_agp_folds_the_days_into_15_minute_slots(
    wearer: Patient, clerk: ClerkSandbox, frozen_time: datetime
) -> None:
    response = client_for(clerk.mint("user_cgm")).get(AGP, {"days": 14})

    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["slot_minutes"] == 15 and len(body["slots"]) == 96
    end = date.fromisoformat(body["end"])
    rows = readings_in(wearer, end - timedelta(days=13), end, frozen_time)
    assert sum(s["readings"] for s in body["slots"]) == len(rows)
    for slot in body["slots"]:
        assert slot["p5"] <= slot["p25"] <= slot["p50"] <= slot["p75"] <= slot["p95"]
    night = [s for s in body["slots"] if "02:00" <= s["time"] < "04:00"]
    assert min(s["p5"] for s in night) < 54  # the sandbox user's nights below 54


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"days": "0"}, "days"),
        ({"days": "91"}, "days"),
        ({"days": "two"}, "days"),
        ({"end": "2999-01-01"}, "end"),
        ({"end": "yesterday"}, "end"),
        ({"window": "14"}, "window"),
    ],
)
@pytest.mark.parametrize("url", [SUMMARY, AGP])
def test_bad_parameters_are_a_400_naming_the_parameter(
    wearer: Patient, clerk: ClerkSandbox, url: str, params: dict, param: str
) -> None:
    response = client_for(clerk.mint("user_cgm")).get(url, params)
    assert response.status_code == 400
    assert param in error_of(response)["detail"]


@pytest.mark.parametrize("url", [SUMMARY, AGP])
def test_glucose_metrics_need_a_patient_token(wearer: Patient, url: str) -> None:
    assert client_for(None).get(url).status_code == 401
    assert client_for("not-a-jwt").get(url).status_code == 401
