"""Issue 17, ops: what the admin says is true. Force resync shows queued → running → the sync's result (item 4);
job runs name the connections they covered, manual sync requests and the queue's outcomes are visible (item 3)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db.models.signals import post_save
from django.test import Client, override_settings
from django.urls import reverse

from connections import actions
from connections.config import JunctionSyncConfig
from connections.models import (
    Connection,
    ConnectionStatus,
    SyncEvent,
    SyncEventKind,
    SyncStatus,
    SyncTrigger,
)
from sandbox import SandboxServer
from tests.ops_fixtures import PASSWORD, make_connection

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_time")]


def client_for(user: User) -> Client:
    client = Client()
    assert client.login(username=user.username, password=PASSWORD)
    return client


@pytest.fixture
def synced_settings(junction_config: JunctionSyncConfig) -> Iterator[JunctionSyncConfig]:
    config = junction_config.replace(user_ids=junction_config.user_ids[:1])
    with override_settings(JUNCTION_SYNC=config):
        yield config


@pytest.fixture
def connection(frozen_time: datetime, synced_settings: JunctionSyncConfig) -> Connection:
    return make_connection(
        1,
        junction_user_id=synced_settings.user_ids[0],
        last_sync_at=frozen_time - timedelta(days=2),
        failure_streak=3,
        last_error="attempt 3: junction: GET /v2/summary/sleep/{id} answered 503",
    )


# --- item 4: Force resync is queued, then running, then its result -----------------------------------------


def test_force_resync_is_queued_until_a_worker_runs_it_then_shows_the_syncs_result(
    ops_user: User, connection: Connection, django_capture_on_commit_callbacks: Any
) -> None:
    client = client_for(ops_user)
    url = reverse("admin:connections_connection_resync", args=[connection.pk])
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(url, {"confirm": "yes"}, follow=True)

    page = response.content.decode()
    assert "Force resync: queued for" in page and "done" not in page.split("messagelist")[1][:300]
    request = SyncEvent.objects.get(kind=SyncEventKind.RESYNC_REQUESTED)
    assert request.status == SyncStatus.QUEUED and request.finished_at is None
    assert 'id="ls-pending-resync"' in page and 'http-equiv="refresh"' in page

    # The worker takes it: while the engine syncs, the request says running.
    seen: list[str] = []

    def watch(sender: Any, instance: SyncEvent, created: bool, **kwargs: Any) -> None:
        if created and instance.kind == SyncEventKind.SYNC:
            seen.append(SyncEvent.objects.get(pk=request.pk).status)

    post_save.connect(watch, sender=SyncEvent)
    try:
        for callback in callbacks:
            callback()  # django-q2 runs the task at once in the test settings (sync mode)
    finally:
        post_save.disconnect(watch, sender=SyncEvent)

    assert seen == [SyncStatus.RUNNING]
    request.refresh_from_db()
    run = SyncEvent.objects.get(kind=SyncEventKind.SYNC)
    assert request.status == SyncStatus.SUCCESS and request.result_event_id == run.pk
    assert request.finished_at is not None and request.records_stored == run.records_stored > 0
    assert request.task_id  # the django-q2 task, to find it on the queue's pages

    after = client.get(reverse("admin:connections_connection_change", args=[connection.pk])).content.decode()
    assert 'id="ls-pending-resync"' not in after and 'http-equiv="refresh"' not in after
    assert reverse("admin:connections_syncevent_change", args=[run.pk]) in after


def test_a_resync_whose_sync_fails_is_recorded_failed_with_the_syncs_error(
    ops_user: User,
    connection: Connection,
    clean_sandbox: SandboxServer,
    django_capture_on_commit_callbacks: Any,
    settings: Any,
) -> None:
    settings.SYNC_USER_ATTEMPTS = 1
    settings.PROVIDER_HTTP_ATTEMPTS = 1
    clean_sandbox.faults.add({"provider": "junction", "status": 503, "count": -1})
    with django_capture_on_commit_callbacks(execute=True):
        request = actions.do_request_resync(connection, actor="olivia-ops")
    assert request is not None

    request.refresh_from_db()
    run = SyncEvent.objects.get(kind=SyncEventKind.SYNC)
    assert run.status == SyncStatus.FAILED
    assert (request.status, request.result_event_id) == (SyncStatus.FAILED, run.pk)
    assert "503" in request.error


def test_a_resync_of_a_connection_deactivated_while_queued_fails_saying_why(
    connection: Connection, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        request = actions.do_request_resync(connection, actor="olivia-ops", trigger=SyncTrigger.ADMIN)
    Connection.objects.filter(pk=connection.pk).update(status=ConnectionStatus.INACTIVE)
    for callback in callbacks:
        callback()

    assert request is not None
    request.refresh_from_db()
    assert request.status == SyncStatus.FAILED and request.result_event_id is None
    assert "deactivated" in request.error
    assert not SyncEvent.objects.filter(kind=SyncEventKind.SYNC).exists()


# --- item 3: trace a failure from the job run to its connection; manual syncs; the queue's pages --------------


@pytest.fixture
def failed_run(junction_config: JunctionSyncConfig, clean_sandbox: SandboxServer) -> Iterator[Any]:
    """A fanned-out wearable-sync-daily run (django-q2 sync mode) in which one of three users failed."""
    from connections.models import JobRun
    from connections.tasks import sync_job
    from tests.direct_helpers import JUNCTION_JOB

    down = junction_config.user_ids[1]
    clean_sandbox.faults.add({"user_id": down, "status": 503, "count": -1})
    with override_settings(JUNCTION_SYNC=junction_config, SYNC_USER_ATTEMPTS=1, PROVIDER_HTTP_ATTEMPTS=1):
        sync_job(JUNCTION_JOB)
    run = JobRun.objects.get()
    failed = Connection.objects.get(patient__junction_user_id=down)
    yield run, failed


def test_a_job_runs_page_names_the_connection_that_failed_first(ops_user: User, failed_run: Any) -> None:
    run, failed = failed_run
    assert SyncEvent.objects.filter(job_run=run).count() == 3
    client = client_for(ops_user)

    listing = client.get(reverse("admin:connections_jobrun_changelist")).content.decode()
    page_url = reverse("admin:connections_jobrun_change", args=[run.pk])
    assert f'href="{page_url}#run-sync-events"' in listing and "1 failed" in listing

    page = client.get(page_url).content.decode()
    table = page.split('id="run-sync-events"')[1]
    rows = table.split('class="ls-run-event"')[1:]
    assert len(rows) == 3
    assert 'data-status="failed"' in rows[0]
    assert reverse("admin:connections_connection_change", args=[failed.pk]) in rows[0]
    assert all('data-status="success"' in row for row in rows[1:])


def test_an_inline_run_links_its_sync_events_too(junction_config: JunctionSyncConfig) -> None:
    from tests.direct_helpers import run_wearable_sync_job

    result = run_wearable_sync_job(junction_config)

    assert result.job_run_id is not None
    assert SyncEvent.objects.filter(job_run_id=result.job_run_id).count() == len(result.users) == 3


def test_manual_sync_requests_are_listed_read_only_and_filter_by_status_and_source(
    ops_user: User, frozen_time: datetime
) -> None:
    from connections.models import SyncRequest, SyncRequestStatus

    connection = make_connection(1)
    SyncRequest.objects.create(
        patient=connection.patient,
        source="oura",
        connection=connection,
        status=SyncRequestStatus.FAILED,
        error="junction: GET /v2/summary/sleep answered 503",
    )
    SyncRequest.objects.create(
        patient=connection.patient, source="whoop", connection=connection, status=SyncRequestStatus.SUCCESS
    )
    client = client_for(ops_user)
    url = reverse("admin:connections_syncrequest_changelist")

    everything = client.get(url).content.decode()
    failed = client.get(url, {"status__exact": "failed"}).content.decode()
    whoop = client.get(url, {"source": "whoop"}).content.decode()

    assert everything.count('class="field-source"') == 2
    assert failed.count('class="field-source"') == 1 and "answered 503" in failed
    assert whoop.count('class="field-source"') == 1 and ">whoop<" in whoop
    assert 'href="/admin/connections/syncrequest/add/"' not in everything
    change = client.get(
        reverse("admin:connections_syncrequest_change", args=[SyncRequest.objects.first().pk])
    )
    assert change.status_code == 200 and 'type="submit" value="Save"' not in change.content.decode()


def test_the_queues_successful_tasks_say_which_syncs_failed(ops_user: User, failed_run: Any) -> None:
    run, failed = failed_run
    failed_event = SyncEvent.objects.get(connection=failed, job_run=run)
    page = client_for(ops_user).get(reverse("admin:django_q_success_changelist")).content.decode()

    assert 'id="ls-queue-note"' in page and "listed here as a successful task" in page
    assert reverse("admin:connections_syncevent_change", args=[failed_event.pk]) in page
    assert "sync failed" in page and page.count("sync success") == 2


def test_a_fanned_out_sync_events_page_links_its_task(ops_user: User, failed_run: Any) -> None:
    run, failed = failed_run
    event = SyncEvent.objects.get(connection=failed, job_run=run)
    client = client_for(ops_user)

    page = client.get(reverse("admin:connections_syncevent_change", args=[event.pk])).content.decode()
    name = f"{run.job}:{failed.pk}"
    assert f"?q={name.replace(':', '%3A')}" in page

    tasks = client.get(reverse("admin:django_q_success_changelist"), {"q": name}).content.decode()
    assert tasks.count('class="field-outcome"') == 1 and "sync failed" in tasks
