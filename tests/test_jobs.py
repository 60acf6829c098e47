"""Scheduling and the command-line entry points of the Junction sync."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings
from django_q.models import Schedule

from connections.config import JunctionSyncConfig
from connections.models import SyncEvent, SyncTrigger
from connections.tasks import sync_job
from loopsync.schedules import all_schedules
from readings.models import WearableReading
from tests.direct_helpers import JUNCTION_JOB

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_time")]


def test_sync_schedules_registers_the_daily_job_once_at_0300_utc() -> None:
    call_command("sync_schedules", stdout=io.StringIO())
    call_command("sync_schedules", stdout=io.StringIO())
    schedule = Schedule.objects.get(name="loopsync.wearable-sync-daily")
    assert (schedule.func, schedule.args) == ("connections.tasks.sync_job", "('wearable-sync-daily',)")
    assert schedule.cron == "0 3 * * *"
    assert schedule.next_run.hour == 3 and schedule.next_run.minute == 0
    # Each declared job exactly once, however often the command runs.
    assert Schedule.objects.filter(name__startswith="loopsync.").count() == len(all_schedules())


def test_sync_schedules_fixes_a_changed_schedule_and_removes_stale_ones() -> None:
    call_command("sync_schedules", stdout=io.StringIO())
    Schedule.objects.filter(name="loopsync.wearable-sync-daily").update(cron="0 9 * * *")
    Schedule.objects.create(
        name="loopsync.retired-job", func="x.y", schedule_type=Schedule.CRON, cron="0 1 * * *"
    )
    Schedule.objects.create(name="hand-made", func="x.z", schedule_type=Schedule.DAILY)

    call_command("sync_schedules", stdout=io.StringIO())

    assert Schedule.objects.get(name="loopsync.wearable-sync-daily").cron == "0 3 * * *"
    assert not Schedule.objects.filter(name="loopsync.retired-job").exists()
    assert Schedule.objects.filter(name="hand-made").exists()


def test_daily_task_fans_out_one_task_per_user(junction_config: JunctionSyncConfig) -> None:
    # Q_CLUSTER sync mode in tests: each queued task runs in-process as django-q2 would run it.
    with override_settings(JUNCTION_SYNC=junction_config):
        result = sync_job(JUNCTION_JOB)

    assert result["connections_queued"] == 3
    events = SyncEvent.objects.all()
    assert events.count() == 3
    assert {e.trigger for e in events} == {SyncTrigger.SCHEDULE}
    assert {e.status for e in events} == {"success"}
    assert WearableReading.objects.exists()


def test_a_user_task_run_twice_stores_nothing_twice(junction_config: JunctionSyncConfig) -> None:
    with override_settings(JUNCTION_SYNC=junction_config):
        sync_job(JUNCTION_JOB)
        count = WearableReading.objects.count()
        sync_job(JUNCTION_JOB)
    assert WearableReading.objects.count() == count


def test_json_output_is_one_object_and_nothing_else(junction_config: JunctionSyncConfig) -> None:
    out = io.StringIO()
    with override_settings(JUNCTION_SYNC=junction_config):
        call_command("sync_wearables", "--json", "--lookback-days", "1", stdout=out)
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 1
    payload = json.loads(lines[0])
    assert payload["job"] == "wearable-sync-daily"
    assert payload["users_synced"] == 3 and payload["users_failed"] == 0
    assert {
        "user_id",
        "status",
        "records_fetched",
        "records_stored",
        "records_skipped",
        "attempts",
        "errors",
    } <= set(payload["users"][0])


def test_command_fails_when_a_user_fails_but_still_prints_the_summary(
    junction_config: JunctionSyncConfig,
) -> None:
    out = io.StringIO()
    with (
        override_settings(JUNCTION_SYNC=junction_config.replace(api_key="wrong")),
        pytest.raises(CommandError),
    ):
        call_command("sync_wearables", "--lookback-days", "1", stdout=out)
    assert "credentials rejected" in out.getvalue()


def test_command_without_an_api_key_says_which_setting_is_missing() -> None:
    with (
        override_settings(JUNCTION_SYNC=JunctionSyncConfig()),
        pytest.raises(CommandError, match="JUNCTION_API_KEY"),
    ):
        call_command("sync_wearables", stdout=io.StringIO())
