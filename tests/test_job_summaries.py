"""Issue 17, item 15: one summary format for every job. Whichever job (a provider job inline or fanned out,
aggregation, cleanup, a manual sync, a Force resync), one log line in one format with one set of fields, and the
commands print that same line."""

from __future__ import annotations

import io
import logging
import re
from typing import Any

import pytest
from django.core.management import call_command
from django.test import override_settings

from connections import actions
from connections.config import JunctionSyncConfig
from connections.models import Connection, Patient, Provider, SyncRequest
from connections.tasks import sync_job
from sandbox import SandboxServer
from tests.api_helpers import wearable_of
from tests.direct_helpers import JUNCTION_JOB, run_wearable_sync_job

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_time")]

LINE = re.compile(
    r"^(?P<job>[a-z-]+) finished: (?P<status>success|partial|failed), (?P<synced>\d+)/(?P<expected>\d+) users "
    r"synced, (?P<failed>\d+) failed, (?P<skipped>\d+) skipped, (?P<records>\d+) records stored in [\d.]+ s$"
)
FIELDS = {
    "job",
    "job_run_id",
    "status",
    "duration_s",
    "users_expected",
    "users_synced",
    "users_failed",
    "users_skipped",
    "records_stored",
}


def summaries(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "loopsync.jobs" and " finished: " in r.getMessage()]


def only_summary(caplog: pytest.LogCaptureFixture, job: str) -> re.Match[str]:
    [record] = summaries(caplog)
    match = LINE.match(record.getMessage())
    assert match is not None, record.getMessage()
    assert match["job"] == job and FIELDS <= set(vars(record)), vars(record)
    assert int(match["records"]) == record.records_stored  # type: ignore[attr-defined]
    return match


@pytest.fixture
def configured(junction_config: JunctionSyncConfig) -> Any:
    with override_settings(JUNCTION_SYNC=junction_config):
        yield junction_config


def test_a_provider_job_run_inline_logs_one_summary_line(
    configured: JunctionSyncConfig, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="loopsync"):
        run_wearable_sync_job(configured)
    match = only_summary(caplog, JUNCTION_JOB)
    assert (match["synced"], match["expected"], match["status"]) == ("3", "3", "success")


def test_a_fanned_out_provider_job_logs_the_same_line(
    configured: JunctionSyncConfig, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="loopsync"):
        sync_job(JUNCTION_JOB)
    assert only_summary(caplog, JUNCTION_JOB)["synced"] == "3"


@pytest.mark.parametrize(
    ("job", "args"), [("aggregate-wearable-data", []), ("cleanup-wearable-data", ["--dry-run"])]
)
def test_the_readings_jobs_log_and_print_the_same_line(
    job: str, args: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    out = io.StringIO()
    with caplog.at_level(logging.INFO, logger="loopsync"):
        call_command("run_job", job, *args, stdout=out)
    logged = only_summary(caplog, job).group(0)
    assert out.getvalue().splitlines()[0] == logged


def test_sync_wearables_prints_the_same_line(
    configured: JunctionSyncConfig, caplog: pytest.LogCaptureFixture
) -> None:
    out = io.StringIO()
    with caplog.at_level(logging.INFO, logger="loopsync"):
        call_command("sync_wearables", stdout=out)
    logged = only_summary(caplog, JUNCTION_JOB).group(0)
    assert logged in out.getvalue().splitlines()


def test_a_manual_sync_and_a_force_resync_log_the_same_line(
    configured: JunctionSyncConfig,
    clean_sandbox: SandboxServer,
    caplog: pytest.LogCaptureFixture,
    django_capture_on_commit_callbacks: Any,
    settings: Any,
) -> None:
    settings.JUNCTION_SYNC = configured
    patient = Patient.objects.create(junction_user_id=configured.user_ids[0])
    connection = Connection.objects.create(patient=patient, provider=Provider.JUNCTION)
    request = SyncRequest.objects.create(
        patient=patient, source=wearable_of(clean_sandbox, patient), connection=connection
    )

    with caplog.at_level(logging.INFO, logger="loopsync"):
        actions.do_manual_sync(request.pk)
    manual = only_summary(caplog, "manual-sync")
    assert (manual["status"], manual["synced"], manual["expected"]) == ("success", "1", "1")

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="loopsync"), django_capture_on_commit_callbacks(execute=True):
        actions.do_request_resync(connection, actor="olivia-ops")
    resync = only_summary(caplog, "connection-resync")
    assert (resync["status"], resync["synced"]) == ("success", "1")
