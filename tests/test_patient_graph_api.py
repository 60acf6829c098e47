"""The patient-graph service API: key-authenticated bulk ingest, idempotent like the direct path; and the sync
writing through it (PATIENT_GRAPH_API_URL) ends with exactly the tables the direct path writes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from connections.models import Connection, Patient, Provider, SyncFingerprint
from readings import writers
from readings.models import DailyStat, GlucoseReading, WearableReading
from sandbox import SandboxServer
from sandbox.clerk import ClerkSandbox
from tests.api_helpers import client_for, error_of, field_errors_of
from tests.direct_helpers import connect, run_wearable_sync_job, sync

# The rows are dated March 2026: every test runs at the suite's epoch (conftest.FROZEN_NOW), inside the raw
# retention horizon the ingest API enforces.
pytestmark = pytest.mark.usefixtures("frozen_time")

INGEST = "/api/patient-graph/service/ingest"
DAILY = "/api/patient-graph/service/daily-stats"
KEY = "pg_test_key_0123456789"


@pytest.fixture
def service_key(settings, junction_config):
    settings.JUNCTION_SYNC = junction_config.replace(patient_graph_key=KEY)
    return KEY


def reading(minute: int, value: float = 61.0) -> dict:
    return {
        "metric": "heart_rate",
        "source": "oura",
        "source_type": "ring",
        "measured_at": f"2026-03-09T08:{minute:02d}:00+00:00",
        "end_at": None,
        "value": value,
        "unit": "bpm",
    }


def glucose(minute: int) -> dict:
    return {
        "source": "freestyle_libre",
        "measured_at": f"2026-03-09T08:{minute:02d}:00Z",
        "value_mg_dl": 104.0,
        "original_value": 5.77,
        "original_unit": "mmol/L",
        "trend": "",
        "trend_rate": None,
        "device": "automatic",
    }


@pytest.mark.django_db
def test_the_service_api_needs_the_key(
    service_key: str, clean_sandbox: SandboxServer, clerk: ClerkSandbox
) -> None:
    patient = Patient.objects.create(clerk_user_id="user_alice")
    body = {"patient_id": patient.pk, "readings": [reading(0)]}

    assert client_for(None).post(INGEST, body, format="json").status_code == 401
    assert client_for("wrong").post(INGEST, body, format="json").status_code == 401
    # A patient's Clerk session is not the service key.
    assert client_for(clerk.mint("user_alice")).post(INGEST, body, format="json").status_code == 401
    assert not WearableReading.objects.exists()


@pytest.mark.django_db
def test_no_configured_key_closes_the_service_api(settings, junction_config) -> None:
    settings.JUNCTION_SYNC = junction_config.replace(patient_graph_key="")
    patient = Patient.objects.create()
    response = client_for("").post(INGEST, {"patient_id": patient.pk}, format="json")
    assert response.status_code == 401


@pytest.mark.django_db
def test_ingest_is_idempotent_and_keeps_daily_stats(service_key: str) -> None:
    patient = Patient.objects.create(junction_user_id="jx-1", time_zone="Europe/Berlin")
    Connection.objects.create(patient=patient, provider=Provider.JUNCTION)
    client = client_for(service_key)
    body = {
        "junction_user_id": "jx-1",
        "provider": "junction",
        "readings": [reading(m, 60 + m) for m in range(10)],
        "glucose": [glucose(m) for m in range(0, 10, 5)],
    }

    first = client.post(INGEST, body, format="json")
    again = client.post(INGEST, body, format="json")

    assert first.status_code == 200 and first.json() == {
        "readings_written": 10,
        "glucose_written": 2,
        "days_refreshed": 2,
    }
    assert again.json() == {"readings_written": 0, "glucose_written": 0, "days_refreshed": 0}
    assert WearableReading.objects.filter(patient=patient).count() == 10
    stat = DailyStat.objects.get(patient=patient, metric="heart_rate")
    assert (stat.count, stat.min, stat.max) == (10, 60.0, 69.0)
    assert set(WearableReading.objects.values_list("connection_id", flat=True)) == {
        Connection.objects.get(patient=patient).pk
    }


@pytest.mark.django_db
def test_ingest_finds_a_patient_without_a_junction_id_by_its_clerk_id(service_key: str) -> None:
    patient = Patient.objects.create(clerk_user_id="user_cgm_only", time_zone="UTC")
    Patient.objects.create(clerk_user_id="user_someone_else", time_zone="UTC")
    client = client_for(service_key)

    response = client.post(INGEST, {"clerk_user_id": "user_cgm_only", "glucose": [glucose(0)]}, format="json")

    assert response.status_code == 200 and response.json()["glucose_written"] == 1
    assert list(GlucoseReading.objects.values_list("patient_id", flat=True)) == [patient.pk]
    unknown = client.post(INGEST, {"clerk_user_id": "user_nobody", "glucose": [glucose(0)]}, format="json")
    assert unknown.status_code == 404


@pytest.mark.django_db
def test_a_batch_with_an_invalid_row_is_refused_whole_naming_the_row_not_the_value(service_key: str) -> None:
    patient = Patient.objects.create()
    rows = [reading(0), {**reading(1), "value": "NaN"}, {**reading(2), "measured_at": "2026-03-09T08:02:00"}]

    response = client_for(service_key).post(
        INGEST, {"patient_id": patient.pk, "readings": rows}, format="json"
    )

    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_rows"
    assert field_errors_of(error) == {
        "readings[1].value": ["must be a finite number"],
        "readings[2].measured_at": ["must be an ISO-8601 datetime with a UTC offset"],
    }
    assert not WearableReading.objects.exists()


@pytest.mark.django_db
def test_unknown_patient_is_404_and_a_bad_body_is_400(service_key: str) -> None:
    client = client_for(service_key)
    assert client.post(INGEST, {"patient_id": 999999}, format="json").status_code == 404
    assert client.post(INGEST, {"junction_user_id": "nobody"}, format="json").status_code == 404
    assert client.post(INGEST, [1, 2], format="json").status_code == 400
    assert client.post(INGEST, {"patient_id": "1"}, format="json").status_code == 400
    patient = Patient.objects.create()
    assert client.post(INGEST, {"patient_id": patient.pk, "readings": {}}, format="json").status_code == 400


@pytest.mark.django_db
def test_daily_statistics_cannot_be_written_as_sent(service_key: str) -> None:
    """readings computes them from ingested rows (test_ingest_is_idempotent_and_keeps_daily_stats); the
    route that upserted them as sent is gone."""
    patient = Patient.objects.create()
    stat = {
        "metric": "steps",
        "day": "2026-03-09",
        "avg": 5.0,
        "min": 1.0,
        "max": 9.0,
        "sum": 50.0,
        "count": 10,
    }

    response = client_for(service_key).post(DAILY, {"patient_id": patient.pk, "stats": [stat]}, format="json")

    assert response.status_code == 404
    assert not DailyStat.objects.exists()


def snapshot() -> dict[str, list[tuple]]:
    """Every stored row, without ids and write timestamps (those differ between any two runs)."""
    return {
        "readings": sorted(
            WearableReading.objects.values_list(
                "patient__junction_user_id",
                "metric",
                "source",
                "source_type",
                "measured_at",
                "end_at",
                "value",
                "unit",
                "connection__provider",
            )
        ),
        "glucose": sorted(
            GlucoseReading.objects.values_list(
                "patient__junction_user_id",
                "source",
                "measured_at",
                "value_mg_dl",
                "original_value",
                "original_unit",
                "trend",
                "trend_rate",
                "device",
            )
        ),
        # avg and sum are float sums whose last bit depends on the order rows are scanned in (insertion
        # order differs between paths); compare them to 9 decimals, everything else exactly.
        "daily": sorted(
            (*key, round(avg, 9), low, high, round(total, 9), count)
            for *key, avg, low, high, total, count in DailyStat.objects.values_list(
                "patient__junction_user_id", "metric", "day", "avg", "min", "max", "sum", "count"
            )
        ),
    }


def forget_data() -> None:
    WearableReading.objects.all().delete()
    GlucoseReading.objects.all().delete()
    DailyStat.objects.all().delete()
    SyncFingerprint.objects.all().delete()
    Connection.objects.update(last_sync_at=None)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("frozen_time")
def test_the_sync_writing_through_the_api_stores_exactly_what_the_direct_path_stores(
    junction_config, clean_sandbox: SandboxServer, live_server, settings
) -> None:
    settings.JUNCTION_SYNC = junction_config.replace(patient_graph_key=KEY)
    remote = junction_config.replace(
        patient_graph_url=f"{live_server.url}/api/patient-graph", patient_graph_key=KEY
    )

    direct = run_wearable_sync_job(junction_config)
    assert direct.ok and direct.records_stored > 0
    expected = snapshot()
    forget_data()

    through_api = run_wearable_sync_job(remote)

    assert through_api.ok, through_api.errors
    assert through_api.records_stored == direct.records_stored
    assert snapshot() == expected
    assert all(c.last_sync_at is not None for c in Connection.objects.all())
    # A replay through the API writes nothing new.
    forced = run_wearable_sync_job(remote, force=True)
    assert forced.ok and forced.records_stored == 0 and snapshot() == expected


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("frozen_time")
def test_when_the_api_fails_the_cursor_does_not_move(junction_config, live_server, settings) -> None:
    settings.JUNCTION_SYNC = junction_config.replace(patient_graph_key=KEY)
    wrong_key = junction_config.replace(
        patient_graph_url=f"{live_server.url}/api/patient-graph", patient_graph_key="not-the-key"
    )

    result = run_wearable_sync_job(wrong_key.replace(user_ids=wrong_key.user_ids[:1]))

    assert not result.ok and "401" in result.errors[0]
    assert not WearableReading.objects.exists() and not SyncFingerprint.objects.exists()
    assert Connection.objects.get().last_sync_at is None


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("frozen_time")
def test_direct_provider_syncs_write_through_the_api_exactly_what_the_database_path_stores(
    direct_config, clean_sandbox: SandboxServer, live_server, settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    connections = [
        connect(clean_sandbox, direct_config, Provider.WHOOP, 1),
        connect(clean_sandbox, direct_config, Provider.DEXCOM, 2),
        connect(clean_sandbox, direct_config, Provider.LIBRE, 3),
    ]
    for i, connection in enumerate(connections):
        # Found in the patient graph by Clerk id: these patients have no Junction user id.
        Patient.objects.filter(pk=connection.patient_id).update(clerk_user_id=f"user_direct_{i}")
        assert sync(connection, direct_config).status == "success"
    expected = snapshot()
    assert expected["readings"] and expected["glucose"]
    forget_data()
    settings.JUNCTION_SYNC = settings.JUNCTION_SYNC.replace(
        patient_graph_url=f"{live_server.url}/api/patient-graph", patient_graph_key=KEY
    )
    # The worker must not write rows itself any more (the API's own store_batch is another reference).
    monkeypatch.setattr(writers, "store_batch", lambda *a, **k: pytest.fail("the worker wrote to the DB"))

    for connection in connections:
        summary = sync(connection, direct_config)
        assert summary.status == "success", summary.errors

    assert snapshot() == expected
    assert all(c.last_sync_at is not None for c in Connection.objects.all())


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("frozen_time")
def test_a_patient_without_a_shared_id_is_never_written_to_the_graph_by_its_local_id(
    direct_config, clean_sandbox: SandboxServer, live_server, settings
) -> None:
    connection = connect(clean_sandbox, direct_config, Provider.DEXCOM, 2)
    settings.JUNCTION_SYNC = settings.JUNCTION_SYNC.replace(
        patient_graph_url=f"{live_server.url}/api/patient-graph", patient_graph_key=KEY
    )

    summary = sync(connection, direct_config)

    assert summary.status != "success" and "no Junction or Clerk user id" in summary.errors[0]
    connection.refresh_from_db()
    assert connection.last_sync_at is None and not GlucoseReading.objects.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("frozen_time")
def test_a_direct_sync_whose_api_write_fails_leaves_its_cursor(
    direct_config, clean_sandbox: SandboxServer, live_server, settings
) -> None:
    connection = connect(clean_sandbox, direct_config, Provider.DEXCOM, 2)
    Patient.objects.filter(pk=connection.patient_id).update(clerk_user_id="user_direct")
    # An API the worker cannot write to (here: the wrong address, answered 404).
    settings.JUNCTION_SYNC = settings.JUNCTION_SYNC.replace(
        patient_graph_url=f"{live_server.url}/api/nowhere", patient_graph_key=KEY
    )

    summary = sync(connection, direct_config)

    assert summary.status != "success" and "404" in summary.errors[0]
    connection.refresh_from_db()
    assert connection.last_sync_at is None and not GlucoseReading.objects.exists()


@pytest.mark.django_db
def test_ingest_refuses_readings_from_before_2000_or_ahead_of_now_and_extreme_years_never_fail(
    service_key: str,
) -> None:
    patient = Patient.objects.create()
    rows = [
        {**reading(0), "measured_at": "1970-01-01T00:00:00+00:00"},
        {**reading(1), "measured_at": "9999-12-31T23:59:00-05:00"},
        {**reading(2), "measured_at": "0001-01-01T00:00:00+05:00"},
        {**reading(3), "measured_at": (timezone.now() + timedelta(days=2)).isoformat()},
    ]

    response = client_for(service_key).post(
        INGEST, {"patient_id": patient.pk, "readings": rows}, format="json"
    )

    assert response.status_code == 400
    assert field_errors_of(error_of(response)) == {
        "readings[0].measured_at": ["is before 2000"],
        "readings[1].measured_at": ["is out of range"],
        "readings[2].measured_at": ["is out of range"],
        "readings[3].measured_at": ["is in the future"],
    }
    assert not WearableReading.objects.exists()
