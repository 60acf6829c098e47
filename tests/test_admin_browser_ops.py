"""Issue 17 in a real browser (headless Debian Chromium via Playwright, as tests/test_admin_browser.py): a job
run names its failed connection (item 3), a revoked connection's reconnect link reconnects it (item 5)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import override_settings
from django.utils import timezone

from connections.config import JunctionSyncConfig
from connections.models import Connection, ConnectionStatus, JobRun, Provider
from connections.tokens import MUST_RECONNECT, mark_revoked
from sandbox import SandboxServer
from tests.ops_fixtures import PASSWORD
from tests.test_admin_browser import _require_browser, chromium_page, ops_in_transactional_db  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def log_in(page: Any, base: str, next_path: str) -> None:
    page.goto(f"{base}/admin/login/?next={next_path}")
    page.fill("#id_username", "olivia-ops")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")


def test_a_job_run_page_names_the_failed_connection_first(
    live_server: object,
    junction_config: JunctionSyncConfig,
    clean_sandbox: SandboxServer,
    ops_in_transactional_db: User,  # noqa: F811
) -> None:
    _require_browser()
    from connections.tasks import sync_job
    from tests.direct_helpers import JUNCTION_JOB

    down = junction_config.user_ids[2]
    clean_sandbox.faults.add({"user_id": down, "status": 503, "count": -1})
    with override_settings(JUNCTION_SYNC=junction_config, SYNC_USER_ATTEMPTS=1, PROVIDER_HTTP_ATTEMPTS=1):
        sync_job(JUNCTION_JOB)
    failed = Connection.objects.get(patient__junction_user_id=down)
    assert JobRun.objects.get().users_failed == 1
    base = str(live_server)  # type: ignore[attr-defined]

    with chromium_page() as page:
        log_in(page, base, "/admin/connections/jobrun/")
        page.click("#result_list a:text-is('1 failed')")
        page.wait_for_selector("#run-sync-events")
        first = page.locator("#run-sync-events tr.ls-run-event").first
        assert first.get_attribute("data-status") == "failed"
        first.locator("a", has_text=str(failed)).click()
        page.wait_for_selector("#recent-sync-events")
        assert f"/admin/connections/connection/{failed.pk}/change/" in page.url


def test_ops_reconnects_a_revoked_connection_with_the_link_its_page_offers(
    live_server: object,
    direct_config: Any,
    clean_sandbox: SandboxServer,
    ops_in_transactional_db: User,  # noqa: F811
) -> None:
    _require_browser()
    from connections.sandbox_setup import connect_sandbox_user

    connection = connect_sandbox_user(clean_sandbox, direct_config, Provider.WHOOP, 1)
    mark_revoked(connection, "whoop: invalid_grant; " + MUST_RECONNECT)
    Connection.objects.filter(pk=connection.pk).update(last_success_at=timezone.now() - timedelta(days=3))
    base = str(live_server)  # type: ignore[attr-defined]

    with chromium_page() as page:
        log_in(page, base, f"/admin/connections/connection/{connection.pk}/change/")
        page.wait_for_selector("#ls-reconnect")
        assert page.is_visible("button:text-is('Reactivate')")
        link = page.input_value("#ls-reconnect-link")
        assert link.startswith(f"{base}/connect/whoop/start?token=")
        # The patient opens it: the sandbox's WHOOP approves at once and sends the browser back.
        page.goto(link)
        page.wait_for_load_state()

    connection.refresh_from_db()
    assert (connection.status, connection.status_reason) == (ConnectionStatus.ACTIVE, "")
