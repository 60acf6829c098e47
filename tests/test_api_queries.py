"""The API's hot reads are ORM queries run through Django's cursor: they show in `connection.queries` and reach
execute wrappers (the hooks SQL logging and Sentry's query spans use), and they read the indexes they are
written for."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from connections.models import Patient, SyncRequest
from readings.models import DailyStat
from sandbox.clerk import ClerkSandbox
from tests.api_helpers import client_for

pytestmark = pytest.mark.django_db

DAILY_STATS = "/api/patient-graph/wearables/daily-stats"
SYNC = "/api/patient-graph/wearables/sync"


@contextmanager
def wrapped_queries() -> Iterator[list[str]]:
    """Every statement run through Django's cursor, as an execute wrapper (an instrumentation's hook) sees it."""
    seen: list[str] = []

    def record(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        seen.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        yield seen


def reading(table: str, statements: list[str]) -> list[str]:
    return [sql for sql in statements if f'FROM "{table}"' in sql]


@pytest.fixture
def patient() -> Patient:
    patient = Patient.objects.create(time_zone="UTC", clerk_user_id="user_queries")
    DailyStat.objects.bulk_create(
        DailyStat(
            patient=patient,
            metric="heart_rate",
            day=date(2026, 3, d),
            avg=60,
            min=50,
            max=70,
            sum=600,
            count=10,
        )
        for d in range(1, 11)
    )
    return patient


def test_the_daily_stats_read_is_in_connection_queries(patient: Patient, clerk: ClerkSandbox) -> None:
    client = client_for(clerk.mint("user_queries"))
    params = {"metric": "heart_rate", "start": "2026-03-01", "end": "2026-03-10", "page_size": 4}

    with CaptureQueriesContext(connection) as captured, wrapped_queries() as wrapped:
        response = client.get(DAILY_STATS, params)

    assert response.status_code == 200
    assert [row["day"] for row in response.json()["results"]] == [f"2026-03-0{d}" for d in range(1, 5)]
    logged = [query["sql"] for query in captured.captured_queries]
    assert len(reading("patient_wearable_daily_stats", logged)) == 1, logged
    assert len(reading("patient_wearable_daily_stats", wrapped)) == 1, wrapped
    # The token's patient and the page: nothing else runs behind the view's back.
    assert len(logged) == 2, logged


def test_the_manual_sync_lookup_is_in_connection_queries(patient: Patient, clerk: ClerkSandbox) -> None:
    queued = SyncRequest.objects.create(patient=patient, source="oura")
    client = client_for(clerk.mint("user_queries"))

    with CaptureQueriesContext(connection) as captured, wrapped_queries() as wrapped:
        response = client.post(SYNC, {"source": "oura"}, format="json")

    assert response.status_code == 202 and response.json()["id"] == queued.pk
    logged = [query["sql"] for query in captured.captured_queries]
    assert len(reading("wearable_sync_requests", logged)) == 1, logged
    assert len(reading("wearable_sync_requests", wrapped)) == 1, wrapped
    # The token's patient and the pending sync: no source resolution, lock or write.
    assert len(logged) == 2, logged


def test_every_page_size_pages_in_key_order(patient: Patient, clerk: ClerkSandbox) -> None:
    """The page size is the query's LIMIT (one more row tells whether a next page exists)."""
    client = client_for(clerk.mint("user_queries"))
    for page_size in (1, 3, 4, 9, 10, 11):
        days: list[str] = []
        params: dict[str, Any] = {"start": "2026-03-01", "end": "2026-03-10", "page_size": page_size}
        while True:
            body = client.get(DAILY_STATS, params).json()
            assert len(body["results"]) <= page_size
            days += [row["day"] for row in body["results"]]
            if body["next_cursor"] is None:
                break
            params["cursor"] = body["next_cursor"]
        assert days == [date(2026, 3, d).isoformat() for d in range(1, 11)], page_size


def test_the_manual_sync_lookup_reads_the_partial_unique_index(patient: Patient) -> None:
    """The statuses reach PostgreSQL as constants (Django binds on the client), so the planner can match them
    against the predicate of the index that allows one active sync per source."""
    from connections import actions

    SyncRequest.objects.create(patient=patient, source="oura")
    with CaptureQueriesContext(connection) as captured:
        assert actions._active_sync_request(patient.pk, "oura") is not None
        assert actions._active_sync_request(patient.pk, "whoop") is None
    [sql, _] = [query["sql"] for query in captured.captured_queries]
    with connection.cursor() as db:
        db.execute("SET LOCAL enable_seqscan = off")  # a table this small would be read whole
        db.execute(f"EXPLAIN {sql}")
        plan = "\n".join(row[0] for row in db.fetchall())
    assert "sync_request_one_active_per_source" in plan, plan
