"""One truth per measurement (issue 13): each finding's regression test."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db import transaction

from connections.models import Patient
from connections.providers.libre.client import parse_graph
from readings.models import GlucoseReading
from readings.partitions import ensure_partitions
from readings.retention import retention_cutoff, run_cleanup
from readings.store import store_batch

pytestmark = pytest.mark.django_db


def at(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(sep=" ")


def store(patient: Patient, readings: list, glucose: list | None = None, connection_id: int | None = None):  # type: ignore[no-untyped-def]
    with transaction.atomic():
        return store_batch(
            patient.pk, patient.time_zone, readings, glucose or [], connection_id=connection_id
        )


def hr(moment: datetime, value: float = 60.0, source: str = "oura") -> tuple:
    return ("heart_rate", source, "ring", at(moment), None, value, "bpm")


def cgm(moment: datetime, value: float = 100.0, source: str = "dexcom") -> tuple:
    return (source, at(moment), value, value, "mg/dL", "", None, "automatic")


def factory_timestamp(moment: datetime) -> str:
    hour = moment.hour % 12 or 12
    return f"{moment.month}/{moment.day}/{moment.year} {hour}:{moment:%M:%S} {'AM' if moment.hour < 12 else 'PM'}"


# --- Item 5: Libre direct has its own source name ----------------------------------------------------------


def test_libre_direct_and_junctions_freestyle_libre_copy_of_one_instant_are_two_rows_that_never_flip() -> (
    None
):
    patient = Patient.objects.create(time_zone="Europe/Berlin")
    moment = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    graph = {
        "graphData": [{"FactoryTimestamp": factory_timestamp(moment), "ValueInMgPerDl": 143, "Value": 143}]
    }
    direct = parse_graph(graph, since=None).glucose
    relayed = [("freestyle_libre", at(moment), 152.3, 8.45, "mmol/L", "", None, "automatic")]

    store(patient, [], direct)
    store(patient, [], relayed)
    store(patient, [], direct)

    rows = sorted(GlucoseReading.objects.filter(patient=patient).values_list("source", "value_mg_dl"))
    assert len(rows) == 2 and {source for source, _ in rows} == {"freestyle_libre", direct[0][0]}
    assert dict(rows)[direct[0][0]] == 143.0 and dict(rows)["freestyle_libre"] == 152.3


# --- Item 8: the cleanup report counts dropped partitions exactly --------------------------------------------


# Committed rows, as in production: a partition with the test transaction's pending row checks cannot be dropped.
@pytest.mark.django_db(transaction=True)
def test_cleanup_reports_the_exact_rows_and_patients_of_the_partitions_it_drops() -> None:
    now = datetime(2025, 11, 20, 12, 0, tzinfo=UTC)
    with time_machine.travel(now, tick=False):
        patients = [Patient.objects.create(time_zone="UTC") for _ in range(3)]
        cutoff = retention_cutoff(now)
        old_week = cutoff - timedelta(days=30)
        with transaction.atomic():
            ensure_partitions(old_week, now)
        for index, patient in enumerate(patients):
            rows = [hr(old_week + timedelta(minutes=n)) for n in range(50 + index)]
            store(patient, rows, [cgm(old_week + timedelta(minutes=5 * n)) for n in range(7)])

        result = run_cleanup()

        assert result.partitions_dropped
        wearable = next(
            r for r in result.removals if r.table == "patient_wearable_readings" and r.reason == "retention"
        )
        glucose = next(
            r for r in result.removals if r.table == "patient_glucose_readings" and r.reason == "retention"
        )
        assert (wearable.rows, wearable.patients) == (50 + 51 + 52, 3)
        assert (glucose.rows, glucose.patients) == (21, 3)
