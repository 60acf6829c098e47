"""Push vs pull and freshness on the job health page and the connection page; silent webhooks flagged."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connections.freshness import arrivals, connection_freshness
from connections.models import (
    Connection,
    Patient,
    Provider,
    SyncEvent,
    SyncEventKind,
    SyncStatus,
    SyncTrigger,
    WebhookEvent,
    WebhookStatus,
)
from tests.conftest import FROZEN_NOW
from tests.ops_fixtures import PASSWORD

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_time")]


def connection(n: int = 1, provider: str = Provider.JUNCTION) -> Connection:
    patient = Patient.objects.create(junction_user_id=f"user-{n}-{provider}")
    return Connection.objects.create(patient=patient, provider=provider)


def delivered(conn: Connection, n: int, *, at: datetime, delay_s: float, stored: int) -> WebhookEvent:
    return WebhookEvent.objects.create(
        provider=conn.provider,
        delivery_id=f"msg-{conn.pk}-{n}",
        event_type="daily.data.heartrate.created",
        body="{}",
        status=WebhookStatus.PROCESSED,
        sent_at=at,
        received_at=at,
        processed_at=at + timedelta(seconds=delay_s),
        connection=conn,
        records_stored=stored,
    )


def pulled(conn: Connection, *, at: datetime, stored: int, trigger: str = SyncTrigger.SCHEDULE) -> SyncEvent:
    return SyncEvent.objects.create(
        connection=conn,
        patient_id=conn.patient_id,
        provider=conn.provider,
        trigger=trigger,
        status=SyncStatus.SUCCESS,
        kind=SyncEventKind.SYNC,
        started_at=at,
        finished_at=at,
        records_stored=stored,
    )


def linear_percentile(values: list[float], q: float) -> float:
    """The oracle: PostgreSQL's percentile_cont, linear interpolation between the closest ranks."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(delays=st.lists(st.floats(min_value=0.0, max_value=600.0, allow_nan=False), min_size=1, max_size=30))
def test_freshness_percentiles_match_an_independent_computation(delays: list[float]) -> None:
    WebhookEvent.objects.all().delete()
    conn = Connection.objects.filter(provider=Provider.JUNCTION).first() or connection()
    for n, delay in enumerate(delays):
        delivered(conn, n, at=FROZEN_NOW - timedelta(hours=1), delay_s=delay, stored=2)
    (row,) = arrivals(FROZEN_NOW)
    # Stored as microseconds: compared at that precision.
    assert row.freshness_p50_s == pytest.approx(linear_percentile(delays, 0.5), abs=1e-5)
    assert row.freshness_p95_s == pytest.approx(linear_percentile(delays, 0.95), abs=1e-5)
    assert row.pushed == 2 * len(delays) and row.events == len(delays)


def test_push_and_pull_shares_count_a_webhook_asked_window_fetch_once_and_old_rows_not_at_all() -> None:
    conn = connection()
    delivered(conn, 1, at=FROZEN_NOW - timedelta(hours=2), delay_s=1.0, stored=30)
    delivered(conn, 2, at=FROZEN_NOW - timedelta(days=8), delay_s=1.0, stored=1000)  # outside the 7 days
    pulled(conn, at=FROZEN_NOW - timedelta(hours=1), stored=10)
    pulled(
        conn, at=FROZEN_NOW - timedelta(hours=1), stored=500, trigger=SyncTrigger.WEBHOOK
    )  # counted in its inbox event
    (row,) = arrivals(FROZEN_NOW)
    assert (row.pushed, row.pulled) == (30, 10)
    assert row.push_share == pytest.approx(0.75)


def test_a_connection_whose_webhooks_went_silent_while_the_pull_finds_data_is_flagged() -> None:
    silent, quiet, healthy = connection(1), connection(2), connection(3)
    for conn in (silent, quiet):
        delivered(conn, 1, at=FROZEN_NOW - timedelta(days=3), delay_s=2.0, stored=5)
    pulled(silent, at=FROZEN_NOW - timedelta(hours=9), stored=40)  # the pull still finds data
    pulled(quiet, at=FROZEN_NOW - timedelta(hours=9), stored=0)  # nothing new anywhere: the patient is away
    delivered(healthy, 1, at=FROZEN_NOW - timedelta(hours=1), delay_s=2.0, stored=5)
    pulled(healthy, at=FROZEN_NOW - timedelta(hours=9), stored=40)

    (row,) = arrivals(FROZEN_NOW)
    assert row.silent_connections == [silent.pk]
    assert connection_freshness(silent.pk, FROZEN_NOW).silent
    assert not connection_freshness(quiet.pk, FROZEN_NOW).silent
    assert not connection_freshness(healthy.pk, FROZEN_NOW).silent


def test_the_job_health_page_and_the_connection_page_show_them(ops_user: User) -> None:
    conn = connection()
    delivered(conn, 1, at=FROZEN_NOW - timedelta(days=3), delay_s=2.0, stored=5)
    pulled(conn, at=FROZEN_NOW - timedelta(hours=9), stored=15)
    client = Client()
    assert client.login(username=ops_user.username, password=PASSWORD)

    page = client.get(reverse("admin:connections_jobhealth_changelist")).content.decode()
    assert "push (webhooks) vs pull" in page and "25%" in page
    detail = client.get(reverse("admin:connections_connection_change", args=[conn.pk])).content.decode()
    assert 'id="ls-freshness"' in detail and "silent" in detail
