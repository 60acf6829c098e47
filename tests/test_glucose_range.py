"""Out-of-range glucose is kept (issue 13, item 7): Dexcom's `value: null` with `status` high/low is stored at
the sensor's limit with a range flag, counted by the daily statistics and shown by the API; an mg/dL value
labelled mmol/L is kept as mg/dL with a warning that carries no value."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import pytest

from connections.config import DirectProvidersConfig
from connections.models import Patient, Provider
from connections.providers.dexcom.client import ParsedGlucose, parse_egvs
from readings.models import DailyStat, GlucoseReading
from readings.writers import _glucose
from sandbox import SandboxServer
from sandbox.clerk import ClerkSandbox
from tests.api_helpers import client_for
from tests.direct_helpers import connect, sync

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_time")]

HYPO_NIGHTS_USER, LONG_HIGHS_USER, MISLABELLED_USER = 1, 3, 6


def served(sandbox: SandboxServer, user: int, now: datetime, days: int) -> list[dict]:
    return sandbox.dexcom.egvs(user, now - timedelta(days=days + 1), now)


def egv(**fields: object) -> dict:
    return {"systemTime": "2026-03-09T08:00:00Z", "unit": "mg/dL", "trend": "flat", **fields}


def test_a_null_value_with_status_high_or_low_is_kept_at_the_dexcom_limit_with_its_flag() -> None:
    out = ParsedGlucose()
    parse_egvs(
        {
            "records": [
                egv(value=None, status="high", systemTime="2026-03-09T08:00:00Z"),
                egv(value=None, status="low", systemTime="2026-03-09T08:05:00Z", unit="mmol/L"),
                egv(value=112, status="ok", systemTime="2026-03-09T08:10:00Z"),
                egv(value=None, status=None, systemTime="2026-03-09T08:15:00Z"),  # no number, no direction
            ]
        },
        out,
    )
    assert [(row[2], row[3], row[4], row[8]) for row in out.glucose] == [
        (400.0, 400.0, "mg/dL", "above"),
        (40.0, 40.0, "mg/dL", "below"),
        (112.0, 112.0, "mg/dL", None),
    ]
    assert out.skipped == 1


def test_dexcom_sync_keeps_every_reading_beyond_the_sensor_range(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer, frozen_time: datetime
) -> None:
    config = direct_config.replace(cgm_initial_days=7)
    for user, flag, limit in ((HYPO_NIGHTS_USER, "below", 40.0), (LONG_HIGHS_USER, "above", 400.0)):
        connection = connect(clean_sandbox, config, Provider.DEXCOM, user)
        summary = sync(connection, config)
        assert summary.status == "success" and summary.records_skipped == 0
        stored = GlucoseReading.objects.filter(patient=connection.patient)
        beyond = [r for r in served(clean_sandbox, user, frozen_time, 7) if r["value"] is None]
        assert beyond, "the sandbox serves readings beyond the range for this user"
        flagged = stored.filter(range_flag=flag)
        assert flagged.count() == len(
            [r for r in beyond if stored.filter(measured_at=_instant(r["systemTime"])).exists()]
        )
        assert flagged.count() > 0
        assert set(flagged.values_list("value_mg_dl", flat=True)) == {limit}
        assert not stored.exclude(range_flag=None).exclude(range_flag=flag).exists()
        # Ordinary readings carry no flag, even at the limit's neighbourhood.
        assert stored.filter(range_flag=None).count() == stored.count() - flagged.count()


def test_daily_statistics_count_readings_beyond_the_range_at_the_limit(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:
    config = direct_config.replace(cgm_initial_days=7)
    connection = connect(clean_sandbox, config, Provider.DEXCOM, HYPO_NIGHTS_USER)
    assert sync(connection, config).status == "success"

    day = (
        GlucoseReading.objects.filter(patient=connection.patient, range_flag="below")
        .order_by("measured_at")
        .first()
    )
    assert day is not None
    stats = DailyStat.objects.filter(patient=connection.patient, metric="glucose", min=40.0)
    assert stats.exists()
    for stat in stats:
        assert stat.count == sum(
            1
            for r in GlucoseReading.objects.filter(patient=connection.patient)
            if r.measured_at.astimezone(_zone(connection.patient)).date() == stat.day
        )


def test_an_mg_dl_value_labelled_mmol_is_kept_as_mg_dl_and_warned_without_the_value(
    direct_config: DirectProvidersConfig,
    clean_sandbox: SandboxServer,
    frozen_time: datetime,
    caplog: pytest.LogCaptureFixture,
) -> None:
    connection = connect(clean_sandbox, direct_config, Provider.DEXCOM, MISLABELLED_USER)
    with caplog.at_level(logging.WARNING, logger="loopsync.providers"):
        summary = sync(connection, direct_config)

    assert summary.status == "success" and summary.records_skipped == 0
    records = {
        _instant(r["systemTime"]): r["value"]
        for r in served(clean_sandbox, MISLABELLED_USER, frozen_time, 2)
        if r["value"] is not None
    }
    stored = list(GlucoseReading.objects.filter(patient=connection.patient))
    assert stored
    for row in stored:
        assert row.value_mg_dl == records[row.measured_at] and row.original_unit == "mg/dL"
    warnings = [r for r in caplog.records if r.getMessage() == "glucose labelled mmol/L read as mg/dL"]
    assert len(warnings) == len(stored)
    for record in warnings:
        # The provider, the resource and the record's position: never the value (PHI).
        assert (record.provider, record.resource) == ("dexcom", "egvs")
        assert not any(char.isdigit() for char in record.getMessage())
        assert not {"value", "raw", "mg_dl"} & set(record.__dict__)


def test_the_glucose_api_shows_the_range_flag(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer, clerk: ClerkSandbox
) -> None:
    config = direct_config.replace(cgm_initial_days=7)
    connection = connect(clean_sandbox, config, Provider.DEXCOM, LONG_HIGHS_USER)
    assert sync(connection, config).status == "success"
    Patient.objects.filter(pk=connection.patient_id).update(clerk_user_id="user_highs")

    response = client_for(clerk.mint("user_highs")).get(
        "/api/patient-graph/wearables/glucose",
        {"start": "2026-03-02", "end": "2026-03-11", "page_size": 5000},
    )

    assert response.status_code == 200
    rows = response.json()["results"]
    above = [r for r in rows if r["range_flag"] == "above"]
    assert above and all(r["value_mg_dl"] == 400.0 for r in above)
    assert {r["range_flag"] for r in rows} == {None, "above"}
    assert len(above) == GlucoseReading.objects.filter(range_flag="above").count()


def test_the_patient_graph_writer_and_ingest_carry_the_flag(settings, junction_config) -> None:
    settings.JUNCTION_SYNC = junction_config.replace(patient_graph_key="pg_test_key_0123456789")
    patient = Patient.objects.create(junction_user_id="u-range", time_zone="UTC")
    row = ("dexcom", "2026-03-09 08:00:00+00:00", 40.0, 40.0, "mg/dL", "", None, "g7", "below")
    body = {"junction_user_id": "u-range", "readings": [], "glucose": [_glucose(row)]}
    assert body["glucose"][0]["range_flag"] == "below"
    client = client_for("pg_test_key_0123456789")

    response = client.post("/api/patient-graph/service/ingest", body, format="json")
    bad = client.post(
        "/api/patient-graph/service/ingest",
        {**body, "glucose": [{**body["glucose"][0], "range_flag": "sideways"}]},
        format="json",
    )

    assert response.status_code == 200, response.json()
    stored = GlucoseReading.objects.get(patient=patient)
    assert (stored.value_mg_dl, stored.range_flag) == (40.0, "below")
    assert bad.status_code == 400 and "range_flag" in str(bad.json())


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _zone(patient: Patient):  # type: ignore[no-untyped-def]
    from zoneinfo import ZoneInfo

    return ZoneInfo(Patient.objects.get(pk=patient.pk).time_zone)
