"""Job runs: the wrapper records each scheduled run, the fan-out's users and records, Crons check-ins, logs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
import time_machine
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from connections import tasks
from connections.config import JunctionSyncConfig
from connections.jobhealth import job_health, percentile
from connections.jobruns import UNIT_FAILED, UNIT_SUCCESS, record_unit, track_job, tracked_job
from connections.models import JobRun, JobRunStatus, SyncEvent
from sandbox import SandboxServer
from tests.direct_helpers import JUNCTION_JOB
from tests.ops_fixtures import CapturingTransport

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_time")]
JOB = "wearable-sync-daily"


@pytest.fixture
def scheduled_config(junction_config: JunctionSyncConfig) -> Iterator[JunctionSyncConfig]:
    with override_settings(JUNCTION_SYNC=junction_config):
        yield junction_config


def test_fan_out_run_counts_the_users_and_records_of_its_tasks(
    scheduled_config: JunctionSyncConfig, clean_sandbox: SandboxServer, caplog: pytest.LogCaptureFixture
) -> None:
    down = scheduled_config.user_ids[1]
    clean_sandbox.faults.add({"user_id": down, "status": 503, "count": -1})

    with caplog.at_level(logging.INFO, logger="loopsync"):
        result = tasks.sync_job(JUNCTION_JOB)  # django-q2 sync mode: each user task runs as it is queued

    run = JobRun.objects.get()
    assert result["job_run_id"] == run.pk and result["connections_queued"] == 3
    assert (run.job, run.status) == (JOB, JobRunStatus.PARTIAL)
    assert (run.users_expected, run.users_synced, run.users_failed) == (3, 2, 1)
    assert run.records_stored == sum(SyncEvent.objects.values_list("records_stored", flat=True)) > 0
    assert run.finished_at is not None
    summary = [
        r for r in caplog.records if getattr(r, "job_run_id", None) == run.pk and hasattr(r, "users_failed")
    ]
    assert len(summary) == 1 and summary[0].status == "partial" and summary[0].levelno == logging.WARNING


def test_a_clean_run_checks_in_to_sentry_crons_in_progress_then_ok(
    scheduled_config: JunctionSyncConfig, sentry_capture: CapturingTransport
) -> None:
    tasks.sync_job(JUNCTION_JOB)

    run = JobRun.objects.get()
    assert run.status == JobRunStatus.SUCCESS and run.users_synced == 3
    check_ins = sentry_capture.check_ins()
    assert [c["status"] for c in check_ins] == ["in_progress", "ok"]
    assert {c["monitor_slug"] for c in check_ins} == {JOB}
    assert {c["check_in_id"] for c in check_ins} == {run.sentry_check_in_id}
    assert check_ins[0]["monitor_config"]["schedule"] == {"type": "crontab", "value": "0 3 * * *"}


def test_an_entry_point_that_raises_is_a_failed_run_and_an_error_check_in(
    junction_config: JunctionSyncConfig, sentry_capture: CapturingTransport
) -> None:
    with override_settings(JUNCTION_SYNC=junction_config.replace(api_key="")):
        with pytest.raises(ImproperlyConfigured):
            tasks.sync_job(JUNCTION_JOB)

    run = JobRun.objects.get()
    assert run.status == JobRunStatus.FAILED and run.error.startswith(
        "ImproperlyConfigured: JUNCTION_API_KEY"
    )
    assert [c["status"] for c in sentry_capture.check_ins()] == ["in_progress", "error"]


def test_a_run_still_open_when_the_next_starts_is_closed_as_failed(frozen_time: datetime) -> None:
    with track_job(JOB) as first:
        first.expect_units(5)
    record_unit(first.id, UNIT_SUCCESS, records_stored=10)

    with time_machine.travel(frozen_time + timedelta(days=1), tick=False), track_job(JOB) as second:
        second.expect_units(0)

    first_run = JobRun.objects.get(pk=first.id)
    assert first_run.status == JobRunStatus.FAILED
    assert first_run.error == "abandoned: 4 of 5 users never reported before the next run"
    assert JobRun.objects.get(pk=second.id).status == JobRunStatus.SUCCESS


def test_the_last_task_to_report_finishes_the_run_once(sentry_capture: CapturingTransport) -> None:
    with track_job(JOB) as run:
        run.expect_units(2)
    record_unit(run.id, UNIT_FAILED)
    assert JobRun.objects.get(pk=run.id).status == JobRunStatus.RUNNING
    record_unit(run.id, UNIT_FAILED)
    record_unit(run.id, UNIT_SUCCESS)  # a re-delivered task: counted, but the run is already finished

    finished = JobRun.objects.get(pk=run.id)
    assert finished.status == JobRunStatus.FAILED and finished.users_failed == 2
    assert [c["status"] for c in sentry_capture.check_ins()] == ["in_progress", "error"]


def test_an_inline_job_records_the_counts_it_returns() -> None:
    @tracked_job("readings-retention")
    def retention() -> dict[str, int]:
        return {"users_synced": 4, "records_stored": 0}

    retention()

    run = JobRun.objects.get(job="readings-retention")
    assert (run.status, run.users_synced) == (JobRunStatus.SUCCESS, 4)


def test_job_health_numbers(frozen_time: datetime) -> None:
    durations = [10, 20, 30, 40, 1000]
    for day, seconds in enumerate(durations):
        started = frozen_time - timedelta(days=day, hours=1)
        JobRun.objects.create(
            job=JOB,
            started_at=started,
            finished_at=started + timedelta(seconds=seconds),
            status=JobRunStatus.PARTIAL if day in (0, 3) else JobRunStatus.SUCCESS,
            users_synced=10,
            users_failed=1 if day in (0, 3) else 0,
            records_stored=100,
        )
    JobRun.objects.create(job=JOB, started_at=frozen_time - timedelta(days=20), status=JobRunStatus.FAILED)

    row = next(r for r in job_health(frozen_time) if r.name == JOB)

    assert row.last_run is not None and row.last_run.started_at == frozen_time - timedelta(hours=1)
    assert (row.duration_median_s, row.duration_p95_s) == (30, 1000)
    assert (row.runs_24h, row.failure_rate_24h) == (1, 1.0)
    assert (row.runs_7d, row.failure_rate_7d) == (5, 0.4)
    assert row.records_stored_7d == 500
    assert row.chart is not None and row.chart.count("users synced:") == 5


def test_nearest_rank_percentile() -> None:
    assert percentile([], 95) is None
    assert percentile([3.0], 95) == 3.0
    assert percentile([float(i) for i in range(1, 101)], 95) == 95.0
    assert percentile([float(i) for i in range(1, 101)], 50) == 50.0


def test_the_aggregation_and_cleanup_tasks_are_recorded_as_job_runs() -> None:
    from readings import tasks as reading_tasks

    reading_tasks.aggregate_wearable_data()
    reading_tasks.cleanup_wearable_data(dry_run=True)

    runs = {run.job: run.status for run in JobRun.objects.all()}
    assert runs == {
        "aggregate-wearable-data": JobRunStatus.SUCCESS,
        "cleanup-wearable-data": JobRunStatus.SUCCESS,
    }
