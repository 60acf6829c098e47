"""In a real browser (headless Debian Chromium, driven by Playwright): ops logs in, filters the failing
connections, forces a resync of one, confirms, and sees the audit row and the sync it caused.

Chromium comes from Debian (`apt-get install chromium`, done by .ci/run), never from `playwright install`.
Outside CI a machine without it skips this test, saying why; with REQUIRE_CHROMIUM=1 (set by .ci/run) a
missing browser fails it.
"""

from __future__ import annotations

import importlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.apps import apps
from django.contrib.auth.models import User
from django.test import override_settings
from django.utils import timezone

from connections.config import JunctionSyncConfig
from connections.models import Connection, SyncEvent, SyncEventKind, SyncStatus, SyncTrigger
from tests.ops_fixtures import PASSWORD, make_connection, make_staff

_candidate = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or ""
CHROMIUM = _candidate if _candidate and os.access(_candidate, os.X_OK) else ""
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _require_browser() -> None:
    missing = []
    if not CHROMIUM:
        missing.append("Debian's chromium (apt-get install -y chromium)")
    if importlib.util.find_spec("playwright") is None:
        missing.append("the playwright package (pip install -r requirements-dev.txt)")
    if missing:
        reason = "browser test needs " + " and ".join(missing)
        if os.environ.get("REQUIRE_CHROMIUM"):
            pytest.fail(reason + "; REQUIRE_CHROMIUM is set, so this is an error")
        pytest.skip(reason)


@contextmanager
def chromium_page() -> Iterator[Any]:
    """A page in headless Debian Chromium; the ORM must not be used inside (Playwright runs an event loop)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(20_000)
            yield page
        finally:
            browser.close()


@pytest.fixture
def ops_in_transactional_db() -> User:
    # A transactional test starts from flushed tables: recreate the groups the data migration makes.
    migration = importlib.import_module("connections.migrations.0004_ops_groups_latest_reading")
    migration.create_groups(apps, None)
    importlib.import_module("connections.migrations.0012_ops_trace").grant_views(apps, None)
    return make_staff("olivia-ops", "ops")


def test_ops_filters_failing_connections_and_forces_a_resync(
    live_server: object,
    junction_config: JunctionSyncConfig,
    ops_in_transactional_db: User,
) -> None:
    _require_browser()
    now = timezone.now()
    user_id = junction_config.user_ids[0]
    healthy = make_connection(1, last_sync_at=now)
    failing = make_connection(
        2,
        junction_user_id=user_id,
        last_sync_at=now - timezone.timedelta(days=2),
        failure_streak=3,
        last_error="attempt 3: junction: GET /v2/summary/sleep/{user_id} answered 503",
    )
    base = str(live_server)  # type: ignore[attr-defined]

    with (
        override_settings(JUNCTION_SYNC=junction_config.replace(user_ids=(user_id,))),
        chromium_page() as page,
    ):
        page.goto(f"{base}/admin/login/?next=/admin/connections/connection/")
        page.fill("#id_username", "olivia-ops")
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_selector("#result_list")

        page.click("#changelist-filter a:text-is('Failing')")
        page.wait_for_url("**health=failing**")
        rows = page.locator("#result_list tbody tr")
        assert rows.count() == 1
        assert "Failing" in rows.first.inner_text()

        rows.first.locator("th a").click()
        page.click("button:text-is('Force resync')")
        confirmation = page.inner_text("#ls-confirm")
        assert "Force resync 1 connection?" in confirmation
        page.click("#ls-confirm-submit")

        page.wait_for_selector(".messagelist")
        assert "Force resync: queued" in page.inner_text(".messagelist")
        events = page.inner_text("#recent-sync-events")
        assert "Resync requested" in events and "olivia-ops" in events
        assert "Sync run" in events and "Success" in events
        # The request's row carries its result and links the sync run it caused.
        request_row = page.locator("#recent-sync-events tr.ls-event-resync_requested")
        assert request_row.get_attribute("data-status") == "success"
        assert request_row.locator("a.ls-result-event").count() == 1

    requested = SyncEvent.objects.get(kind=SyncEventKind.RESYNC_REQUESTED)
    assert (requested.connection_id, requested.actor) == (failing.pk, "olivia-ops")
    run = SyncEvent.objects.get(kind=SyncEventKind.SYNC, connection=failing)
    assert (requested.status, requested.result_event_id) == (SyncStatus.SUCCESS, run.pk)
    assert (run.trigger, run.actor, run.status) == (SyncTrigger.ADMIN, "olivia-ops", SyncStatus.SUCCESS)
    assert Connection.objects.get(pk=failing.pk).failure_streak == 0
    assert not SyncEvent.objects.filter(connection=healthy).exists()
