"""One truth per measurement (issue 13): each finding's regression test."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
import time_machine
from django.db import transaction

from connections.models import Patient
from connections.providers.libre.client import parse_graph
from readings.aggregate import run_aggregation
from readings.models import DailyStat, GlucoseReading
from readings.partitions import ensure_partitions
from readings.retention import retention_cutoff, run_cleanup
from readings.store import store_batch

pytestmark = pytest.mark.django_db


def at(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(sep=" ")


def store(patient: Patient, readings: list, glucose: list | None = None, connection_id: int | None = None):  # type: ignore[no-untyped-def]
    with transaction.atomic():
        return store_batch(
            patient.pk, patient.time_zone, readings, glucose or [], connection_id=connection_id
        )


def hr(moment: datetime, value: float = 60.0, source: str = "oura") -> tuple:
    return ("heart_rate", source, "ring", at(moment), None, value, "bpm")


def steps(moment: datetime, value: float) -> tuple:
    return ("steps", "garmin", "watch", at(moment), at(moment + timedelta(minutes=15)), value, "count")


def cgm(moment: datetime, value: float = 100.0, source: str = "dexcom") -> tuple:
    return (source, at(moment), value, value, "mg/dL", "", None, "automatic")


def factory_timestamp(moment: datetime) -> str:
    hour = moment.hour % 12 or 12
    return f"{moment.month}/{moment.day}/{moment.year} {hour}:{moment:%M:%S} {'AM' if moment.hour < 12 else 'PM'}"


# --- Item 5: Libre direct has its own source name ----------------------------------------------------------


def test_libre_direct_and_junctions_freestyle_libre_copy_of_one_instant_are_two_rows_that_never_flip() -> (
    None
):
    patient = Patient.objects.create(time_zone="Europe/Berlin")
    moment = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    graph = {
        "graphData": [{"FactoryTimestamp": factory_timestamp(moment), "ValueInMgPerDl": 143, "Value": 143}]
    }
    direct = parse_graph(graph, since=None).glucose
    relayed = [("freestyle_libre", at(moment), 152.3, 8.45, "mmol/L", "", None, "automatic")]

    store(patient, [], direct)
    store(patient, [], relayed)
    store(patient, [], direct)

    rows = sorted(GlucoseReading.objects.filter(patient=patient).values_list("source", "value_mg_dl"))
    assert len(rows) == 2 and {source for source, _ in rows} == {"freestyle_libre", direct[0][0]}
    assert dict(rows)[direct[0][0]] == 143.0 and dict(rows)["freestyle_libre"] == 152.3


# --- Item 8: the cleanup report counts dropped partitions exactly --------------------------------------------


# Committed rows, as in production: a partition with the test transaction's pending row checks cannot be dropped.
@pytest.mark.django_db(transaction=True)
def test_cleanup_reports_the_exact_rows_and_patients_of_the_partitions_it_drops() -> None:
    now = datetime(2025, 11, 20, 12, 0, tzinfo=UTC)
    with time_machine.travel(now, tick=False):
        patients = [Patient.objects.create(time_zone="UTC") for _ in range(3)]
        cutoff = retention_cutoff(now)
        old_week = cutoff - timedelta(days=30)
        with transaction.atomic():
            ensure_partitions(old_week, now)
        for index, patient in enumerate(patients):
            rows = [hr(old_week + timedelta(minutes=n)) for n in range(50 + index)]
            store(patient, rows, [cgm(old_week + timedelta(minutes=5 * n)) for n in range(7)])

        result = run_cleanup()

        assert result.partitions_dropped
        wearable = next(
            r for r in result.removals if r.table == "patient_wearable_readings" and r.reason == "retention"
        )
        glucose = next(
            r for r in result.removals if r.table == "patient_glucose_readings" and r.reason == "retention"
        )
        assert (wearable.rows, wearable.patients) == (50 + 51 + 52, 3)
        assert (glucose.rows, glucose.patients) == (21, 3)


# --- Item 9: rolling averages of summed metrics are averages of daily totals ---------------------------------


def test_rolling_steps_are_the_average_daily_total_over_the_days_with_data_day_d_included() -> None:
    now = datetime(2025, 11, 20, 12, 0, tzinfo=UTC)
    with time_machine.travel(now, tick=False):
        patient = Patient.objects.create(time_zone="America/New_York")
        first = datetime(2025, 11, 3, 5, 0, tzinfo=UTC)  # local midnight in New York
        # Day 0: 96 quarter-hours of 100 steps (9,600); day 1: no data; day 2: 48 of 100 (4,800).
        rows = [steps(first + timedelta(minutes=15 * n), 100.0) for n in range(96)]
        rows += [steps(first + timedelta(days=2, minutes=15 * n), 100.0) for n in range(48)]
        store(patient, rows)

        run_aggregation()

        stats = {s.day: s for s in DailyStat.objects.filter(patient=patient, metric="steps")}
        third = stats[date(2025, 11, 5)]
        assert third.sum == 4_800
        assert third.avg_7d == pytest.approx((9_600 + 4_800) / 2)  # not 100 per quarter-hour, not / 3 days
        assert third.avg_30d == pytest.approx((9_600 + 4_800) / 2)
        assert stats[date(2025, 11, 3)].avg_7d == pytest.approx(9_600)


def test_every_metric_a_provider_stores_is_in_the_catalogue_and_summed_ones_are_totals() -> None:
    from connections.providers.registry import PROVIDERS
    from readings.catalogue import CATALOGUE, SUMMED_METRICS

    for provider in PROVIDERS.values():
        assert set(provider.metrics) <= CATALOGUE.keys(), provider.key
    assert {"steps", "activity_steps", "calories_total", "workout_duration", "sleep_total"} <= SUMMED_METRICS
    assert not {"heart_rate", "glucose", "blood_oxygen", "sleep_efficiency"} & SUMMED_METRICS


def test_whoop_and_junction_never_share_a_name_for_measurements_that_differ() -> None:
    from connections.providers.junction.provider import JunctionProvider
    from connections.providers.whoop.provider import WhoopProvider

    shared = set(WhoopProvider.metrics) & set(JunctionProvider.metrics)
    assert not shared & {"resting_heart_rate", "blood_oxygen", "calories_total"}


# --- Item 6: units are read, not assumed ---------------------------------------------------------------------


def hrv_page(*samples: tuple[str | None, float]) -> dict:
    data = [
        {"timestamp": f"2026-03-01T0{n}:00:00+00:00", "value": value, **({"unit": unit} if unit else {})}
        for n, (unit, value) in enumerate(samples)
    ]
    return {
        "groups": {
            "apple_health_kit": [{"source": {"provider": "apple_health_kit", "type": "watch"}, "data": data}]
        }
    }


def test_hrv_reported_as_sdnn_is_stored_as_hrv_sdnn_and_an_unknown_unit_is_skipped_with_a_warning(
    caplog,
) -> None:  # type: ignore[no-untyped-def]
    from connections.providers.junction.client import TIMESERIES, parse_timeseries

    spec = next(s for s in TIMESERIES if s.resource == "hrv")
    with caplog.at_level("WARNING", logger="loopsync.providers.junction"):
        parsed = parse_timeseries(
            spec, hrv_page(("rmssd", 40.0), ("sdnn", 55.0), ("beats", 42.0), (None, 43.0))
        )

    assert [(row[0], row[5], row[6]) for row in parsed.readings] == [
        ("hrv_rmssd", 40.0, "ms"),
        ("hrv_sdnn", 55.0, "ms"),
    ]
    assert parsed.skipped == 2
    warned = [r for r in caplog.records if r.getMessage() == "skipped samples in an unknown unit"]
    assert {r.unit for r in warned} == {"beats", "missing"}
    assert all(not hasattr(r, "value") and "42" not in r.getMessage() for r in warned)  # values are PHI


def test_a_junction_sync_of_an_apple_health_user_stores_sdnn_apart_from_rmssd(
    clean_sandbox, frozen_time
) -> None:  # type: ignore[no-untyped-def]
    from connections.config import JunctionSyncConfig
    from readings.models import WearableReading
    from tests.conftest import SANDBOX_KEY
    from tests.direct_helpers import run_wearable_sync_job

    apple = next(
        u
        for u in clean_sandbox.junction.user_ids
        if clean_sandbox.junction.user(u).provider == "apple_health_kit"
    )
    config = JunctionSyncConfig(
        api_key=SANDBOX_KEY, base_url_override=clean_sandbox.junction_url, user_ids=(apple,), lookback_days=2
    )

    assert run_wearable_sync_job(config).ok
    patient = Patient.objects.get(junction_user_id=apple)
    metrics = set(WearableReading.objects.filter(patient=patient).values_list("metric", flat=True))
    assert "hrv_sdnn" in metrics and "hrv_rmssd" not in metrics


def test_the_readme_carries_the_catalogue_table_as_declared() -> None:
    from pathlib import Path

    from readings.catalogue import markdown_table

    assert markdown_table() in (Path(__file__).resolve().parent.parent / "README.md").read_text()


# --- Items 1 and 2: day-level summaries keep their date; every zone change rebuilds exactly -----------------


def oracle_daily(patient: Patient) -> dict[tuple[str, date], tuple[int, float]]:
    """(metric, local day) -> (count, sum) from the raw rows, bucketed in Python in the patient's zone."""
    from zoneinfo import ZoneInfo

    from readings.models import WearableReading

    tz = ZoneInfo(Patient.objects.get(pk=patient.pk).time_zone)
    out: dict[tuple[str, date], tuple[int, float]] = {}
    for metric, moment, value in WearableReading.objects.filter(patient=patient).values_list(
        "metric", "measured_at", "value"
    ):
        key = (metric, moment.astimezone(tz).date())
        count, total = out.get(key, (0, 0.0))
        out[key] = (count + 1, total + value)
    return out


def stored_daily(patient: Patient) -> dict[tuple[str, date], tuple[int, float]]:
    return {(s.metric, s.day): (s.count, s.sum) for s in DailyStat.objects.filter(patient=patient)}


def test_a_zone_edited_in_the_admin_form_rebuilds_the_patients_days(client) -> None:  # type: ignore[no-untyped-def]
    from django.contrib.auth.models import User
    from django.urls import reverse

    now = datetime(2025, 11, 20, 12, 0, tzinfo=UTC)
    with time_machine.travel(now, tick=False):
        patient = Patient.objects.create(time_zone="UTC")
        store(patient, [hr(now - timedelta(days=3, hours=h)) for h in range(0, 48, 3)])
        run_aggregation()
        User.objects.create_superuser("root", "root@example.com", "pw")
        client.login(username="root", password="pw")

        response = client.post(
            reverse("admin:connections_patient_change", args=[patient.pk]),
            {
                "junction_user_id": "",
                "clerk_user_id": "",
                "time_zone": "Pacific/Kiritimati",
                "connections-TOTAL_FORMS": "0",
                "connections-INITIAL_FORMS": "0",
                "connections-MIN_NUM_FORMS": "0",
                "connections-MAX_NUM_FORMS": "1000",
                "route_priorities-TOTAL_FORMS": "0",
                "route_priorities-INITIAL_FORMS": "0",
                "route_priorities-MIN_NUM_FORMS": "0",
                "route_priorities-MAX_NUM_FORMS": "1000",
            },
        )

        assert response.status_code == 302, response.content[:2000]
        patient.refresh_from_db()
        assert patient.time_zone == "Pacific/Kiritimati"
        assert stored_daily(patient) == pytest.approx(oracle_daily(patient))


def test_full_rebuild_after_a_zone_edited_in_sql_leaves_no_stale_day_inside_the_horizon() -> None:
    now = datetime(2025, 11, 20, 12, 0, tzinfo=UTC)
    with time_machine.travel(now, tick=False):
        patient = Patient.objects.create(time_zone="Pacific/Kiritimati")
        store(patient, [hr(now - timedelta(days=5, hours=h)) for h in range(0, 72, 5)])
        run_aggregation()
        Patient.objects.filter(pk=patient.pk).update(
            time_zone="Pacific/Pago_Pago"
        )  # as an UPDATE in SQL would

        run_aggregation(full=True)

        assert stored_daily(patient) == pytest.approx(oracle_daily(patient))
        assert run_aggregation(full=True).daily_rows_changed == 0


def test_a_day_level_summary_is_stored_on_its_calendar_date_whatever_the_zone() -> None:
    from zoneinfo import ZoneInfo

    from connections.providers.junction.client import parse_summaries

    now = datetime(2025, 11, 20, 12, 0, tzinfo=UTC)
    record = {
        "id": "a1",
        "calendar_date": "2025-11-18",
        "steps": 6642,
        "source": {"provider": "oura", "type": "ring"},
    }
    with time_machine.travel(now, tick=False):
        stamps = {
            parse_summaries("activity", {"activity": [record]}, ZoneInfo(zone)).readings[0][3]
            for zone in ("Pacific/Kiritimati", "Pacific/Pago_Pago", "Asia/Kathmandu")
        }
        assert stamps == {"2025-11-18 00:00:00+00:00"}
        patient = Patient.objects.create(time_zone="Pacific/Kiritimati")
        store(
            patient,
            parse_summaries("activity", {"activity": [record]}, ZoneInfo("Pacific/Kiritimati")).readings,
        )
        assert DailyStat.objects.get(patient=patient, metric="activity_steps").day == date(2025, 11, 18)


# --- Item 4: the frozen horizon -------------------------------------------------------------------------------

HORIZON_NOW = datetime(2025, 11, 20, 12, 0, tzinfo=UTC)


@pytest.mark.django_db(transaction=True)
def test_a_late_reading_into_a_retired_day_neither_replaces_its_statistic_nor_is_stored(settings) -> None:  # type: ignore[no-untyped-def]
    from connections.engine import store_batch_and_cursor
    from connections.models import Connection, Provider
    from connections.providers.contract import Batch
    from readings.models import WearableReading
    from readings.writers import DatabaseWriter

    settings.RAW_READING_RETENTION_DAYS = 30
    patient = Patient.objects.create(time_zone="UTC")
    day = datetime(2025, 10, 1, tzinfo=UTC)
    with time_machine.travel(day + timedelta(days=2), tick=False):
        store(patient, [hr(day + timedelta(hours=h)) for h in range(24)])
        run_aggregation()
    with time_machine.travel(HORIZON_NOW, tick=False):  # 50 days later: the day's raw rows are retired
        run_cleanup()
        assert not WearableReading.objects.filter(patient=patient).exists()
        connection = Connection.objects.create(patient=patient, provider=Provider.JUNCTION)
        batch = Batch(
            readings=[hr(day + timedelta(minutes=30), 99.0), hr(HORIZON_NOW - timedelta(hours=1), 70.0)]
        )

        written = store_batch_and_cursor(connection, batch, DatabaseWriter())
        store(patient, [hr(day + timedelta(minutes=45), 98.0)])  # even written directly: the day is final
        run_aggregation()
        run_aggregation(full=True)

        assert written == 1 and batch.skipped == 1
        stat = DailyStat.objects.get(patient=patient, metric="heart_rate", day=day.date())
        assert stat.count == 24 and stat.max == 60.0


def test_the_ingest_api_refuses_a_reading_older_than_the_horizon_with_a_400_naming_it(
    settings, junction_config
) -> None:  # type: ignore[no-untyped-def]
    from rest_framework.test import APIClient

    settings.JUNCTION_SYNC = junction_config.replace(patient_graph_key="pg_test_key_0123456789")
    settings.RAW_READING_RETENTION_DAYS = 30
    Patient.objects.create(junction_user_id="jx-old", time_zone="UTC")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer pg_test_key_0123456789")
    row = {"metric": "heart_rate", "source": "oura", "source_type": "ring", "value": 61.0, "unit": "bpm"}
    with time_machine.travel(HORIZON_NOW, tick=False):
        response = client.post(
            "/api/patient-graph/service/ingest",
            {
                "junction_user_id": "jx-old",
                "readings": [
                    {**row, "measured_at": "2025-11-19T08:00:00+00:00"},
                    {**row, "measured_at": "2025-09-01T08:00:00+00:00"},
                ],
            },
            format="json",
        )

    assert response.status_code == 400
    details = response.json()
    assert "readings[1].measured_at" in str(details) and "horizon" in str(details)
    assert "readings[0]" not in str(details)


@pytest.mark.django_db(transaction=True)
def test_cleanup_duplicate_removal_never_shrinks_a_day_straddling_the_cutoff(settings) -> None:  # type: ignore[no-untyped-def]
    settings.RAW_READING_RETENTION_DAYS = 30
    patient = Patient.objects.create(time_zone="UTC")
    cutoff = HORIZON_NOW - timedelta(days=30)  # 2025-10-21 12:00 UTC: the day 2025-10-21 straddles it
    day = datetime(2025, 10, 21, tzinfo=UTC)
    with time_machine.travel(day + timedelta(days=1, hours=1), tick=False):
        store(patient, [hr(day + timedelta(minutes=20 * n)) for n in range(72)])
        # The same samples relayed again with sub-second stamps: duplicates for cleanup to tidy.
        store(
            patient,
            [hr(day + timedelta(minutes=20 * n, milliseconds=300), source="oura") for n in range(36, 72)],
        )
        run_aggregation()
    before = DailyStat.objects.get(patient=patient, metric="heart_rate", day=day.date())
    with time_machine.travel(HORIZON_NOW, tick=False):
        assert day < cutoff < day + timedelta(days=1)
        run_cleanup()
        run_aggregation()
        run_aggregation(full=True)

    after = DailyStat.objects.get(patient=patient, metric="heart_rate", day=day.date())
    assert (after.count, after.sum) == (before.count, before.sum)


# --- Item 3: one measurement by two routes is counted once ---------------------------------------------------


def test_dexcom_direct_plus_dexcom_through_junction_counts_288_readings_a_day_across_syncs_and_cleanups(
    clean_sandbox, direct_config, frozen_time
) -> None:  # type: ignore[no-untyped-def]
    import dataclasses
    from zoneinfo import ZoneInfo

    from connections.config import JunctionSyncConfig
    from connections.sandbox_setup import connect_sandbox_user
    from tests.conftest import SANDBOX_KEY
    from tests.direct_helpers import run_direct_job, run_wearable_sync_job

    junction_user = next(
        u
        for u in clean_sandbox.junction.user_ids
        if clean_sandbox.junction.user(u).cgm_provider == "dexcom_v3"
    )
    junction = JunctionSyncConfig(
        api_key=SANDBOX_KEY,
        base_url_override=clean_sandbox.junction_url,
        user_ids=(junction_user,),
        lookback_days=3,
    )
    direct = dataclasses.replace(direct_config, cgm_initial_days=4)
    assert run_wearable_sync_job(junction).ok
    patient = Patient.objects.get(junction_user_id=junction_user)
    dexcom = connect_sandbox_user(clean_sandbox, direct, "dexcom", 3, patient)

    def counted_days() -> dict[date, int]:
        tz = ZoneInfo(patient.time_zone)
        per_route: dict[date, dict[str, int]] = {}
        for source, moment in GlucoseReading.objects.filter(patient=patient).values_list(
            "source", "measured_at"
        ):
            day_routes = per_route.setdefault(moment.astimezone(tz).date(), {})
            day_routes[source] = day_routes.get(source, 0) + 1
        # Days both routes cover completely: 288 five-minute readings each.
        full = [d for d, routes in per_route.items() if len(routes) == 2 and set(routes.values()) == {288}]
        assert full, sorted(per_route.items())
        return {d: DailyStat.objects.get(patient=patient, metric="glucose", day=d).count for d in full}

    assert run_direct_job("sync-cgm-readings", direct, connection_ids=[dexcom.pk]).ok
    first = counted_days()
    assert set(first.values()) == {288}
    run_aggregation()
    assert set(counted_days().values()) == {288}

    def stat_counts() -> set[int]:
        return set(
            DailyStat.objects.filter(patient=patient, metric="glucose", day__in=list(first)).values_list(
                "count", flat=True
            )
        )

    for _ in range(2):
        run_cleanup()  # tidies the Junction copies away ...
        run_aggregation()
        assert stat_counts() == {288}
        assert run_wearable_sync_job(
            junction, force=True
        ).ok  # ... and the next Junction sync brings them back
        assert run_direct_job("sync-cgm-readings", direct, connection_ids=[dexcom.pk]).ok
        run_aggregation()
        assert counted_days() == first and stat_counts() == {288}
    run_aggregation(full=True)
    assert stat_counts() == {288}


def whoop_night(
    patient: Patient, junction_id: int, whoop_id: int, start: datetime, hours: float = 8.0
) -> None:
    """One night as both routes store it: Junction stamps the sleep at its end, WHOOP at its start."""
    end = start + timedelta(hours=hours)
    seconds = hours * 3600 - 1800
    store(patient, [("sleep_total", "whoop", "", at(end), None, seconds, "s")], connection_id=junction_id)
    store(patient, [("sleep_total", "whoop", "", at(start), at(end), seconds, "s")], connection_id=whoop_id)


def test_a_whoop_sleep_relayed_by_junction_and_synced_directly_counts_once_by_the_patients_best_route() -> (
    None
):
    from connections.models import Connection, Provider
    from readings.aggregate import rebuild_patient_days
    from readings.models import RoutePriority

    now = datetime(2025, 11, 20, 12, 0, tzinfo=UTC)
    with time_machine.travel(now, tick=False):
        patient = Patient.objects.create(time_zone="Europe/London")
        junction = Connection.objects.create(patient=patient, provider=Provider.JUNCTION)
        whoop = Connection.objects.create(patient=patient, provider=Provider.WHOOP)
        for night in range(3):
            whoop_night(patient, junction.pk, whoop.pk, datetime(2025, 11, 10 + night, 22, 30, tzinfo=UTC))
        run_aggregation()

        sleep = dict(
            DailyStat.objects.filter(patient=patient, metric="sleep_total").values_list("day", "count")
        )
        # WHOOP direct (priority 2) counts, on the evening's day; the Junction copy (morning) not at all.
        assert sleep == {date(2025, 11, 10): 1, date(2025, 11, 11): 1, date(2025, 11, 12): 1}

        RoutePriority.objects.create(patient=patient, source_family="whoop", provider="junction", priority=5)
        rebuild_patient_days(patient.pk)
        sleep = dict(
            DailyStat.objects.filter(patient=patient, metric="sleep_total").values_list("day", "count")
        )
        assert sleep == {date(2025, 11, 11): 1, date(2025, 11, 12): 1, date(2025, 11, 13): 1}
        run_cleanup()  # keeps the copy that counts: statistics unchanged
        run_aggregation()
        assert (
            dict(DailyStat.objects.filter(patient=patient, metric="sleep_total").values_list("day", "count"))
            == sleep
        )


def test_a_route_priority_saved_in_the_admin_rebuilds_the_patients_statistics(client) -> None:  # type: ignore[no-untyped-def]
    from django.contrib.auth.models import User
    from django.urls import reverse

    from connections.models import Connection, Provider

    now = datetime(2025, 11, 20, 12, 0, tzinfo=UTC)
    with time_machine.travel(now, tick=False):
        patient = Patient.objects.create(time_zone="Europe/London")
        junction = Connection.objects.create(patient=patient, provider=Provider.JUNCTION)
        whoop = Connection.objects.create(patient=patient, provider=Provider.WHOOP)
        whoop_night(patient, junction.pk, whoop.pk, datetime(2025, 11, 10, 22, 30, tzinfo=UTC))
        run_aggregation()
        User.objects.create_superuser("root", "root@example.com", "pw")
        client.login(username="root", password="pw")

        response = client.post(
            reverse("admin:connections_patient_change", args=[patient.pk]),
            {
                "junction_user_id": "",
                "clerk_user_id": "",
                "time_zone": "Europe/London",
                "connections-TOTAL_FORMS": "0",
                "connections-INITIAL_FORMS": "0",
                "connections-MIN_NUM_FORMS": "0",
                "connections-MAX_NUM_FORMS": "1000",
                "route_priorities-TOTAL_FORMS": "1",
                "route_priorities-INITIAL_FORMS": "0",
                "route_priorities-MIN_NUM_FORMS": "0",
                "route_priorities-MAX_NUM_FORMS": "1000",
                "route_priorities-0-source_family": "whoop",
                "route_priorities-0-provider": "junction",
                "route_priorities-0-priority": "5",
            },
        )

        assert response.status_code == 302, response.content[:2000]
        sleep = dict(
            DailyStat.objects.filter(patient=patient, metric="sleep_total").values_list("day", "count")
        )
        assert sleep == {date(2025, 11, 11): 1}  # the Junction copy (end of night) now counts, alone
