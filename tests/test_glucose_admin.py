"""The AGP report in the admin (patient page and printable view) and the connection list's glucose triage sort."""

from __future__ import annotations

import re
from datetime import datetime

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from connections.config import DirectProvidersConfig
from connections.models import Connection, Provider
from readings import glucose_metrics as gm
from sandbox import SandboxServer
from tests.direct_helpers import connect, sync
from tests.ops_fixtures import PASSWORD

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_time")]


def client_for(user: User) -> Client:
    client = Client()
    assert client.login(username=user.username, password=PASSWORD)
    return client


@pytest.fixture
def cgm_connections(direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer) -> list[Connection]:
    """Dexcom sandbox users 1 (nights below 54), 3 (long highs) and 4 (sensor changes, gaps), 14 days each."""
    config = direct_config.replace(cgm_initial_days=14)
    connections = []
    for user in (1, 3, 4):
        connection = connect(clean_sandbox, config, Provider.DEXCOM, user)
        assert sync(connection, config).status == "success"
        connections.append(connection)
    return connections


def test_patient_page_shows_the_agp_report(
    support_user: User, cgm_connections: list[Connection], frozen_time: datetime
) -> None:
    patient = cgm_connections[0].patient
    html = (
        client_for(support_user)
        .get(reverse("admin:connections_patient_change", args=[patient.pk]))
        .content.decode()
    )

    assert 'id="agp-report"' in html and 'id="agp-stats"' in html
    assert html.count('class="ls-agp"') == 1 + 1 + 14  # time-in-ranges bar, AGP curve, 14 daily profiles
    for band in ("very_low_percent", "low_percent", "target_percent", "high_percent", "very_high_percent"):
        assert f'data-band="{band}"' in html
    assert 'class="agp-p5-p95"' in html and 'class="agp-p25-p75"' in html and 'class="agp-median"' in html
    assert 'class="agp-target"' in html
    metrics = gm.window_metrics(patient.pk, patient.time_zone, frozen_time.date(), 14, until=frozen_time)
    assert f"{metrics.active_percent:.1f}%" in html
    assert html.count('class="agp-target-row"') == len(gm.CONSENSUS_TARGETS)
    assert reverse("admin:connections_patient_agp", args=[patient.pk]) in html


def test_the_printable_report_is_a_page_of_its_own(
    support_user: User, cgm_connections: list[Connection]
) -> None:
    patient = cgm_connections[1].patient
    client = client_for(support_user)
    url = reverse("admin:connections_patient_agp", args=[patient.pk])

    page = client.get(url, {"days": "7"})
    assert page.status_code == 200
    html = page.content.decode()
    assert "@media print" in html and "(7 days)" in html and html.count('class="ls-agp"') == 1 + 1 + 7
    assert client.get(reverse("admin:connections_patient_agp", args=[999999])).status_code == 404
    assert Client().get(url).status_code == 302  # to the login page


def test_connection_list_sorts_by_14_day_time_in_range_and_below_range(
    support_user: User, cgm_connections: list[Connection], frozen_time: datetime
) -> None:
    client = client_for(support_user)
    changelist = reverse("admin:connections_connection_changelist")
    page = client.get(changelist)
    columns = [c for c in page.context["cl"].list_display]
    tir_column = columns.index("tir_14d")
    tbr_column = columns.index("tbr_14d")

    by_tir = client.get(changelist, {"o": str(tir_column)}).context["cl"].result_list
    by_tbr = client.get(changelist, {"o": str(tbr_column)}).context["cl"].result_list

    tir = [c.glucose_tir_14d for c in by_tir]
    assert tir == sorted(tir) and len(set(tir)) == 3  # lowest time in range first
    tbr = [c.glucose_tbr_14d for c in by_tbr]
    assert tbr == sorted(tbr, reverse=True) and tbr[0] > 0  # most time below range first
    assert by_tbr[0].pk == cgm_connections[0].pk  # the nights-below-54 patient
    # The column agrees with the metrics over the same 14 days (UTC patients here).
    first = by_tir[0]
    expected = gm.window_metrics(first.patient_id, "UTC", frozen_time.date(), 14)
    assert first.glucose_tir_14d == pytest.approx(expected.target_percent)
    html = page.content.decode()
    assert re.search(r"\d+\.\d%", html)
