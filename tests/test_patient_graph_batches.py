"""The patient-graph writer's batches and the service's body limit agree (issue 18.9): the writer sizes each
request by its JSON body's bytes, at most PATIENT_GRAPH_MAX_BODY_BYTES, and the service answers a larger body
with a 413 problem response naming that limit, never Django's HTML 400. Everything over real HTTP against
pytest-django's live server; request sizes are read on the server side, from what arrived."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest
from django.http import HttpResponse

from connections.api.service import GlucoseIn, IngestIn, IngestView, ReadingIn
from connections.models import Connection, Patient, Provider
from readings.models import GlucoseReading, WearableReading
from readings.writers import PatientGraphWriter
from sandbox import SandboxServer
from tests.api_helpers import error_of
from tests.direct_helpers import run_wearable_sync_job
from tests.test_patient_graph_api import KEY, forget_data, reading, snapshot

# The rows are dated March 2026: every test runs at the suite's epoch (conftest.FROZEN_NOW), inside the raw
# retention horizon the ingest API enforces.
pytestmark = pytest.mark.usefixtures("frozen_time")

INGEST = "/api/patient-graph/service/ingest"
# Django's own request-body limit (DATA_UPLOAD_MAX_MEMORY_SIZE's default): what refused the writer before.
DJANGO_LIMIT = 2_621_440
# The old writer's batch: up to this many readings plus as many glucose rows per request.
OLD_BATCH_ROWS = 10_000


@dataclass
class Ingest:
    body_bytes: int
    status: int


@pytest.fixture
def ingests(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Ingest]]:
    """Every ingest request the live server answered: the bytes its body declared (httpx sends exactly the
    Content-Length it declares) and the status."""
    seen: list[Ingest] = []
    dispatch = IngestView.dispatch

    def recording(self: IngestView, request, *args, **kwargs):  # type: ignore[no-untyped-def]
        response = dispatch(self, request, *args, **kwargs)
        seen.append(Ingest(int(request.META.get("CONTENT_LENGTH") or 0), response.status_code))
        return response

    monkeypatch.setattr(IngestView, "dispatch", recording)
    yield seen


def cgm_user_ids(sandbox: SandboxServer) -> tuple[str, ...]:
    return tuple(user.user_id for user in sandbox.junction.users if user.cgm_provider)


def post(url: str, body: bytes, key: str | None = KEY) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    return httpx.post(url, content=body, headers=headers, timeout=60)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("frozen_time")
def test_a_month_of_a_cgm_user_goes_through_the_api_in_bodies_below_the_limit(
    junction_config, clean_sandbox: SandboxServer, live_server, settings, ingests: list[Ingest]
) -> None:
    """A month's backfill is ~50,000 readings and ~8,000 glucose rows: the old writer's first request
    (10,000 readings + 8,000 glucose, ~3 MB) exceeded Django's 2.5 MiB and was refused with an HTML 400."""
    settings.JUNCTION_SYNC = junction_config.replace(patient_graph_key=KEY)
    limit = settings.PATIENT_GRAPH_MAX_BODY_BYTES
    direct_config = junction_config.replace(user_ids=cgm_user_ids(clean_sandbox)[:1], lookback_days=28)
    remote = direct_config.replace(
        patient_graph_url=f"{live_server.url}/api/patient-graph", patient_graph_key=KEY
    )

    direct = run_wearable_sync_job(direct_config)
    assert direct.ok
    expected = snapshot()
    assert len(expected["readings"]) > OLD_BATCH_ROWS and len(expected["glucose"]) > 6_500
    forget_data()

    through_api = run_wearable_sync_job(remote)

    assert through_api.ok, through_api.errors
    assert through_api.records_stored == direct.records_stored
    assert snapshot() == expected
    assert [i.status for i in ingests] == [200] * len(ingests)
    assert all(i.body_bytes <= limit for i in ingests), [i.body_bytes for i in ingests]
    # As few requests as the bytes need: every body but the last is nearly full.
    total = sum(i.body_bytes for i in ingests)
    assert len(ingests) == -(-total // limit) or len(ingests) == -(-total // limit) + 1
    assert all(i.body_bytes > limit - 2_000 for i in ingests[:-1])


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("frozen_time")
def test_a_sync_that_fails_after_some_batches_were_accepted_is_retried_harmlessly(
    junction_config,
    clean_sandbox: SandboxServer,
    live_server,
    settings,
    ingests: list[Ingest],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings.JUNCTION_SYNC = junction_config.replace(patient_graph_key=KEY)
    settings.PATIENT_GRAPH_MAX_BODY_BYTES = limit = 64 * 1024
    config = junction_config.replace(user_ids=cgm_user_ids(clean_sandbox)[:1])
    remote = config.replace(patient_graph_url=f"{live_server.url}/api/patient-graph", patient_graph_key=KEY)
    direct = run_wearable_sync_job(config)
    expected = snapshot()
    forget_data()
    # The service goes down after accepting three batches (every later request: 503, retried, then given up).
    dispatch = IngestView.dispatch
    accepted = []

    def failing_after_three(self: IngestView, request, *args, **kwargs):  # type: ignore[no-untyped-def]
        if len(accepted) >= 3:
            return HttpResponse(status=503)
        accepted.append(1)
        return dispatch(self, request, *args, **kwargs)

    monkeypatch.setattr(IngestView, "dispatch", failing_after_three)
    failed = run_wearable_sync_job(remote)

    assert not failed.ok and "503" in failed.errors[0]
    partial = WearableReading.objects.count() + GlucoseReading.objects.count()
    assert 0 < partial < direct.records_stored
    assert Connection.objects.get().last_sync_at is None
    monkeypatch.setattr(IngestView, "dispatch", dispatch)
    ingests.clear()

    retried = run_wearable_sync_job(remote)

    assert retried.ok, retried.errors
    assert snapshot() == expected
    assert retried.records_stored == direct.records_stored - partial
    assert len(ingests) > 3 and all(i.body_bytes <= limit and i.status == 200 for i in ingests)


@pytest.mark.django_db(transaction=True)
def test_a_body_over_the_limit_gets_a_413_problem_response_naming_the_limit(
    live_server, settings, junction_config
) -> None:
    settings.JUNCTION_SYNC = junction_config.replace(patient_graph_key=KEY)
    settings.PATIENT_GRAPH_MAX_BODY_BYTES = limit = 64 * 1024
    Patient.objects.create(junction_user_id="jx-1", time_zone="UTC")
    url = f"{live_server.url}{INGEST}"
    body = orjson.dumps({"junction_user_id": "jx-1", "readings": [reading(m) for m in range(60)]})

    # JSON allows trailing whitespace: the same rows at exactly the limit, and one byte over it.
    at_limit = post(url, body.ljust(limit))
    over = post(url, body.ljust(limit + 1))

    assert at_limit.status_code == 200 and at_limit.json()["readings_written"] == 60
    assert over.status_code == 413
    assert over.headers["content-type"] == "application/problem+json"
    error = error_of(over)
    assert error["code"] == "body_too_large"
    assert error["max_body_bytes"] == limit
    assert str(limit) in error["detail"] and "PATIENT_GRAPH_MAX_BODY_BYTES" in error["detail"]
    # A caller without the key learns nothing about the limit.
    assert post(url, body.ljust(limit + 1), key=None).status_code == 401


@pytest.mark.django_db(transaction=True)
def test_the_ingest_route_takes_bodies_up_to_its_own_limit_not_djangos(
    live_server, settings, junction_config
) -> None:
    settings.JUNCTION_SYNC = junction_config.replace(patient_graph_key=KEY)
    settings.PATIENT_GRAPH_MAX_BODY_BYTES = 4 * 1024 * 1024
    Patient.objects.create(junction_user_id="jx-1", time_zone="UTC")
    body = orjson.dumps({"junction_user_id": "jx-1", "readings": [reading(m) for m in range(60)]})

    response = post(f"{live_server.url}{INGEST}", body.ljust(DJANGO_LIMIT + 100_000))

    assert response.status_code == 200, response.text[:200]
    assert response.json()["readings_written"] == 60


@pytest.mark.django_db(transaction=True)
def test_the_writer_adopts_the_smaller_limit_a_413_names(
    live_server, settings, junction_config, ingests: list[Ingest]
) -> None:
    """A web service configured with a smaller limit than the worker: the writer splits again, to its limit."""
    settings.JUNCTION_SYNC = junction_config.replace(patient_graph_key=KEY)
    settings.PATIENT_GRAPH_MAX_BODY_BYTES = server_limit = 64 * 1024
    patient = Patient.objects.create(junction_user_id="jx-1", time_zone="UTC")
    connection = Connection.objects.create(patient=patient, provider=Provider.JUNCTION)
    rows = [
        (
            "heart_rate",
            "oura",
            "ring",
            f"2026-03-{1 + n // 1440:02d} {n // 60 % 24:02d}:{n % 60:02d}:00+00:00",
        )
        for n in range(3_000)
    ]
    readings = [(*row, None, 60.0 + n % 40, "bpm") for n, row in enumerate(rows)]
    writer = PatientGraphWriter(f"{live_server.url}/api/patient-graph", KEY, max_body_bytes=1024 * 1024)

    written = writer.store(connection, readings, [])

    assert written == 3_000 and WearableReading.objects.count() == 3_000
    assert writer.max_body_bytes == server_limit
    assert ingests[0].status == 413 and ingests[0].body_bytes > server_limit
    assert all(i.status == 200 and i.body_bytes <= server_limit for i in ingests[1:])


@pytest.mark.django_db(transaction=True)
def test_the_largest_valid_rows_are_packed_below_the_smallest_limit_allowed(
    live_server, settings, junction_config, ingests: list[Ingest]
) -> None:
    """Why the writer never meets a row it cannot send: with every text field at the service's maximum length
    in the character JSON spells longest (6 bytes: \\u0001) and the longest floats, a row is about 1.2 KB,
    against a minimum PATIENT_GRAPH_MAX_BODY_BYTES of 64 KiB; such rows still go in bodies within the limit."""
    settings.JUNCTION_SYNC = junction_config.replace(patient_graph_key=KEY)
    settings.PATIENT_GRAPH_MAX_BODY_BYTES = limit = 64 * 1024

    def longest(serializer: type, name: str) -> str:
        return "\x01" * serializer().fields[name].max_length

    patient = Patient.objects.create(junction_user_id=longest(IngestIn, "junction_user_id"), time_zone="UTC")
    connection = Connection.objects.create(patient=patient, provider=Provider.JUNCTION)
    moments = [f"2026-03-09 08:{n:02d}:00.123456+00:00" for n in range(60)]
    # As long as a float's JSON gets (24 characters), yet small enough for the daily statistics: values near
    # 1e300 overflow their SQL (a 500 reported to issue 18.10, not this test's subject).
    big = -1.2345678901234567e100
    readings = [
        (
            *(longest(ReadingIn, name) for name in ("metric", "source", "source_type")),
            moment,
            moment,
            big,
            longest(ReadingIn, "unit"),
        )
        for moment in moments
    ]
    glucose = [
        (
            longest(GlucoseIn, "source"),
            moment,
            big,
            big,
            longest(GlucoseIn, "original_unit"),
            longest(GlucoseIn, "trend"),
            big,
            longest(GlucoseIn, "device"),
        )
        for moment in moments
    ]
    writer = PatientGraphWriter(f"{live_server.url}/api/patient-graph", KEY)

    assert writer.store(connection, readings, glucose) == 120  # type: ignore[arg-type]

    assert len(ingests) >= 2 and all(i.status == 200 and i.body_bytes <= limit for i in ingests)
    assert sum(i.body_bytes for i in ingests) / 120 < 1_200


def test_a_limit_below_the_minimum_stops_start_up_naming_the_variable() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_SETTINGS")}
    proc = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=Path(__file__).resolve().parent.parent,
        env={**env, "DEBUG": "true", "PATIENT_GRAPH_MAX_BODY_BYTES": "1000"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "PATIENT_GRAPH_MAX_BODY_BYTES=1000 is below the minimum of 65536" in proc.stderr
