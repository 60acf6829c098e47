"""Issue 17, item 2: an ops overview (connections by health and provider, each job's last run, open problems
first) and a Late / Missed state for every scheduled job, judged from its cron (a stopped worker shows Late, then
Missed, never a "next run" in the past); Sentry Crons gets the schedule and margin to detect missed runs itself."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from connections.jobhealth import ScheduleState, job_health, schedule_state
from connections.jobruns import monitor_config, track_job
from connections.models import ConnectionStatus, JobRun, JobRunStatus, Provider
from connections.tokens import MUST_RECONNECT, mark_revoked
from loopsync.schedules import all_schedules
from tests.ops_fixtures import PASSWORD, CapturingTransport, make_connection

pytestmark = [pytest.mark.django_db]
CGM_JOB = "sync-cgm-readings"  # cron */30
T1300 = datetime(2026, 3, 10, 13, 0, tzinfo=UTC)


def client_for(user: User) -> Client:
    client = Client()
    assert client.login(username=user.username, password=PASSWORD)
    return client


def state_of(job: str, now: datetime) -> str:
    return next(row for row in job_health(now) if row.name == job).state


def test_a_stopped_worker_shows_late_then_missed_not_a_next_run_in_the_past(ops_user: User) -> None:
    call_command("sync_schedules", stdout=io.StringIO())
    JobRun.objects.create(
        job=CGM_JOB, status=JobRunStatus.SUCCESS, started_at=T1300, finished_at=T1300 + timedelta(minutes=2)
    )
    client = client_for(ops_user)
    health_url = reverse("admin:connections_jobhealth_changelist")

    with time_machine.travel(T1300 + timedelta(minutes=10), tick=False):
        assert state_of(CGM_JOB, T1300 + timedelta(minutes=10)) == ScheduleState.ON_TIME
        page = client.get(health_url).content.decode()
        assert "next due 2026-03-10 13:30 UTC" in page.split(f'id="job-{CGM_JOB}"')[1].split("</dl>")[0]

    # The worker is stopped: nothing runs at 13:30.
    with time_machine.travel(T1300 + timedelta(minutes=41), tick=False):
        assert state_of(CGM_JOB, T1300 + timedelta(minutes=41)) == ScheduleState.LATE
        job = client.get(health_url).content.decode().split(f'id="job-{CGM_JOB}"')[1].split("</dl>")[0]
        assert "ls-state-late" in job and "due 2026-03-10 13:30 UTC" in job and "missed after 14:00" in job
        assert "next due" not in job and "Next run" not in job

    for minutes in (61, 95, 24 * 60):  # past the 30-minute grace, and still so at every later half hour
        now = T1300 + timedelta(minutes=minutes)
        with time_machine.travel(now, tick=False):
            assert state_of(CGM_JOB, now) == ScheduleState.MISSED, minutes
            job = client.get(health_url).content.decode().split(f'id="job-{CGM_JOB}"')[1].split("</dl>")[0]
            assert "ls-state-missed" in job and "due 2026-03-10 13:30 UTC" in job and "next due" not in job

    # The worker is back: a run at 13:30 the next day answers, the job is on time again.
    JobRun.objects.create(
        job=CGM_JOB, status=JobRunStatus.RUNNING, started_at=T1300 + timedelta(days=1, minutes=30)
    )
    assert state_of(CGM_JOB, T1300 + timedelta(days=1, minutes=31)) == ScheduleState.RUNNING


def test_schedule_states_against_an_independent_reading_of_the_cron() -> None:
    daily = "0 3 * * *"
    ran = JobRun(job="x", status=JobRunStatus.SUCCESS, started_at=datetime(2026, 3, 9, 3, 0, 5, tzinfo=UTC))
    at = lambda h, m, d=10: datetime(2026, 3, d, h, m, tzinfo=UTC)  # noqa: E731
    assert schedule_state(daily, ran, at(2, 59)) == (ScheduleState.ON_TIME, at(3, 0))
    assert schedule_state(daily, ran, at(3, 0)) == (ScheduleState.LATE, at(3, 0))
    assert schedule_state(daily, ran, at(3, 30)) == (ScheduleState.LATE, at(3, 0))
    assert schedule_state(daily, ran, at(3, 31)) == (ScheduleState.MISSED, at(3, 0))
    assert schedule_state(daily, ran, at(3, 31, 12)) == (ScheduleState.MISSED, at(3, 0))
    assert schedule_state(daily, None, at(12, 0)) == (ScheduleState.NEVER_RUN, at(3, 0, 11))
    assert schedule_state(daily, ran, at(12, 0), scheduled=False)[0] == ScheduleState.NOT_SCHEDULED


def test_every_check_in_sends_the_schedule_and_margin_sentry_needs_to_detect_a_missed_run(
    sentry_capture: CapturingTransport, settings: object
) -> None:
    for job in all_schedules():
        config = monitor_config(job.name)
        assert config is not None
        assert config["schedule"] == {"type": "crontab", "value": job.cron}
        assert config["checkin_margin"] == settings.SENTRY_CRONS_MARGIN_MINUTES  # type: ignore[attr-defined]
        assert config["max_runtime"] == settings.SENTRY_CRONS_MAX_RUNTIME_MINUTES  # type: ignore[attr-defined]

    with track_job("aggregate-wearable-data"):
        pass

    check_ins = sentry_capture.check_ins()
    assert [c["status"] for c in check_ins] == ["in_progress", "ok"]
    sent = check_ins[0]["monitor_config"]
    assert sent["schedule"] == {"type": "crontab", "value": "30 4 * * *"}
    assert sent["checkin_margin"] == 30 and sent["timezone"] == "UTC"


def test_the_overview_counts_connections_by_health_and_provider_and_lists_problems_first(
    ops_user: User,
) -> None:
    now = datetime.now(UTC)
    make_connection(1, last_sync_at=now - timedelta(hours=2))
    make_connection(2, last_sync_at=now - timedelta(hours=3))
    failing = make_connection(
        3, last_sync_at=now - timedelta(hours=2), failure_streak=2, last_error="answered 503"
    )
    make_connection(4, provider=Provider.DEXCOM, last_sync_at=now - timedelta(days=2))
    make_connection(5, provider=Provider.DEXCOM, status=ConnectionStatus.INACTIVE)
    revoked = make_connection(6, provider=Provider.WHOOP, last_sync_at=now - timedelta(hours=1))
    mark_revoked(revoked, "whoop: invalid_grant; " + MUST_RECONNECT)
    call_command("sync_schedules", stdout=io.StringIO())
    JobRun.objects.create(
        job="wearable-sync-daily",
        status=JobRunStatus.PARTIAL,
        started_at=now - timedelta(days=3),
        users_failed=1,
    )
    client = client_for(ops_user)

    index = client.get(reverse("admin:index")).content.decode()
    assert 'id="ls-ops-summary"' in index and reverse("admin:connections_overview") in index
    assert "1 failing, 1 stale" in index and "wearable-sync-daily" in index

    page = client.get(reverse("admin:connections_overview")).content.decode()

    def cells(provider: str) -> list[str]:
        row = page.split(f'data-provider="{provider}"')[1].split("</tr>")[0]
        return [c.split(">", 1)[1].split("<")[0] for c in row.split('class="ls-n')[1:]]

    # failing, stale, inactive, ok, total
    assert cells("junction") == ["1", "0", "0", "2", "3"]
    assert cells("dexcom") == ["0", "1", "1", "0", "2"]
    assert cells("whoop") == ["0", "0", "1", "0", "1"]
    assert cells("all") == ["1", "1", "2", "2", "6"]
    problems = page.split('id="ls-problems"')[1].split("</table>")[0]
    # The missed job first, then the failing, stale and revoked connections.
    assert problems.index("wearable-sync-daily") < problems.index(str(failing)) < problems.index(str(revoked))
    assert "ls-state-missed" in problems and "1 failed" in problems
    assert 'id="ls-job-wearable-sync-daily" data-state="missed"' in page


def test_support_sees_the_overview_and_anonymous_users_do_not(support_user: User) -> None:
    url = reverse("admin:connections_overview")
    assert client_for(support_user).get(url).status_code == 200
    assert Client().get(url).status_code == 302
