"""WHOOP, Dexcom and Libre syncs end to end over real HTTP against the sandbox, one test per rule and per row of
the error table (token expired, refresh failed, rate limited, API unavailable, invalid data, network timeout)."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.db import connection as db
from django.test import override_settings

from connections.config import DirectProvidersConfig
from connections.models import (
    Connection,
    ConnectionStatus,
    Provider,
    ProviderCredential,
    SyncEvent,
    SyncStatus,
)
from readings.models import GlucoseReading, WearableReading
from sandbox import SandboxServer
from tests.direct_helpers import (
    CGM_JOB,
    WHOOP_JOB,
    connect,
    expire_stored_token,
    requests_to,
    run_direct_job,
    sync,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_time")]
MGDL_PER_MMOLL = 18.0156


# --- WHOOP --------------------------------------------------------------------------------------------------


def test_whoop_sync_stores_recovery_strain_sleep_and_workouts(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer, frozen_time: datetime
) -> None:
    connection = connect(clean_sandbox, direct_config, Provider.WHOOP, 2)

    summary = sync(connection, direct_config)

    assert summary.status == "success", summary.errors
    metrics = set(WearableReading.objects.filter(patient=connection.patient).values_list("metric", flat=True))
    assert {
        "recovery_score",
        "strain",
        "sleep_duration",
        "sleep_rem",
        "workout_strain",
        "recovery_resting_heart_rate",
    } <= metrics
    start = frozen_time - timedelta(days=direct_config.whoop_initial_days)
    sleeps = clean_sandbox.whoop.records(2, "activity/sleep", start, frozen_time)
    scored = [s for s in sleeps if s["score_state"] == "SCORED"]
    assert WearableReading.objects.filter(patient=connection.patient, metric="sleep_duration").count() == len(
        scored
    )
    workouts = clean_sandbox.whoop.records(2, "activity/workout", start, frozen_time)
    assert WearableReading.objects.filter(
        patient=connection.patient, metric="workout_duration"
    ).count() == len(workouts)
    # Paginated at the documented maximum of 25 with nextToken.
    cycle_pages = requests_to(clean_sandbox, "whoop", "/developer/v2/cycle")
    assert all(r["query"]["limit"] == "25" for r in cycle_pages)
    assert any("nextToken" in r["query"] for r in cycle_pages) or len(cycle_pages) == 1


def test_whoop_pending_score_is_fetched_again_until_scored_and_then_updates_in_place(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer, frozen_time: datetime
) -> None:
    config = direct_config.replace(whoop_overlap_hours=0)
    connection = connect(clean_sandbox, config, Provider.WHOOP, 1)
    clean_sandbox.whoop.score_delay = timedelta(hours=30)  # the last night and day are not scored yet
    first = sync(connection, config)
    pending_since = ProviderCredential.objects.get(connection=connection).pending_since
    rows_before = WearableReading.objects.filter(patient=connection.patient).count()
    assert first.status == "success" and pending_since is not None
    assert pending_since < frozen_time - timedelta(hours=12)

    clean_sandbox.whoop.score_delay = timedelta(0)  # WHOOP finished scoring
    with time_machine.travel(frozen_time + timedelta(minutes=1), tick=False):
        second = sync(connection, config)

    assert second.status == "success"
    event = SyncEvent.objects.filter(connection=connection).latest("started_at")
    assert event.window_start <= pending_since  # the unscored records were asked for again
    patient_rows = WearableReading.objects.filter(patient=connection.patient)
    assert patient_rows.count() > rows_before
    end = frozen_time + timedelta(minutes=1)
    sleeps = clean_sandbox.whoop.records(1, "activity/sleep", end - timedelta(days=14), end, now=end)
    scored = [s for s in sleeps if s["score_state"] == "SCORED"]
    assert patient_rows.filter(metric="sleep_duration").count() == len(scored)  # no duplicates
    assert ProviderCredential.objects.get(connection=connection).pending_since > pending_since


def test_rerunning_sync_whoop_data_stores_nothing_new(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:
    ids = [connect(clean_sandbox, direct_config, Provider.WHOOP, i).pk for i in (1, 2)]
    first = run_direct_job(WHOOP_JOB, direct_config, connection_ids=ids)
    count = WearableReading.objects.count()

    second = run_direct_job(WHOOP_JOB, direct_config, connection_ids=ids)

    assert first.ok and first.records_stored > 0
    assert second.ok and second.records_stored == 0
    assert WearableReading.objects.count() == count


def test_whoop_rate_limit_is_waited_out_using_x_ratelimit_reset(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer, settings: Any
) -> None:
    # The sandbox's limit is lowered far below our shared budget, as a stricter provider would be: our budget
    # does not know it, so the 429 comes, and must be waited out.
    settings.PROVIDER_BUDGETS = {**settings.PROVIDER_BUDGETS, "whoop": []}
    connection = connect(clean_sandbox, direct_config, Provider.WHOOP, 3)
    clean_sandbox.whoop.per_minute = 2
    clean_sandbox.whoop.minute_seconds = 0.5

    summary = sync(connection, direct_config)

    assert summary.status == "success", summary.errors
    limited = [r for r in requests_to(clean_sandbox, "whoop", "/developer/") if r["status"] == 429]
    assert limited, "the sandbox never rate limited: the test proves nothing"


# --- Dexcom -------------------------------------------------------------------------------------------------


def test_dexcom_sync_stores_mg_dl_with_original_value_unit_trend_and_device(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer, frozen_time: datetime
) -> None:
    mmol = connect(clean_sandbox, direct_config, Provider.DEXCOM, 5)  # user 5 reports mmol/L
    receiver = connect(
        clean_sandbox, direct_config, Provider.DEXCOM, 2
    )  # receiver: systemTime without seconds
    clean_sandbox.requests.clear()

    assert sync(mmol, direct_config).status == "success"
    assert sync(receiver, direct_config).status == "success"

    row = GlucoseReading.objects.filter(patient=mmol.patient).order_by("measured_at").first()
    assert row is not None and row.original_unit == "mmol/L"
    assert row.value_mg_dl == pytest.approx(round(row.original_value * MGDL_PER_MMOLL, 1))
    assert row.trend and row.device and row.trend_rate is not None
    served = clean_sandbox.dexcom.egvs(2, frozen_time - timedelta(days=2), frozen_time)
    newest = max(datetime.fromisoformat(r["systemTime"].replace("Z", "+00:00")) for r in served)
    stored = GlucoseReading.objects.filter(patient=receiver.patient)
    first_day = newest - timedelta(days=direct_config.cgm_initial_days)
    assert stored.count() == len(
        [r for r in served if datetime.fromisoformat(r["systemTime"].replace("Z", "+00:00")) >= first_day]
    )
    assert all(r.original_unit == "mg/dL" and r.measured_at.second == 0 for r in stored)
    # dataRange only for the first sync; the cursor is the newest reading, not the wall clock (1 h delay).
    assert len(requests_to(clean_sandbox, "dexcom", "dataRange")) == 2
    receiver.refresh_from_db()
    assert receiver.last_sync_at == newest and receiver.last_sync_at < frozen_time - timedelta(minutes=59)


@override_settings(PROVIDER_HTTP_TIMEOUT=15.0)  # the sandbox builds a 30-day window in about a second
def test_dexcom_backfill_longer_than_30_days_is_split_into_windows(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:
    config = direct_config.replace(cgm_initial_days=45, cgm_max_lookback_days=60)
    connection = connect(clean_sandbox, config, Provider.DEXCOM, 1)

    summary = sync(connection, config)

    assert summary.status == "success", summary.errors
    windows = requests_to(clean_sandbox, "dexcom", "/egvs")
    assert len(windows) == 2 and all(r["status"] == 200 for r in windows)
    assert GlucoseReading.objects.filter(patient=connection.patient).count() > 45 * 280


def test_dexcom_late_data_is_picked_up_by_the_overlap(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer, frozen_time: datetime
) -> None:
    connection = connect(clean_sandbox, direct_config, Provider.DEXCOM, 1)
    clean_sandbox.dexcom.delay = timedelta(hours=3)
    sync(connection, direct_config)
    before = GlucoseReading.objects.filter(patient=connection.patient).count()

    clean_sandbox.dexcom.delay = timedelta(hours=1)  # the late readings arrive
    summary = sync(connection, direct_config)

    assert summary.status == "success"
    assert summary.records_stored == 24  # two hours of 5-minute readings, nothing else
    assert GlucoseReading.objects.filter(patient=connection.patient).count() == before + 24


def test_rerunning_sync_cgm_readings_stores_nothing_new(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:
    ids = [
        connect(clean_sandbox, direct_config, p, i).pk
        for p in (Provider.DEXCOM, Provider.LIBRE)
        for i in (1, 2)
    ]
    first = run_direct_job(CGM_JOB, direct_config, connection_ids=ids)
    count = GlucoseReading.objects.count()

    second = run_direct_job(CGM_JOB, direct_config, connection_ids=ids)

    assert first.ok and first.records_stored > 0
    assert second.ok and second.records_stored == 0 and GlucoseReading.objects.count() == count


# --- Libre ----------------------------------------------------------------------------------------------------


def test_libre_login_follows_the_region_redirect_and_graph_is_stored_by_factory_timestamp(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer, frozen_time: datetime
) -> None:
    user = clean_sandbox.libre.user(1)
    assert user.region != "us"
    connection = connect(clean_sandbox, direct_config, Provider.LIBRE, 1)

    summary = sync(connection, direct_config)

    assert summary.status == "success", summary.errors
    logins = requests_to(clean_sandbox, "libre", "/llu/auth/login")
    assert [r["path"] for r in logins] == [
        "/libre/llu/auth/login",
        f"/libre/api-{user.region}/llu/auth/login",
    ]
    points = clean_sandbox.libre.graph_points(1)
    rows = GlucoseReading.objects.filter(patient=connection.patient).order_by("measured_at")
    assert rows.count() == len(points) + 1  # the history plus the current reading
    newest = rows.last()
    assert newest is not None and newest.trend and newest.measured_at <= frozen_time
    assert newest.measured_at > frozen_time - timedelta(minutes=5)  # UTC, not the wearer's wall clock
    credential = ProviderCredential.objects.get(connection=connection)
    assert credential.region == user.region and credential.libre_patient_id == user.patient_id


def test_libre_mmol_user_keeps_original_value_and_unit(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:
    connection = connect(clean_sandbox, direct_config, Provider.LIBRE, 4)  # user 4 reads mmol/L
    sync(connection, direct_config)
    row = GlucoseReading.objects.filter(patient=connection.patient).first()
    assert row is not None and row.original_unit == "mmol/L"
    assert abs(row.original_value * MGDL_PER_MMOLL - row.value_mg_dl) < 1.0


def test_libre_expired_ticket_logs_in_again(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:
    connection = connect(clean_sandbox, direct_config, Provider.LIBRE, 2)
    clean_sandbox.libre.expire_tickets(2)
    logins = clean_sandbox.libre.logins

    summary = sync(connection, direct_config)

    assert summary.status == "success", summary.errors
    assert clean_sandbox.libre.logins == logins + 1


def test_libre_old_version_header_fails_without_deactivating(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:
    connection = connect(clean_sandbox, direct_config, Provider.LIBRE, 2)
    clean_sandbox.libre.min_version = "9.0.0"  # LibreLinkUp raised its minimum

    summary = sync(connection, direct_config)

    connection.refresh_from_db()
    assert summary.status == "failed" and "status 920" in summary.errors[-1]
    assert summary.attempts == 1  # retrying cannot help; an operator must raise LIBRE_VERSION
    assert connection.status == ConnectionStatus.ACTIVE


def test_libre_heavy_polling_429_is_waited_out(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer, settings: Any
) -> None:
    # The sandbox's limit is lowered far below our per-account budget, as a stricter provider would be: our
    # budget does not know it, so the 429 comes, and must be waited out.
    settings.PROVIDER_BUDGETS = {**settings.PROVIDER_BUDGETS, "libre": []}
    connection = connect(clean_sandbox, direct_config, Provider.LIBRE, 3)
    clean_sandbox.libre.poll_limit = 1
    clean_sandbox.libre.poll_window = 0.5
    sync(connection, direct_config)

    summary = sync(connection, direct_config)

    assert summary.status == "success", summary.errors
    assert any(r["status"] == 429 for r in requests_to(clean_sandbox, "libre", "/graph"))


def test_libre_changed_password_marks_the_connection_inactive(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:
    connection = connect(clean_sandbox, direct_config, Provider.LIBRE, 5)
    ProviderCredential.objects.filter(connection=connection).update(expires_at=None)
    credential = ProviderCredential.objects.get(connection=connection)
    credential.libre_password = "not-the-password"
    credential.save()

    summary = sync(connection, direct_config)

    connection.refresh_from_db()
    assert summary.status == "failed"
    assert connection.status == ConnectionStatus.INACTIVE and "reconnect" in connection.status_reason


# --- The error table ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", [Provider.WHOOP, Provider.DEXCOM])
def test_expired_token_is_refreshed_once_and_the_new_pair_saved(
    provider: str, direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:
    connection = connect(clean_sandbox, direct_config, provider, 1)
    before = ProviderCredential.objects.get(connection=connection)
    expire_stored_token(connection)
    oauth = getattr(clean_sandbox, provider).oauth
    oauth.expire_access_tokens()

    summary = sync(connection, direct_config)

    after = ProviderCredential.objects.get(connection=connection)
    assert summary.status == "success", summary.errors
    assert oauth.refresh_calls() == 1
    assert after.refresh_token != before.refresh_token and after.access_token != before.access_token


def test_a_401_on_a_data_call_refreshes_and_repeats_the_call(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:
    connection = connect(clean_sandbox, direct_config, Provider.DEXCOM, 3)
    clean_sandbox.dexcom.oauth.expire_access_tokens()  # our stored expires_at still says "valid"

    summary = sync(connection, direct_config)

    assert summary.status == "success", summary.errors
    assert clean_sandbox.dexcom.oauth.refresh_calls() == 1


@pytest.mark.parametrize("provider", [Provider.WHOOP, Provider.DEXCOM])
def test_failed_refresh_marks_inactive_records_why_and_the_next_run_skips_it(
    provider: str, direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:
    connection = connect(clean_sandbox, direct_config, provider, 2)
    oauth = getattr(clean_sandbox, provider).oauth
    oauth.revoke_refresh_tokens(2)  # the patient revoked us in the provider's app
    expire_stored_token(connection)
    secret = ProviderCredential.objects.get(connection=connection).refresh_token
    job = WHOOP_JOB if provider == Provider.WHOOP else CGM_JOB

    result = run_direct_job(job, direct_config, connection_ids=[connection.pk])

    connection.refresh_from_db()
    assert result.users_failed == 1
    assert connection.status == ConnectionStatus.INACTIVE
    assert "invalid_grant" in connection.status_reason and "reconnect" in connection.status_reason
    event = SyncEvent.objects.get(connection=connection)
    assert event.status == SyncStatus.FAILED and "invalid_grant" in event.error and event.attempts == 1
    assert secret not in event.error and secret not in connection.status_reason
    assert oauth.refresh_calls() == 1  # no retry storm

    clean_sandbox.requests.clear()
    again = run_direct_job(job, direct_config, connection_ids=[connection.pk])
    assert again.users == [] and clean_sandbox.requests.snapshot(provider=provider) == []
    assert SyncEvent.objects.filter(connection=connection).count() == 1


def test_invalid_grant_after_another_writer_rotated_the_pair_uses_the_stored_token(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:
    from connections.providers.oauth2 import OAuthGrantError
    from connections.providers.whoop.client import WhoopClient
    from connections.tokens import refresh_access_token

    connection = connect(clean_sandbox, direct_config, Provider.WHOOP, 4)
    expire_stored_token(connection)
    client = WhoopClient.from_config(direct_config)

    def refresher_losing_a_race(credential: ProviderCredential):  # type: ignore[no-untyped-def]
        # Another writer (a reconnect) spends the token and stores the new pair before our call lands.
        winner = client.refresh(credential.refresh_token)
        ProviderCredential.objects.filter(pk=credential.pk).update(expires_at=winner.expires_at)
        rotated = ProviderCredential.objects.get(pk=credential.pk)
        rotated.access_token, rotated.refresh_token = winner.access_token, winner.refresh_token
        rotated.save(update_fields=["access_token", "refresh_token"])
        return client.refresh(credential.refresh_token)  # ours: the spent token -> invalid_grant

    with pytest.raises(OAuthGrantError):
        client.refresh("never-issued")
    token = refresh_access_token(connection, refresher_losing_a_race, margin=timedelta(minutes=5))

    connection.refresh_from_db()
    assert token == ProviderCredential.objects.get(connection=connection).access_token
    assert connection.status == ConnectionStatus.ACTIVE
    client.close()


def test_api_unavailable_is_retried_three_times_then_that_connection_is_skipped(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:
    broken = connect(clean_sandbox, direct_config, Provider.DEXCOM, 1)
    healthy = connect(clean_sandbox, direct_config, Provider.LIBRE, 1)
    clean_sandbox.faults.add({"provider": "dexcom", "path_contains": "/v3/", "status": 503, "count": -1})

    result = run_direct_job(CGM_JOB, direct_config, connection_ids=[broken.pk, healthy.pk])

    by_id = {u.user_id: u for u in result.users}
    assert by_id[str(broken.pk)].status == "failed" and by_id[str(broken.pk)].attempts == 3
    assert by_id[str(healthy.pk)].status == "success"
    broken.refresh_from_db()
    assert (
        broken.status == ConnectionStatus.ACTIVE
        and broken.failure_streak == 1
        and broken.last_sync_at is None
    )


def test_a_transient_503_is_retried_and_the_sync_succeeds(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:
    connection = connect(clean_sandbox, direct_config, Provider.DEXCOM, 2)
    clean_sandbox.faults.add({"provider": "dexcom", "path_contains": "/egvs", "status": 503, "count": 2})
    assert sync(connection, direct_config).status == "success"


def test_invalid_reading_is_logged_without_values_and_skipped(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer, caplog: pytest.LogCaptureFixture
) -> None:
    connection = connect(clean_sandbox, direct_config, Provider.DEXCOM, 4)
    clean_sandbox.faults.add(
        {"provider": "dexcom", "path_contains": "/egvs", "kind": "malformed", "mode": "value"}
    )

    with caplog.at_level(logging.WARNING, logger="loopsync"):
        summary = sync(connection, direct_config)

    assert summary.status == "success" and summary.records_skipped == 1
    assert summary.records_stored == summary.records_fetched - 1
    warnings = [r for r in caplog.records if r.getMessage() == "skipped invalid record"]
    assert len(warnings) == 1 and "abc" not in str(warnings[0].__dict__)


@override_settings(PROVIDER_HTTP_TIMEOUT=0.3)
def test_network_timeout_is_retried(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:
    connection = connect(clean_sandbox, direct_config, Provider.LIBRE, 6)
    clean_sandbox.faults.add(
        {"provider": "libre", "path_contains": "/graph", "kind": "timeout", "delay": 0.8}
    )

    summary = sync(connection, direct_config)

    assert summary.status == "success", summary.errors
    time.sleep(1.0)  # the sandbox logs the timed-out request once its delay is over
    assert len(requests_to(clean_sandbox, "libre", "/graph")) == 2


def test_credentials_are_encrypted_in_the_database(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:
    connection = connect(clean_sandbox, direct_config, Provider.LIBRE, 1)
    credential = ProviderCredential.objects.get(connection=connection)
    with db.cursor() as cursor:
        cursor.execute(
            "SELECT access_token, libre_password FROM provider_credentials WHERE connection_id = %s",
            [connection.pk],
        )
        stored_token, stored_password = cursor.fetchone()
    assert stored_token.startswith("fernet:") and credential.access_token not in stored_token
    assert stored_password.startswith("fernet:") and "sandbox-password" not in stored_password
    assert credential.libre_password == clean_sandbox.libre.user(1).password


def test_the_engine_syncs_a_direct_provider_and_returns_the_event_it_wrote(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:
    from connections.engine import sync_connection

    connection = connect(clean_sandbox, direct_config, Provider.DEXCOM, 6)
    event = sync_connection(Connection.objects.get(pk=connection.pk), trigger="manual", actor="patient")
    assert event == SyncEvent.objects.get(connection=connection)
    assert event.status == "success" and event.actor == "patient" and event.records_stored > 0


def test_scheduled_cgm_job_fans_out_and_its_run_counts_every_connection(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:
    from connections import tasks
    from connections.models import JobRun, JobRunStatus

    for provider in (Provider.DEXCOM, Provider.LIBRE):
        connect(clean_sandbox, direct_config, provider, 1)

    result = tasks.sync_job(CGM_JOB)  # django-q2 sync mode: each connection task runs as it is queued

    run = JobRun.objects.get(job=CGM_JOB)
    assert result["job_run_id"] == run.pk and result["connections_queued"] == 2
    assert (run.status, run.users_expected, run.users_synced, run.users_failed) == (
        JobRunStatus.SUCCESS,
        2,
        2,
        0,
    )
    assert run.records_stored == GlucoseReading.objects.count() > 0


def test_every_metric_a_whoop_sync_stores_is_one_the_read_api_accepts(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:
    from readings.api import known_metrics

    connection = connect(clean_sandbox, direct_config, Provider.WHOOP, 2)
    sync(connection, direct_config)

    stored = set(WearableReading.objects.filter(patient=connection.patient).values_list("metric", flat=True))
    assert stored and stored <= known_metrics()
