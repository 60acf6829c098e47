"""The gap ledger and targeted repair (issue 16): a pause or days missing at the provider become one recorded
gap; its repair asks the provider for exactly that window, then closes the gap or marks it not available."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from connections.config import DirectProvidersConfig
from connections.gaps import detect_gaps, repair_gap
from connections.models import (
    Connection,
    DataGap,
    GapCause,
    GapStatus,
    Provider,
    SyncEvent,
    SyncEventKind,
)
from connections.sandbox_setup import connect_sandbox_user
from readings.completeness import daily_shares
from readings.models import GlucoseReading
from sandbox import SandboxServer
from tests.conftest import FROZEN_NOW
from tests.direct_helpers import connect, requests_to, sync

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_time")]

DEXCOM_FORMAT = "%Y-%m-%dT%H:%M:%S"


def asked_windows(sandbox: SandboxServer) -> list[tuple[datetime, datetime]]:
    return [
        (
            datetime.strptime(r["query"]["startDate"], DEXCOM_FORMAT).replace(tzinfo=FROZEN_NOW.tzinfo),
            datetime.strptime(r["query"]["endDate"], DEXCOM_FORMAT).replace(tzinfo=FROZEN_NOW.tzinfo),
        )
        for r in requests_to(sandbox, "dexcom", "/egvs")
    ]


def test_a_14_day_disconnection_yields_one_gap_that_repair_closes_asking_for_only_those_days(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:
    before = FROZEN_NOW - timedelta(days=14)
    with time_machine.travel(before, tick=False):
        connection = connect(clean_sandbox, direct_config, Provider.DEXCOM, 3)
        assert sync(connection, direct_config).status == "success"
    connection.refresh_from_db()
    paused_since = connection.latest_reading_at
    assert paused_since is not None and paused_since < before

    # Fourteen days later the patient connects again (a new authorization of the same account).
    connect_sandbox_user(clean_sandbox, direct_config, Provider.DEXCOM, 3, connection.patient)

    gap = DataGap.objects.get(connection=connection)
    assert (gap.cause, gap.status, gap.start, gap.end) == (
        GapCause.RECONNECT,
        GapStatus.OPEN,
        paused_since,
        FROZEN_NOW,
    )
    clean_sandbox.requests.clear()

    repaired = repair_gap(gap.pk)

    assert repaired.status == GapStatus.CLOSED and repaired.rows_repaired > 14 * 250
    windows = asked_windows(clean_sandbox)
    assert windows and all(gap.start <= lo and hi <= gap.end for lo, hi in windows)
    assert min(lo for lo, _ in windows) == gap.start and max(hi for _, hi in windows) == gap.end
    assert sum((hi - lo for lo, hi in windows), timedelta()) <= timedelta(days=14, hours=2)
    # No other provider route was asked (no lookback sync, no data range), and the ledger holds one gap.
    assert {r["path"] for r in requests_to(clean_sandbox, "dexcom")} == {"/dexcom/v3/users/self/egvs"}
    assert detect_gaps(Connection.objects.get(pk=connection.pk)) == []
    assert DataGap.objects.filter(connection=connection).count() == 1


def test_days_the_provider_never_had_become_one_gap_marked_not_available_after_repair(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer, settings: Any
) -> None:
    settings.BACKFILL_DAYS = {**settings.BACKFILL_DAYS, "dexcom": 12}
    connection = connect(clean_sandbox, direct_config, Provider.DEXCOM, 4)
    dropped = {(FROZEN_NOW - timedelta(days=d)).date() for d in (5, 6, 7)}
    clean_sandbox.dexcom.dropped_days |= {(4, day) for day in dropped}
    from connections.backfill import plan_backfill, run_backfill

    backfill = plan_backfill(connection)
    assert backfill is not None and run_backfill(backfill.pk).status == "done"
    connection = Connection.objects.select_related("patient").get(pk=connection.pk)

    gaps = detect_gaps(connection)

    assert len(gaps) == 1 and gaps[0].cause == GapCause.LOW_COMPLETENESS
    assert detect_gaps(connection) == []  # recorded once
    gap = gaps[0]
    assert connection.patient.time_zone == "UTC"
    assert (gap.start.date(), gap.end.date()) == (min(dropped), max(dropped) + timedelta(days=1))
    assert gap.start.hour == gap.end.hour == 0
    shares = daily_shares(connection.patient_id, "UTC", "glucose", min(dropped), max(dropped))
    assert [s.received for s in shares] == [0, 0, 0]
    clean_sandbox.requests.clear()

    repaired = repair_gap(gap.pk)

    assert repaired.status == GapStatus.UNAVAILABLE and "no more data" in repaired.note
    assert asked_windows(clean_sandbox) == [(gap.start, gap.end)]


def test_a_libre_gap_older_than_librelinkups_12_hours_is_not_available_without_asking(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer
) -> None:
    connection = connect(clean_sandbox, direct_config, Provider.LIBRE, 2)
    gap = DataGap.objects.create(
        connection=connection,
        kind="glucose",
        start=FROZEN_NOW - timedelta(days=3),
        end=FROZEN_NOW - timedelta(days=2),
        cause=GapCause.LOW_COMPLETENESS,
    )
    clean_sandbox.requests.clear()

    repaired = repair_gap(gap.pk)

    assert repaired.status == GapStatus.UNAVAILABLE and "12 h" in repaired.note
    assert requests_to(clean_sandbox, "libre") == []
    assert GlucoseReading.objects.filter(patient=connection.patient).count() == 0


def test_the_admin_lists_open_gaps_with_a_repair_button_behind_a_confirmation_and_the_resync_permission(
    direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer, ops_user: User, support_user: User
) -> None:
    connection = connect(clean_sandbox, direct_config, Provider.DEXCOM, 5)
    gap = DataGap.objects.create(
        connection=connection,
        kind="glucose",
        start=FROZEN_NOW - timedelta(days=3),
        end=FROZEN_NOW - timedelta(days=2),
        cause=GapCause.LOW_COMPLETENESS,
    )
    ops = Client()
    ops.force_login(ops_user)
    url = reverse("admin:connections_datagap_repair", args=[gap.pk])

    listing = ops.get(reverse("admin:connections_datagap_changelist")).content.decode()
    assert url in listing and ">Repair<" in listing
    assert "Yes, repair" in ops.get(url).content.decode()  # a GET only asks
    assert not SyncEvent.objects.filter(kind=SyncEventKind.GAP_REPAIR_REQUESTED).exists()
    support = Client()
    support.force_login(support_user)
    assert support.post(url, {"confirm": "yes"}).status_code == 403

    assert ops.post(url, {"confirm": "yes"}).status_code == 302

    event = SyncEvent.objects.get(kind=SyncEventKind.GAP_REPAIR_REQUESTED)
    assert event.actor == ops_user.get_username() and event.connection_id == connection.pk
