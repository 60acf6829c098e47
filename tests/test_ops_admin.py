"""The ops admin: permissions on buttons, URLs and bulk actions; CSRF and GET refused; audit rows; query counts."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection as db
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from connections.config import JunctionSyncConfig
from connections.models import (
    Connection,
    ConnectionStatus,
    Patient,
    Provider,
    SyncEvent,
    SyncEventKind,
    SyncStatus,
    SyncTrigger,
)
from tests.direct_helpers import run_wearable_sync_job
from tests.ops_fixtures import PASSWORD, make_connection

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_time")]


def client_for(user: User, **kwargs: Any) -> Client:
    client = Client(**kwargs)
    assert client.login(username=user.username, password=PASSWORD)
    return client


def op_url(connection: Connection, operation: str) -> str:
    return reverse(f"admin:connections_connection_{operation}", args=[connection.pk])


@pytest.fixture
def synced_settings(junction_config: JunctionSyncConfig) -> Iterator[JunctionSyncConfig]:
    config = junction_config.replace(user_ids=junction_config.user_ids[:1])
    with override_settings(JUNCTION_SYNC=config):
        yield config


@pytest.fixture
def failing(frozen_time: datetime, synced_settings: JunctionSyncConfig) -> Connection:
    """A Junction connection of a real sandbox user whose last run failed."""
    return make_connection(
        1,
        junction_user_id=synced_settings.user_ids[0],
        last_sync_at=frozen_time - timedelta(days=2),
        failure_streak=3,
        last_error="attempt 3: junction: GET /v2/summary/sleep/{id} answered 503",
    )


# --- the buttons ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("operation", ["resync", "deactivate"])
def test_support_cannot_resync_or_deactivate(operation: str, support_user: User, failing: Connection) -> None:
    response = client_for(support_user).post(op_url(failing, operation), {"confirm": "yes"})

    assert response.status_code == 403
    assert not SyncEvent.objects.exists()
    failing.refresh_from_db()
    assert failing.status == ConnectionStatus.ACTIVE


@pytest.mark.parametrize("operation", ["resync", "deactivate", "reactivate"])
def test_get_is_refused(operation: str, ops_user: User, failing: Connection) -> None:
    response = client_for(ops_user).get(op_url(failing, operation))
    assert response.status_code == 405
    assert not SyncEvent.objects.exists()


@pytest.mark.parametrize("operation", ["resync", "deactivate"])
def test_a_post_without_csrf_token_is_refused(operation: str, ops_user: User, failing: Connection) -> None:
    client = client_for(ops_user, enforce_csrf_checks=True)
    response = client.post(op_url(failing, operation), {"confirm": "yes"})
    assert response.status_code == 403
    assert not SyncEvent.objects.exists()


def test_an_anonymous_post_is_sent_to_the_login_page(failing: Connection) -> None:
    response = Client().post(op_url(failing, "resync"), {"confirm": "yes"})
    assert response.status_code == 302 and "/login/" in response["Location"]
    assert not SyncEvent.objects.exists()


def test_the_first_post_only_asks_for_confirmation(ops_user: User, failing: Connection) -> None:
    response = client_for(ops_user).post(op_url(failing, "resync"))

    assert response.status_code == 200
    assert b"Yes, force resync" in response.content
    assert not SyncEvent.objects.exists()


def test_ops_force_resync_records_the_request_and_syncs_as_that_user(
    ops_user: User, failing: Connection, django_capture_on_commit_callbacks: Any, frozen_time: datetime
) -> None:
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = client_for(ops_user).post(op_url(failing, "resync"), {"confirm": "yes"})

    assert response.status_code == 302
    assert response["Location"] == reverse("admin:connections_connection_change", args=[failing.pk])
    assert len(callbacks) == 1
    request = SyncEvent.objects.get(kind=SyncEventKind.RESYNC_REQUESTED)
    assert (request.connection_id, request.actor, request.trigger) == (
        failing.pk,
        "olivia-ops",
        SyncTrigger.ADMIN,
    )
    # The queued task ran (django-q2 sync mode in tests): a forced sync, audited with the same actor.
    run = SyncEvent.objects.get(kind=SyncEventKind.SYNC)
    assert (run.trigger, run.actor, run.status) == (SyncTrigger.ADMIN, "olivia-ops", SyncStatus.SUCCESS)
    assert run.records_stored > 0
    assert (request.status, request.result_event_id) == (SyncStatus.SUCCESS, run.pk)
    failing.refresh_from_db()
    assert failing.failure_streak == 0 and failing.last_sync_at == frozen_time
    assert failing.latest_reading_at is not None and failing.latest_reading_at <= frozen_time


def test_ops_deactivate_and_reactivate_are_audited(ops_user: User, failing: Connection) -> None:
    client = client_for(ops_user)

    client.post(op_url(failing, "deactivate"), {"confirm": "yes", "reason": "patient left the study"})
    failing.refresh_from_db()
    assert failing.status == ConnectionStatus.INACTIVE and failing.status_reason == "patient left the study"

    # Inactive: resync is refused, reactivate is offered.
    client.post(op_url(failing, "resync"), {"confirm": "yes"})
    assert not SyncEvent.objects.filter(kind=SyncEventKind.RESYNC_REQUESTED).exists()
    client.post(op_url(failing, "reactivate"), {"confirm": "yes"})
    failing.refresh_from_db()
    assert failing.status == ConnectionStatus.ACTIVE and failing.failure_streak == 0

    events = list(SyncEvent.objects.order_by("pk").values_list("kind", "actor", "note", "connection_id"))
    assert events == [
        (SyncEventKind.DEACTIVATED, "olivia-ops", "patient left the study", failing.pk),
        (SyncEventKind.REACTIVATED, "olivia-ops", "", failing.pk),
    ]


def test_the_change_page_shows_buttons_to_ops_only(
    ops_user: User, support_user: User, failing: Connection
) -> None:
    url = reverse("admin:connections_connection_change", args=[failing.pk])

    ops_page = client_for(ops_user).get(url).content.decode()
    support_page = client_for(support_user).get(url).content.decode()

    assert op_url(failing, "resync") in ops_page and op_url(failing, "deactivate") in ops_page
    assert op_url(failing, "reactivate") not in ops_page  # only for inactive connections
    assert "ls-health-failing" in ops_page and "ls-health-failing" in support_page
    assert op_url(failing, "resync") not in support_page and op_url(failing, "deactivate") not in support_page


# --- bulk actions ---------------------------------------------------------------------------------------------


def bulk(client: Client, action: str, connections: list[Connection], **extra: str) -> Any:
    data = {"action": action, "_selected_action": [str(c.pk) for c in connections], **extra}
    return client.post(reverse("admin:connections_connection_changelist"), data, follow=True)


def test_bulk_deactivate_confirms_then_reports_how_many_it_touched(
    ops_user: User, frozen_time: datetime
) -> None:
    active = [make_connection(i, last_sync_at=frozen_time) for i in range(3)]
    inactive = make_connection(9, status=ConnectionStatus.INACTIVE)
    client = client_for(ops_user)

    first = client.post(
        reverse("admin:connections_connection_changelist"),
        {
            "action": "deactivate_selected",
            "_selected_action": [str(c.pk) for c in [*active, inactive]],
            "index": 0,
        },
    )
    assert first.status_code == 200 and b"Yes, deactivate" in first.content
    assert Connection.objects.filter(status=ConnectionStatus.ACTIVE).count() == 3

    done = bulk(client, "deactivate_selected", active, confirm="yes", reason="study closed")

    assert "Deactivate: 3 connection(s) touched" in done.content.decode()
    assert not Connection.objects.filter(status=ConnectionStatus.ACTIVE).exists()
    assert list(SyncEvent.objects.values_list("kind", "actor", "note").distinct()) == [
        (SyncEventKind.DEACTIVATED, "olivia-ops", "study closed")
    ]
    assert SyncEvent.objects.count() == 3


def test_bulk_resync_queues_active_connections_only(
    ops_user: User, frozen_time: datetime, django_capture_on_commit_callbacks: Any
) -> None:
    active = [make_connection(i, last_sync_at=frozen_time) for i in range(2)]
    inactive = make_connection(9, status=ConnectionStatus.INACTIVE)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        done = bulk(client_for(ops_user), "force_resync_selected", [*active, inactive], confirm="yes")

    assert "Force resync: 2 connection(s) queued, 1 left as they were." in done.content.decode()
    assert len(callbacks) == 2
    assert set(SyncEvent.objects.values_list("connection_id", flat=True)) == {c.pk for c in active}


def test_support_has_no_bulk_actions(support_user: User, frozen_time: datetime) -> None:
    connections = [make_connection(i, last_sync_at=frozen_time) for i in range(2)]
    client = client_for(support_user)

    page = client.get(reverse("admin:connections_connection_changelist")).content.decode()
    bulk(client, "deactivate_selected", connections, confirm="yes")

    assert "deactivate_selected" not in page
    assert Connection.objects.filter(status=ConnectionStatus.ACTIVE).count() == 2
    assert not SyncEvent.objects.exists()


# --- the list ------------------------------------------------------------------------------------------------


def make_mixed_connections(count: int, start: int, now: datetime) -> None:
    providers = [Provider.JUNCTION, Provider.WHOOP, Provider.DEXCOM, Provider.LIBRE]
    for i in range(start, start + count):
        make_connection(
            i,
            provider=providers[i % 4],
            status=ConnectionStatus.INACTIVE if i % 7 == 0 else ConnectionStatus.ACTIVE,
            last_sync_at=now - timedelta(hours=i % 40),
            failure_streak=i % 3,
            last_error="junction: GET /v2/summary/sleep/{id} answered 503" if i % 3 else "",
        )


@pytest.mark.parametrize("query", ["", "?health=failing", "?provider=junction&status=active"])
def test_connection_list_query_count_does_not_grow_with_the_page(
    ops_user: User, frozen_time: datetime, query: str
) -> None:
    client = client_for(ops_user)
    url = reverse("admin:connections_connection_changelist") + query
    make_mixed_connections(8, 1, frozen_time)
    client.get(url)  # warm the session and permission caches alike for both measurements
    with CaptureQueriesContext(db) as small:
        small_page = client.get(url)
    make_mixed_connections(80, 100, frozen_time)
    with CaptureQueriesContext(db) as large:
        large_page = client.get(url)

    assert small_page.status_code == large_page.status_code == 200
    assert large_page.content.count(b"ls-health ") > small_page.content.count(b"ls-health ") > 0
    assert len(large.captured_queries) == len(small.captured_queries), [
        q["sql"] for q in large.captured_queries
    ]
    # No query touches the readings tables.
    assert not any("patient_wearable_readings" in q["sql"] for q in large.captured_queries)


def test_health_filter_and_identifier_search(ops_user: User, frozen_time: datetime) -> None:
    ok = make_connection(1, last_sync_at=frozen_time - timedelta(hours=1))
    stale = make_connection(2, last_sync_at=frozen_time - timedelta(days=3))
    failing = make_connection(3, last_sync_at=frozen_time - timedelta(hours=1), failure_streak=1)
    client = client_for(ops_user)
    base = reverse("admin:connections_connection_changelist")

    def listed(query: str) -> set[int]:
        return set(client.get(base + query).context["cl"].result_list.values_list("pk", flat=True))

    assert listed("?health=failing") == {failing.pk}
    assert listed("?health=stale") == {stale.pk}
    assert listed("?health=ok") == {ok.pk}
    assert listed("?q=user-000002") == {stale.pk}
    assert listed(f"?q={failing.patient_id}") >= {failing.pk}
    # Issue 17, item 6: identifiers match by prefix (never by a fragment inside them).
    assert listed("?q=user-00000") == {ok.pk, stale.pk, failing.pk}
    assert listed("?q=USER-00000") == {ok.pk, stale.pk, failing.pk}
    assert listed("?q=000002") == set()
    assert listed(f"?q={str(failing.pk)[:-1]}") >= {failing.pk}


def test_the_list_shows_a_scrubbed_last_error(ops_user: User, frozen_time: datetime) -> None:
    make_connection(
        1,
        failure_streak=1,
        last_error="junction: GET /v2/x answered 401 token=sk_us_abcdef123456 for 52231bda-c92b-545a-bf6a-f2c422e30c43",
    )
    page = client_for(ops_user).get(reverse("admin:connections_connection_changelist")).content.decode()
    assert "answered 401" in page
    assert "sk_us_abcdef123456" not in page and "52231bda" not in page


# --- patient page, sync events, job health ---------------------------------------------------------------------


def test_patient_page_shows_connections_charts_stats_and_events(
    support_user: User, junction_config: JunctionSyncConfig
) -> None:
    run_wearable_sync_job(junction_config.replace(lookback_days=7))
    patient = next(
        p
        for p in Patient.objects.all()
        if p.daily_stats.exists() and p.junction_user_id in junction_config.user_ids
    )

    page = client_for(support_user).get(reverse("admin:connections_patient_change", args=[patient.pk]))

    html = page.content.decode()
    assert page.status_code == 200
    assert html.count('class="ls-chart"') == 2
    assert "Heart rate, last 7 days" in html and "<polyline" in html
    assert 'id="patient-daily-stats"' in html and "heart_rate" in html
    assert "ls-health-ok" in html  # the connections inline
    assert 'class="ls-event ls-event-sync"' in html


def test_sync_events_are_read_only_and_filter_by_trigger(
    ops_user: User, failing: Connection, django_capture_on_commit_callbacks: Any
) -> None:
    client = client_for(ops_user)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(op_url(failing, "resync"), {"confirm": "yes"})
    base = reverse("admin:connections_syncevent_changelist")

    admin_events = client.get(base + "?trigger=admin").context["cl"].result_list
    schedule_events = client.get(base + "?trigger=schedule").context["cl"].result_list
    kinds = client.get(base + "?kind=resync_requested").context["cl"].result_list

    assert len(admin_events) == 2 and len(schedule_events) == 0 and len(kinds) == 1
    event = SyncEvent.objects.first()
    assert client.post(reverse("admin:connections_syncevent_change", args=[event.pk]), {}).status_code == 403
    assert client.get(reverse("admin:connections_syncevent_add")).status_code == 403


def test_job_health_page_is_visible_to_support(support_user: User) -> None:
    page = client_for(support_user).get(reverse("admin:connections_jobhealth_changelist"))
    assert page.status_code == 200
    assert b"wearable-sync-daily" in page.content and b"Last 30 days" in page.content
