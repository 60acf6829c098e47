"""Data completeness per patient, kind and local day (issue 16): kept by every ingest with the daily
statistics, checked against an oracle written independently of the SQL; shown in the read API, as heat-map
strips on the patient page, and as the connection list's "under 70 %" filter."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.contrib.auth.models import User
from django.db import transaction
from django.test import Client
from django.urls import reverse
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.django import TestCase

from connections.config import DirectProvidersConfig
from connections.models import Patient, Provider
from readings.completeness import expected_on
from readings.models import DataCompleteness
from readings.store import store_batch
from sandbox import SandboxServer
from sandbox.clerk import ClerkSandbox
from tests.direct_helpers import connect, sync

ZONES = ("UTC", "America/New_York", "Europe/Berlin", "Australia/Lord_Howe", "Asia/Kathmandu")
# Around the 2026 spring-forward in New York and Berlin: days of 23 hours.
BASE = datetime(2026, 3, 7, 0, 0, tzinfo=UTC)


def ts(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(sep=" ")


def glucose_row(moment: datetime) -> tuple:
    return ("dexcom", ts(moment), 110.0, 110.0, "mg/dL", "flat", None, "")


def hr_row(moment: datetime) -> tuple:
    return ("heart_rate", "oura", "ring", ts(moment), None, 61.0, "bpm")


def oracle(moments: list[datetime], zone: str, slot: int) -> dict[date, tuple[int, int]]:
    """Per local day: distinct slots of `slot` seconds holding a moment, and the day's length in slots."""
    tz = ZoneInfo(zone)
    slots: dict[date, set[int]] = defaultdict(set)
    for moment in moments:
        slots[moment.astimezone(tz).date()].add(int(moment.timestamp()) // slot)
    kind = "glucose" if slot == 300 else "heart_rate"
    return {day: (len(s), expected_on(kind, day, tz)) for day, s in slots.items()}


# The readings' days must be inside the raw-retention horizon, whose days alone are recomputed (issue 13).
AFTER_BASE = BASE + timedelta(days=10)


class CompletenessOracleTests(TestCase):
    def setUp(self) -> None:
        super().setUp()
        traveller = time_machine.travel(AFTER_BASE, tick=True)
        traveller.start()
        self.addCleanup(traveller.stop)

    @settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        zone=st.sampled_from(ZONES),
        batches=st.lists(
            st.lists(st.integers(min_value=0, max_value=4 * 24 * 3600 - 1), min_size=1, max_size=60),
            min_size=1,
            max_size=4,
        ),
    )
    # A 23-hour day in New York (2026-03-08), readings in it, and a second ingest overlapping the first.
    @example(
        zone="America/New_York", batches=[[1 * 86400 + 6 * 3600, 1 * 86400 + 6 * 3600 + 30], [2 * 86400]]
    )
    def test_incremental_counts_equal_an_oracle_over_every_ingest(
        self, zone: str, batches: list[list[int]]
    ) -> None:
        patient = Patient.objects.create(time_zone=zone)
        glucose_seen: list[datetime] = []
        hr_seen: list[datetime] = []
        for offsets in batches:
            moments = [BASE + timedelta(seconds=o) for o in offsets]
            with transaction.atomic():
                store_batch(
                    patient.pk,
                    zone,
                    [hr_row(m) for m in moments],
                    [glucose_row(m) for m in moments],
                    connection_id=None,
                )
            glucose_seen += moments
            hr_seen += moments
        for kind, seen, slot in (("glucose", glucose_seen, 300), ("heart_rate", hr_seen, 60)):
            stored = {
                row.day: (row.received, row.expected)
                for row in DataCompleteness.objects.filter(patient=patient, kind=kind)
            }
            assert stored == oracle(seen, zone, slot), kind


@pytest.mark.django_db
def test_a_dst_day_expects_23_hours_of_readings() -> None:
    assert expected_on("glucose", date(2026, 3, 8), ZoneInfo("America/New_York")) == 276
    assert expected_on("heart_rate", date(2026, 11, 1), ZoneInfo("America/New_York")) == 1500
    assert expected_on("sleep", date(2026, 3, 8), ZoneInfo("UTC")) == 1


@pytest.mark.django_db
@pytest.mark.usefixtures("frozen_time")
def test_completeness_shows_in_the_api_on_the_patient_page_and_in_the_list_filter(
    direct_config: DirectProvidersConfig,
    clean_sandbox: SandboxServer,
    clerk: ClerkSandbox,
    ops_user: User,
    settings: Any,
) -> None:
    full = connect(clean_sandbox, direct_config, Provider.DEXCOM, 1)
    empty = connect(clean_sandbox, direct_config, Provider.DEXCOM, 2)
    # 14 days of readings for the first connection; nothing for the second.
    sync(full, direct_config.replace(cgm_initial_days=14))
    full.patient.clerk_user_id = "user_complete"
    full.patient.save()

    body = (
        Client(HTTP_AUTHORIZATION=f"Bearer {clerk.mint('user_complete')}")
        .get(reverse("api-connections"))
        .json()
    )
    completeness = body["results"][0]["data_completeness"]
    # 14 local days back from today: the first is partly before the window, today ends at the data delay.
    assert completeness["days"] == 14 and 0.85 < completeness["share"] <= 1.0
    assert set(completeness["by_kind"]) == {"glucose"}

    client = Client()
    client.force_login(ops_user)
    page = client.get(reverse("admin:connections_patient_change", args=[full.patient_id])).content.decode()
    assert "Data completeness" in page and page.count('class="ls-strip"') == 1
    assert page.count("<rect x=") >= 30 and 'fill="#38a169"' in page  # full days are green
    listed = client.get(reverse("admin:connections_connection_changelist") + "?completeness=under70")
    assert {c.pk for c in listed.context["cl"].result_list} == {empty.pk}


@pytest.mark.django_db
@time_machine.travel(AFTER_BASE, tick=True)
def test_a_rebuild_from_the_raw_rows_equals_what_the_ingests_kept() -> None:
    from django.core.management import call_command

    patient = Patient.objects.create(time_zone="America/New_York")
    moments = [BASE + timedelta(minutes=7 * n) for n in range(900)]
    with transaction.atomic():
        store_batch(
            patient.pk,
            patient.time_zone,
            [hr_row(m) for m in moments]
            + [("sleep_duration", "whoop", "band", ts(m), None, 28800.0, "s") for m in moments[::200]],
            [glucose_row(m) for m in moments],
            connection_id=None,
        )
    kept = set(DataCompleteness.objects.values_list("kind", "day", "received", "expected"))
    assert {k for k, *_ in kept} == {"glucose", "heart_rate", "sleep"}
    DataCompleteness.objects.all().delete()

    call_command("rebuild_completeness")

    assert set(DataCompleteness.objects.values_list("kind", "day", "received", "expected")) == kept
