"""One truth per measurement (issue 13): each finding's regression test."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import transaction

from connections.models import Patient
from connections.providers.libre.client import parse_graph
from readings.models import GlucoseReading
from readings.store import store_batch

pytestmark = pytest.mark.django_db


def at(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(sep=" ")


def store(patient: Patient, readings: list, glucose: list | None = None, connection_id: int | None = None):  # type: ignore[no-untyped-def]
    with transaction.atomic():
        return store_batch(
            patient.pk, patient.time_zone, readings, glucose or [], connection_id=connection_id
        )


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
