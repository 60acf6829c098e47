"""A provider is one class on one contract: a provider defined here, in the tests alone, and registered, gets its
schedule, its run_job name, its health cadence, its admin filter entry, its metrics in the read API and its
syncs through the engine, with no other file changed."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from django_q.models import Schedule

from connections.engine import ConnectionInactive, run_sync_job, sync_connection
from connections.health import Health, cadence_for, health_of
from connections.models import Connection, ConnectionStatus, JobRun, Patient, SyncEvent, SyncStatus
from connections.providers.contract import Batch, Cadence, ConnectMethod, SyncProvider
from connections.providers.registry import (
    PROVIDERS,
    provider_jobs,
    providers_check,
    register_provider,
    unregister_provider,
)
from loopsync.jobs import all_jobs
from loopsync.schedules import all_schedules
from readings.models import WearableReading
from tests.api_helpers import client_for

READINGS = "/api/patient-graph/wearables/readings"
DAILY_STATS = "/api/patient-graph/wearables/daily-stats"

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_time")]

HOURLY = Cadence(every=timedelta(hours=1), grace=timedelta(minutes=20), failing_streak=3)


class RingProvider(SyncProvider):
    """A ring that reports a resting heart rate every hour (no network: its feed is computed)."""

    key = "ring"
    label = "Test Ring"
    connect = ConnectMethod.AGGREGATOR
    job = "sync-ring-data"
    cron = "15 * * * *"
    cadence = HOURLY
    job_description = "Test ring: hourly resting heart rate."
    metrics = ("ring_resting_heart_rate",)
    source_family = "ring"
    source_patterns = ("ring%",)
    priority = 2
    settings_name = "RING_SETTINGS"

    @classmethod
    def config_from_env(cls) -> dict[str, int]:
        return {"hours": 6}

    def fetch(
        self,
        connection: Connection,
        since: datetime | None,
        *,
        session: Any,
        window: tuple[datetime, datetime] | None = None,
        force: bool = False,
    ) -> Batch:
        now = timezone.now().replace(minute=0, second=0, microsecond=0)
        hours = [now - timedelta(hours=h) for h in range(self.config["hours"])]
        rows = [
            ("ring_resting_heart_rate", "ring", "", h.isoformat(sep=" "), None, 50.0 + h.hour, "bpm")
            for h in hours
        ]
        return Batch(readings=rows, window_start=min(hours), window_end=now, cursor=now)


@pytest.fixture
def ring() -> Iterator[type[RingProvider]]:
    register_provider(RingProvider)
    yield RingProvider
    unregister_provider(RingProvider.key)


@pytest.fixture
def ring_connection(ring: type[RingProvider]) -> Connection:
    return Connection.objects.create(patient=Patient.objects.create(), provider=ring.key)


def test_a_registered_provider_gets_its_schedule_and_its_run_job_name(ring: type[RingProvider]) -> None:
    schedule = {s.name: s for s in all_schedules()}["sync-ring-data"]
    assert (schedule.func, schedule.args, schedule.cron) == (
        "connections.tasks.sync_job",
        ("sync-ring-data",),
        "15 * * * *",
    )
    assert "sync-ring-data" in all_jobs()

    call_command("sync_schedules", stdout=io.StringIO())

    stored = Schedule.objects.get(name="loopsync.sync-ring-data")
    assert (stored.func, stored.args, stored.cron) == (
        "connections.tasks.sync_job",
        "('sync-ring-data',)",
        "15 * * * *",
    )


def test_unregistered_again_it_has_no_schedule(ring: type[RingProvider]) -> None:
    unregister_provider(ring.key)
    assert "sync-ring-data" not in {s.name for s in all_schedules()}
    assert "sync-ring-data" not in all_jobs()
    register_provider(ring)


def test_a_registered_provider_is_judged_by_its_own_cadence(
    ring_connection: Connection, frozen_time: datetime
) -> None:
    assert cadence_for("ring") == HOURLY
    Connection.objects.filter(pk=ring_connection.pk).update(
        last_success_at=frozen_time - timedelta(minutes=79), failure_streak=2
    )
    ring_connection.refresh_from_db()
    assert health_of(ring_connection, frozen_time) == Health.OK  # a daily provider's streak of 2 would fail
    Connection.objects.filter(pk=ring_connection.pk).update(
        last_success_at=frozen_time - timedelta(minutes=81)
    )
    ring_connection.refresh_from_db()
    assert health_of(ring_connection, frozen_time) == Health.STALE


def test_a_registered_provider_is_an_entry_of_the_admin_provider_filter(
    ring_connection: Connection, ops_user: Any
) -> None:
    client = Client()
    client.force_login(ops_user)

    page = client.get("/admin/connections/connection/")
    filtered = client.get("/admin/connections/connection/", {"provider__exact": "ring"})

    assert page.status_code == 200 and "Test Ring" in page.content.decode()
    assert filtered.status_code == 200 and list(filtered.context["cl"].result_list) == [ring_connection]


def test_a_registered_provider_syncs_through_the_engine(ring_connection: Connection) -> None:
    event = sync_connection(ring_connection, trigger="admin", actor="ops")

    assert event == SyncEvent.objects.get(connection=ring_connection)
    assert (event.status, event.provider, event.records_stored, event.actor) == (
        SyncStatus.SUCCESS,
        "ring",
        6,
        "ops",
    )
    assert (
        WearableReading.objects.filter(
            patient=ring_connection.patient, metric="ring_resting_heart_rate"
        ).count()
        == 6
    )
    ring_connection.refresh_from_db()
    assert ring_connection.last_sync_at == timezone.now()
    # Idempotent on the natural key: again, nothing new.
    assert sync_connection(ring_connection).records_stored == 0


def test_a_registered_provider_job_runs_inline_and_is_recorded(
    ring_connection: Connection, settings: Any
) -> None:
    settings.SYNC_JOB_CONCURRENCY = 1  # worker threads would not see this test's uncommitted rows
    assert [p.key for p in provider_jobs()["sync-ring-data"].providers] == ["ring"]

    result = all_jobs()["sync-ring-data"](None)

    assert (result["users_synced"], result["records_stored"]) == (1, 6)
    run = JobRun.objects.get(job="sync-ring-data")
    assert (run.pk, run.status, run.users_synced, run.records_stored) == (
        result["job_run_id"],
        "success",
        1,
        6,
    )


def test_an_inactive_connection_is_not_synced_and_no_event_is_written(ring_connection: Connection) -> None:
    Connection.objects.filter(pk=ring_connection.pk).update(status=ConnectionStatus.INACTIVE)
    ring_connection.refresh_from_db()

    with pytest.raises(ConnectionInactive):
        sync_connection(ring_connection)

    result = run_sync_job("sync-ring-data")
    assert not SyncEvent.objects.exists() and result.users == []


def test_the_built_in_providers_are_registered_with_distinct_jobs_sharing_crons_per_job() -> None:
    assert set(PROVIDERS) >= {"junction", "whoop", "dexcom", "libre"}
    jobs = provider_jobs()
    assert {p.key for p in jobs["sync-cgm-readings"].providers} == {"dexcom", "libre"}
    assert [p.key for p in jobs["wearable-sync-daily"].providers] == ["junction"]


def test_a_provider_whose_jobs_cron_disagrees_or_whose_config_fails_stops_start_up(
    ring: type[RingProvider],
) -> None:
    assert providers_check(None) == []

    class LateRing(RingProvider):
        key = "late-ring"
        cron = "45 * * * *"

    class BrokenRing(RingProvider):
        key = "broken-ring"
        job = "sync-broken-ring"

        @classmethod
        def config_from_env(cls) -> dict[str, int]:
            raise ImproperlyConfigured("RING_HOURS='x' is not an integer")

    register_provider(LateRing)
    register_provider(BrokenRing)
    try:
        errors = {m.id: m.msg for m in providers_check(None)}
    finally:
        unregister_provider(LateRing.key)
        unregister_provider(BrokenRing.key)

    assert "disagree on its cron" in errors["connections.E201"]
    assert errors["connections.E202"] == "provider broken-ring: RING_HOURS='x' is not an integer"


def test_a_registered_providers_metrics_are_readable_through_the_api(
    ring_connection: Connection, clerk: Any
) -> None:
    Patient.objects.filter(pk=ring_connection.patient_id).update(clerk_user_id="user_ring")
    sync_connection(ring_connection)
    client = client_for(clerk.mint("user_ring"))

    readings = client.get(READINGS, {"metric": "ring_resting_heart_rate"})
    stats = client.get(DAILY_STATS, {"metric": "ring_resting_heart_rate"})

    # The default window ends now, exclusive: the reading stamped at this very instant is outside it.
    assert readings.status_code == 200 and len(readings.json()["results"]) == 5
    assert stats.status_code == 200 and stats.json()["results"]
    unregister_provider("ring")
    refused = client.get(READINGS, {"metric": "ring_resting_heart_rate"})
    register_provider(RingProvider)
    assert refused.status_code == 400


def test_a_provider_bug_finishes_its_event_as_failed_and_the_job_goes_on(
    ring: type[RingProvider], settings: Any
) -> None:
    settings.SYNC_JOB_CONCURRENCY = 1

    class BuggyRing(RingProvider):
        key = "buggy-ring"

        def fetch(self, connection: Connection, since: datetime | None, **kwargs: Any) -> Batch:
            raise KeyError("a bug in the parser")

    register_provider(BuggyRing)
    try:
        buggy = Connection.objects.create(patient=Patient.objects.create(), provider="buggy-ring")
        fine = Connection.objects.create(patient=Patient.objects.create(), provider="ring")

        with pytest.raises(KeyError):
            sync_connection(buggy)
        result = run_sync_job("sync-ring-data")
    finally:
        unregister_provider(BuggyRing.key)

    events = SyncEvent.objects.filter(connection=buggy)
    assert {e.status for e in events} == {SyncStatus.FAILED} and not SyncEvent.objects.filter(
        status="running"
    )
    assert all(e.error == "internal error: KeyError" and e.finished_at for e in events)
    buggy.refresh_from_db()
    assert buggy.failure_streak == 2  # the direct call and the job run
    by_status = {u.status for u in result.users}
    assert (
        by_status == {"failed", "success"}
        and SyncEvent.objects.get(connection=fine).status == SyncStatus.SUCCESS
    )


def test_a_registered_providers_metrics_are_in_the_schemas_metric_enum(
    ring: type[RingProvider], client
) -> None:
    def metrics() -> list[str]:
        return client.get("/api/schema/?format=json").json()["components"]["schemas"]["Metric"]["enum"]

    assert "ring_resting_heart_rate" in metrics()
    unregister_provider(ring.key)
    try:
        assert "ring_resting_heart_rate" not in metrics()
    finally:
        register_provider(ring)
