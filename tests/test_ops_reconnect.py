"""Issue 17, item 5: a revoked connection offers what fixes it, a reconnect link ops can copy or send (the same
signed link `manage.py connect_link` prints), not only Reactivate."""

from __future__ import annotations

import io
from datetime import datetime
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from connections.models import Connection, ConnectionStatus, Provider
from connections.oauth import patient_from_connect_token
from connections.tokens import MUST_RECONNECT, mark_revoked
from tests.ops_fixtures import PASSWORD, make_connection

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_time")]


def page_for(user: User, connection: Connection) -> str:
    client = Client()
    assert client.login(username=user.username, password=PASSWORD)
    return client.get(reverse("admin:connections_connection_change", args=[connection.pk])).content.decode()


def reconnect_link(page: str) -> str:
    return page.split('id="ls-reconnect-link" value="')[1].split('"')[0].replace("&amp;", "&")


@pytest.fixture
def revoked(frozen_time: datetime) -> Connection:
    connection = make_connection(1, provider=Provider.WHOOP, last_sync_at=frozen_time)
    # What a refused refresh token does to a connection (connections/tokens.py).
    mark_revoked(connection, "whoop: invalid_grant (refresh token revoked); " + MUST_RECONNECT)
    connection.refresh_from_db()
    assert connection.status == ConnectionStatus.INACTIVE
    return connection


def test_a_revoked_connection_offers_a_reconnect_link_for_its_patient_beside_reactivate(
    ops_user: User, revoked: Connection
) -> None:
    page = page_for(ops_user, revoked)

    assert 'id="ls-reconnect"' in page and "Reactivate alone fails again" in page
    link = reconnect_link(page)
    parts = urlsplit(link)
    assert (parts.scheme, parts.netloc, parts.path) == ("http", "testserver", "/connect/whoop/start")
    assert patient_from_connect_token(parse_qs(parts.query)["token"][0]) == revoked.patient
    # Send: a mail draft carrying the same link; Reactivate is still there, no longer the only offer.
    mailto = page.split('id="ls-reconnect-send"')[0].rsplit('href="', 1)[1].split('"')[0]
    assert mailto.startswith("mailto:?subject=") and link in unquote(mailto.replace("&amp;", "&"))
    assert reverse("admin:connections_connection_reactivate", args=[revoked.pk]) in page


def test_the_command_prints_the_same_kind_of_link(revoked: Connection) -> None:
    out = io.StringIO()
    call_command(
        "connect_link", str(revoked.patient_id), "whoop", "--base-url", "https://ops.example", stdout=out
    )

    parts = urlsplit(out.getvalue().strip())
    assert (parts.netloc, parts.path) == ("ops.example", "/connect/whoop/start")
    assert patient_from_connect_token(parse_qs(parts.query)["token"][0]) == revoked.patient


def test_no_link_for_support_for_a_healthy_connection_or_one_ops_deactivated(
    ops_user: User, support_user: User, revoked: Connection, frozen_time: datetime
) -> None:
    healthy = make_connection(2, provider=Provider.WHOOP, last_sync_at=frozen_time)
    deactivated = make_connection(3, provider=Provider.WHOOP, status=ConnectionStatus.INACTIVE)

    assert 'id="ls-reconnect"' not in page_for(support_user, revoked)
    assert 'id="ls-reconnect"' not in page_for(ops_user, healthy)
    assert 'id="ls-reconnect"' not in page_for(ops_user, deactivated)


def test_a_revoked_libre_connection_names_the_login_command(ops_user: User, frozen_time: datetime) -> None:
    libre = make_connection(4, provider=Provider.LIBRE, last_sync_at=frozen_time)
    mark_revoked(libre, "libre: login refused; " + MUST_RECONNECT)

    page = page_for(ops_user, libre)

    assert 'id="ls-reconnect"' in page and f"manage.py connect_libre {libre.patient_id}" in page


def test_relative_times_say_one_unit_with_the_exact_utc_time_in_the_title(frozen_time: datetime) -> None:
    from datetime import timedelta

    from connections.admin import relative_time

    three_hours = relative_time(frozen_time - timedelta(hours=3, minutes=20), frozen_time)
    assert ">3\xa0hours ago</time>" in three_hours
    assert 'title="2026-03-10 08:40:00 UTC"' in three_hours
    assert ">just now<" in relative_time(frozen_time - timedelta(seconds=20), frozen_time)
    assert ">in 2\xa0days<" in relative_time(frozen_time + timedelta(days=2, hours=1), frozen_time)
    assert relative_time(None, frozen_time) == "-"


def test_the_admin_shows_absolute_times_with_their_zone(ops_user: User, revoked: Connection) -> None:
    page = page_for(ops_user, revoked)
    # last successful sync = the frozen test time (noon UTC), shown with its zone
    assert "2026-03-10 12:00:00 UTC" in page
