"""The consumer read API: scoped to the caller, keyset-paginated, and a 400 that says why for bad input."""

from __future__ import annotations

from datetime import timedelta

import pytest

from connections.models import Connection, Patient, Provider
from readings.models import DailyStat, GlucoseReading, WearableReading
from sandbox import SandboxServer
from sandbox.clerk import ClerkSandbox
from tests.api_helpers import client_for, error_of, field_errors_of, make_patient
from tests.direct_helpers import sync

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_time")]

BASE = "/api/patient-graph/wearables"


@pytest.fixture
def synced(clean_sandbox: SandboxServer, clerk: ClerkSandbox, api_config) -> tuple[Patient, Patient]:
    """Alice (with a CGM) and Bob, both synced over the sandbox's last two days."""
    users = clean_sandbox.junction.users
    cgm = next(i for i, u in enumerate(users) if u.cgm_provider)
    no_cgm = next(i for i, u in enumerate(users) if not u.cgm_provider)
    alice = make_patient(clean_sandbox, cgm, "user_alice")
    bob = make_patient(clean_sandbox, no_cgm, "user_bob")
    for patient in (alice, bob):
        connection = Connection.objects.select_related("patient").get(patient=patient)
        assert sync(connection, api_config).status == "success"
    return alice, bob


def page_through(client, url: str, params: dict) -> list[dict]:
    rows: list[dict] = []
    pages = 0
    response = client.get(url, params)
    while True:
        assert response.status_code == 200, response.json()
        body = response.json()
        rows.extend(body["results"])
        pages += 1
        if body["next_cursor"] is None:
            assert body["next"] is None
            return rows
        assert pages < 1000
        response = client.get(url, {**params, "cursor": body["next_cursor"]})


def test_daily_stats_page_through_exactly_the_patients_rows(synced, clerk: ClerkSandbox) -> None:
    alice, bob = synced
    client = client_for(clerk.mint("user_alice"))

    rows = page_through(
        client, f"{BASE}/daily-stats", {"start": "2026-03-01", "end": "2026-03-10", "page_size": 7}
    )

    expected = DailyStat.objects.filter(patient=alice).order_by("metric", "day")
    assert [(r["metric"], r["day"]) for r in rows] == [(s.metric, s.day.isoformat()) for s in expected]
    assert len(rows) > 7  # it did page
    heart = client.get(f"{BASE}/daily-stats", {"metric": "heart_rate", "start": "2026-03-01"}).json()[
        "results"
    ]
    assert heart and {r["metric"] for r in heart} == {"heart_rate"}
    stat = DailyStat.objects.get(patient=alice, metric="heart_rate", day=heart[0]["day"])
    assert heart[0]["avg"] == pytest.approx(stat.avg) and heart[0]["count"] == stat.count


def test_readings_page_through_every_sample_once(synced, clerk: ClerkSandbox) -> None:
    alice, _ = synced
    client = client_for(clerk.mint("user_alice"))

    rows = page_through(
        client,
        f"{BASE}/readings",
        {"metric": "heart_rate", "start": "2026-03-07", "end": "2026-03-11", "page_size": 997},
    )

    stored = WearableReading.objects.filter(patient=alice, metric="heart_rate").count()
    assert len(rows) == stored > 997
    keys = [(r["source"], r["source_type"], r["measured_at"]) for r in rows]
    assert len(set(keys)) == len(keys) and keys == sorted(keys)


def test_glucose_readings_of_a_cgm_wearer(synced, clerk: ClerkSandbox) -> None:
    alice, _ = synced
    rows = page_through(
        client_for(clerk.mint("user_alice")),
        f"{BASE}/glucose",
        {"start": "2026-03-01", "end": "2026-03-11", "page_size": 5000},
    )
    assert len(rows) == GlucoseReading.objects.filter(patient=alice).count() > 0
    assert all(20 <= r["value_mg_dl"] <= 600 for r in rows)


def test_an_instant_range_with_offsets_selects_by_utc_instant(synced, clerk: ClerkSandbox) -> None:
    alice, _ = synced
    params = {"metric": "heart_rate", "start": "2026-03-09T00:00:00+00:00", "end": "2026-03-09T01:00:00Z"}
    rows = page_through(client_for(clerk.mint("user_alice")), f"{BASE}/readings", params)
    assert (
        0
        < len(rows)
        == WearableReading.objects.filter(
            patient=alice,
            metric="heart_rate",
            measured_at__gte="2026-03-09T00:00:00+00:00",
            measured_at__lt="2026-03-09T01:00:00+00:00",
        ).count()
    )


def test_nobody_reads_another_patients_data(synced, clerk: ClerkSandbox) -> None:
    alice, bob = synced
    client = client_for(clerk.mint("user_bob"))
    params = {"start": "2026-03-01", "page_size": 5000}

    glucose = page_through(client, f"{BASE}/glucose", params)
    stats = page_through(client, f"{BASE}/daily-stats", {"start": "2026-03-01", "page_size": 1000})
    connections = client.get(f"{BASE}/connections").json()["results"]

    assert glucose == []  # Bob has no CGM; Alice's glucose is not his
    assert len(stats) == DailyStat.objects.filter(patient=bob).count()
    assert [c["id"] for c in connections] == list(
        Connection.objects.filter(patient=bob).values_list("pk", flat=True)
    )


def test_connections_show_status_last_sync_and_freshness(synced, clerk: ClerkSandbox, frozen_time) -> None:
    alice, _ = synced
    Connection.objects.create(patient=alice, provider=Provider.WHOOP, failure_streak=2)

    results = client_for(clerk.mint("user_alice")).get(f"{BASE}/connections").json()["results"]

    junction, whoop = results
    assert junction["provider"] == "junction" and junction["status"] == "active" and junction["healthy"]
    assert junction["data_freshness"]["hours_since_last_sync"] == 0.0
    assert (
        junction["data_freshness"]["latest_data_day"]
        == DailyStat.objects.filter(patient=alice).latest("day").day.isoformat()
    )
    assert whoop["last_sync_at"] is None and whoop["healthy"] is False


@pytest.mark.parametrize(
    ("path", "params", "param", "why"),
    [
        ("daily-stats", {"start": "2026-13-01"}, "start", "must be a date as YYYY-MM-DD"),
        ("daily-stats", {"end": "yesterday"}, "end", "must be a date as YYYY-MM-DD"),
        ("daily-stats", {"start": "2026-03-10", "end": "2026-03-01"}, "start", "must be before end"),
        (
            "daily-stats",
            {"start": "2020-01-01", "end": "2026-03-01"},
            "end",
            "the range is limited to 366 days",
        ),
        ("daily-stats", {"metric": "happiness"}, "metric", "is not a known metric"),
        ("daily-stats", {"page_size": "0"}, "page_size", "must be from 1 to 1000"),
        ("daily-stats", {"page_size": "lots"}, "page_size", "must be a whole number"),
        ("daily-stats", {"cursor": "not-a-cursor"}, "cursor", "is not a cursor this API returned"),
        ("readings", {}, "metric", "is required"),
        ("readings", {"metric": "heart_rate", "start": "2026-03-01T00:00:00"}, "start", "needs a UTC offset"),
        ("readings", {"metric": "heart_rate", "page_size": "5001"}, "page_size", "must be from 1 to 5000"),
        ("glucose", {"end": "03/01/2026"}, "end", "must be a date (YYYY-MM-DD) or an ISO-8601"),
    ],
)
def test_bad_parameters_are_400_saying_which_and_why(
    synced, clerk: ClerkSandbox, path: str, params: dict, param: str, why: str
) -> None:
    response = client_for(clerk.mint("user_alice")).get(f"{BASE}/{path}", params)

    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_parameter"
    assert error["detail"].startswith(f"{param}: ") and why in error["detail"]
    assert param in field_errors_of(error)


def test_a_cursor_of_another_endpoint_is_400_not_500(synced, clerk: ClerkSandbox) -> None:
    client = client_for(clerk.mint("user_alice"))
    stats = client.get(f"{BASE}/daily-stats", {"start": "2026-03-01", "page_size": 1}).json()
    response = client.get(f"{BASE}/glucose", {"cursor": stats["next_cursor"]})
    assert response.status_code == 400


def test_default_windows_end_now(synced, clerk: ClerkSandbox, frozen_time) -> None:
    client = client_for(clerk.mint("user_alice"))
    rows = client.get(f"{BASE}/readings", {"metric": "heart_rate", "page_size": 5000}).json()["results"]
    assert rows and all(r["measured_at"] >= (frozen_time - timedelta(days=7)).isoformat()[:10] for r in rows)
