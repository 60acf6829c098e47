"""Job runs: one wrapper around every scheduled job's entry point records its run, its Sentry Crons
check-ins and its summary log line.

Two shapes of job:

* Inline (the entry point does all the work): decorate it.

      @tracked_job("readings-retention")
      def readings_retention() -> dict[str, Any]:
          ...
          return {"users_synced": n, "records_stored": m}   # optional counts, read into the run

* Fan-out (the entry point queues one task per user): open the run, say how many tasks will report, pass
  `run.id` to each task, and let each task call `record_unit` when it ends (in a `finally`). The run stays
  `running` until the last task reports; that task finishes it, closes the Crons check-in and logs the
  summary. So the job health page shows users, records and duration of the whole run, not of the dispatcher.

      with track_job(JOB_NAME) as run:
          run.expect_units(len(connections))
          for c in connections:
              async_task("connections.tasks.sync_connection_task", c.pk, trigger, run.id)

A run still open when the next run of the same job starts (a worker died, a task was lost) is closed as
failed, naming how many users never reported.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from sentry_sdk.crons import capture_checkin
from sentry_sdk.crons.consts import MonitorStatus

from connections.models import JobRun, JobRunStatus, JobRunUnit
from loopsync.schedules import all_schedules
from loopsync.sentry import scrub_text

logger = logging.getLogger("loopsync.jobs")

P = ParamSpec("P")
R = TypeVar("R")

UNIT_SUCCESS = "success"
UNIT_FAILED = "failed"
UNIT_SKIPPED = "skipped"


def monitor_config(job: str) -> dict[str, Any] | None:
    """Sentry Crons monitor for a scheduled job: its cron, so Sentry alerts on a missed run too."""
    schedule = next((s for s in all_schedules() if s.name == job), None)
    if schedule is None:
        return None
    return {
        "schedule": {"type": "crontab", "value": schedule.cron},
        "timezone": settings.TIME_ZONE,
        "checkin_margin": settings.SENTRY_CRONS_MARGIN_MINUTES,
        "max_runtime": settings.SENTRY_CRONS_MAX_RUNTIME_MINUTES,
        "failure_issue_threshold": 1,
        "recovery_threshold": 1,
    }


@dataclass(frozen=True)
class JobSummary:
    """The one summary every job gives, logged (`log_summary`) and printed by the commands (`line()`):

    <job> finished: <status>, <synced>/<expected> users synced, <failed> failed, <skipped> skipped,
    <records> records stored in <seconds> s
    """

    job: str
    status: str
    duration_s: float
    users_expected: int = 0
    users_synced: int = 0
    users_failed: int = 0
    users_skipped: int = 0
    records_stored: int = 0
    job_run_id: int | None = None

    def line(self) -> str:
        return (
            f"{self.job} finished: {self.status}, {self.users_synced}/{self.users_expected} users synced, "
            f"{self.users_failed} failed, {self.users_skipped} skipped, {self.records_stored} records stored "
            f"in {self.duration_s:.1f} s"
        )

    def fields(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "job_run_id": self.job_run_id,
            "status": self.status,
            "duration_s": round(self.duration_s, 3),
            "users_expected": self.users_expected,
            "users_synced": self.users_synced,
            "users_failed": self.users_failed,
            "users_skipped": self.users_skipped,
            "records_stored": self.records_stored,
        }


class TrackedRun:
    """The handle `track_job` yields."""

    def __init__(self, run: JobRun) -> None:
        self.run = run
        self.fan_out = False

    @property
    def id(self) -> int:
        return self.run.pk

    def expect_units(self, count: int) -> None:
        """Fan-out: `count` tasks will each call `record_unit(self.id, ...)`. Call before queuing them."""
        self.fan_out = True
        self.run.users_expected = count
        JobRun.objects.filter(pk=self.run.pk).update(users_expected=count)

    def record(
        self, *, users_synced: int = 0, users_failed: int = 0, users_skipped: int = 0, records_stored: int = 0
    ) -> None:
        """Inline: add counts to the run."""
        JobRun.objects.filter(pk=self.run.pk).update(
            users_synced=F("users_synced") + users_synced,
            users_failed=F("users_failed") + users_failed,
            users_skipped=F("users_skipped") + users_skipped,
            records_stored=F("records_stored") + records_stored,
        )

    def record_summary(self, summary: Mapping[str, Any]) -> None:
        self.record(
            users_synced=int(summary.get("users_synced") or 0),
            users_failed=int(summary.get("users_failed") or 0),
            users_skipped=int(summary.get("users_skipped") or 0),
            records_stored=int(summary.get("records_stored") or 0),
        )


@contextmanager
def track_job(job: str, *, scheduled: bool = True) -> Iterator[TrackedRun]:
    """Record one run of `job`: a JobRun row, Crons check-ins (in progress, then ok or error), a summary log.

    `scheduled=False` (run_job, sync_wearables): the run is recorded, but it neither checks in with Sentry
    Crons (a manual run must not hide a missed scheduled one) nor closes a scheduled run still in progress.
    """
    now = timezone.now()
    check_in_id = None
    if scheduled:
        _close_abandoned_runs(job, now)
        check_in_id = capture_checkin(
            monitor_slug=job, status=MonitorStatus.IN_PROGRESS, monitor_config=monitor_config(job)
        )
    tracked = TrackedRun(JobRun.objects.create(job=job, started_at=now, sentry_check_in_id=check_in_id or ""))
    try:
        yield tracked
    except Exception as exc:
        _finish(tracked.run.pk, error=f"{type(exc).__name__}: {scrub_text(str(exc))}"[:2000])
        raise
    if not tracked.fan_out:
        _finish(tracked.run.pk)
    else:
        # Every task may already have reported (sync mode, or fast workers), or none was queued.
        _finish_if_complete(tracked.run.pk)


def tracked_job(job: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator form of `track_job` for inline jobs; a returned mapping's counts are recorded."""

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with track_job(job) as run:
                result = func(*args, **kwargs)
                if isinstance(result, Mapping):
                    run.record_summary(result)
                return result

        return wrapper

    return decorate


def record_unit(
    job_run_id: int | None, outcome: str, *, records_stored: int = 0, unit: int | None = None
) -> None:
    """A fan-out task reports its unit's outcome; the last one to report finishes the run.

    `unit` (the connection id) makes the report count once however often the queue delivers the task.
    """
    if job_run_id is None:
        return
    if unit is not None:
        try:
            with transaction.atomic():
                JobRunUnit.objects.create(job_run_id=job_run_id, unit=unit, outcome=outcome)
        except IntegrityError:
            logger.info("unit already reported", extra={"job_run_id": job_run_id, "unit": unit})
            return
    JobRun.objects.filter(pk=job_run_id).update(
        users_synced=F("users_synced") + (1 if outcome == UNIT_SUCCESS else 0),
        users_failed=F("users_failed") + (1 if outcome == UNIT_FAILED else 0),
        users_skipped=F("users_skipped") + (1 if outcome == UNIT_SKIPPED else 0),
        records_stored=F("records_stored") + records_stored,
    )
    _finish_if_complete(job_run_id)


def _finish_if_complete(job_run_id: int) -> None:
    run = JobRun.objects.filter(pk=job_run_id, status=JobRunStatus.RUNNING).first()
    if run is None:
        return
    if run.users_synced + run.users_failed + run.users_skipped >= run.users_expected:
        _finish(job_run_id)


def _status_of(run: JobRun, error: str) -> str:
    if error:
        return JobRunStatus.FAILED
    if run.users_failed == 0:
        return JobRunStatus.SUCCESS
    if run.users_synced == 0:
        return JobRunStatus.FAILED
    return JobRunStatus.PARTIAL


def _finish(job_run_id: int, *, error: str = "", now: datetime | None = None) -> None:
    run = JobRun.objects.get(pk=job_run_id)
    status = _status_of(run, error)
    finished_at = now or timezone.now()
    # The conditional update is the claim: when two tasks both see the run complete, one finishes it.
    claimed = JobRun.objects.filter(pk=job_run_id, status=JobRunStatus.RUNNING).update(
        status=status, finished_at=finished_at, error=error
    )
    if claimed != 1:
        return
    run.status, run.finished_at = status, finished_at
    duration = (finished_at - run.started_at).total_seconds()
    if run.sentry_check_in_id:
        capture_checkin(
            monitor_slug=run.job,
            check_in_id=run.sentry_check_in_id,
            status=MonitorStatus.OK if status == JobRunStatus.SUCCESS else MonitorStatus.ERROR,
            duration=duration,
        )
    log_summary(run_summary(run))


def run_summary(run: JobRun) -> JobSummary:
    """A finished run's summary (its duration from its own start and finish)."""
    duration = (run.finished_at - run.started_at).total_seconds() if run.finished_at else 0.0
    return JobSummary(
        job=run.job,
        status=run.status,
        duration_s=duration,
        users_expected=run.users_expected or run.users_synced + run.users_failed + run.users_skipped,
        users_synced=run.users_synced,
        users_failed=run.users_failed,
        users_skipped=run.users_skipped,
        records_stored=run.records_stored,
        job_run_id=run.pk,
    )


def log_summary(summary: JobSummary) -> None:
    """THE summary log line of a job, whichever job and however started: one format, one set of fields."""
    logger.log(
        logging.INFO if summary.status == JobRunStatus.SUCCESS else logging.WARNING,
        summary.line(),
        extra=summary.fields(),
    )


def _close_abandoned_runs(job: str, now: datetime) -> None:
    for run in JobRun.objects.filter(job=job, status=JobRunStatus.RUNNING):
        missing = max(run.users_expected - run.users_synced - run.users_failed - run.users_skipped, 0)
        _finish(
            run.pk,
            error=f"abandoned: {missing} of {run.users_expected} users never reported before the next run",
            now=now,
        )
