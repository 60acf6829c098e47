"""Issue 17 in a real browser (headless Debian Chromium via Playwright, as tests/test_admin_browser.py): a job
run names its failed connection (item 3), a revoked connection's reconnect link reconnects it (item 5)."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
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
# LOOPSYNC_SCREENSHOTS=1: the tests also write the README's screenshots (docs/screenshots/).
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"


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
        if os.environ.get("LOOPSYNC_SCREENSHOTS"):
            page.screenshot(path=str(SCREENSHOTS / "revoked-reconnect.png"), full_page=True)
        # The patient opens it: the sandbox's WHOOP approves at once and sends the browser back.
        page.goto(link)
        page.wait_for_load_state()

    connection.refresh_from_db()
    assert (connection.status, connection.status_reason) == (ConnectionStatus.ACTIVE, "")


def make_every_state(now: Any) -> dict[str, Connection]:
    """One connection in each state, with real-length identifiers and a long error."""
    from tests.ops_fixtures import make_connection

    long_error = "attempt 3: junction: GET /v2/timeseries/{user_id}/heartrate/grouped answered 503 " * 2
    states = {
        "ok": make_connection(1, last_sync_at=now - timedelta(hours=3)),
        "stale": make_connection(2, last_sync_at=now - timedelta(days=3)),
        "failing": make_connection(
            3, last_sync_at=now - timedelta(hours=30), failure_streak=3, last_error=long_error
        ),
        "inactive": make_connection(
            4, status=ConnectionStatus.INACTIVE, last_sync_at=now - timedelta(days=9)
        ),
        "revoked": make_connection(5, provider=Provider.WHOOP, last_sync_at=now - timedelta(days=1)),
    }
    mark_revoked(states["revoked"], "whoop: invalid_grant; " + MUST_RECONNECT)
    from connections.models import Patient

    for n, connection in enumerate(states.values()):
        Patient.objects.filter(pk=connection.patient_id).update(
            junction_user_id=f"{n}f9c2b7e-41d3-4c8a-9e2b-6f1d0c3a5b7{n}",
            clerk_user_id=f"user_2pQm8ZxR4tLk9VbN3cYw{n}",
        )
    return states


LAYOUT = """() => {
  const header = (name) => document.querySelector('#result_list th.column-' + name);
  const right = (el) => el ? el.getBoundingClientRect().right : null;
  const visible = (el) => !!el && el.getBoundingClientRect().width > 0;
  return {
    viewport: window.innerWidth,
    pageWidth: document.documentElement.scrollWidth,
    tableRight: right(document.querySelector('#result_list')),
    health: visible(header('health_column')) ? right(header('health_column')) : null,
    patient: visible(header('patient_link')),
    lastError: visible(header('last_error_column')),
  };
}"""


@pytest.mark.parametrize("width", [1400, 800])
def test_the_connection_list_fits_the_screen_worst_first_with_relative_times(
    width: int,
    live_server: object,
    ops_in_transactional_db: User,  # noqa: F811
) -> None:
    _require_browser()
    states = make_every_state(timezone.now())
    base = str(live_server)  # type: ignore[attr-defined]

    with chromium_page() as page:
        page.set_viewport_size({"width": width, "height": 900})
        log_in(page, base, "/admin/connections/connection/")
        page.wait_for_selector("#result_list")
        layout = page.evaluate(LAYOUT)
        # Nothing cut off, no sideways scrolling; health always visible.
        assert layout["pageWidth"] <= width and layout["tableRight"] <= width, layout
        assert layout["health"] is not None and layout["health"] <= width, layout
        assert layout["patient"], layout
        assert layout["lastError"] == (width >= 1400), layout
        # Worst first: failing, stale, then the inactive ones (revoked among them), ok last.
        healths = page.locator("#result_list td.field-health_column").all_inner_texts()
        assert [h.split()[0] for h in healths] == ["Failing", "Stale", "Inactive", "Inactive", "OK"]
        assert "reconnect" in healths[2] + healths[3]
        # Relative times, the exact UTC time on hover.
        stale_time = page.locator("#result_list tr", has_text="Stale").locator(
            "td.field-last_success_column time"
        )
        assert stale_time.inner_text().replace("\xa0", " ") == "3 days ago"
        assert stale_time.get_attribute("title").endswith(" UTC")
        # Prefix search by a Clerk user id's start.
        page.fill("#searchbar", "user_2pQm8ZxR4tLk9VbN3cYw1")
        page.press("#searchbar", "Enter")
        page.wait_for_url("**q=**")
        assert page.locator("#result_list tbody tr").count() == 1
        assert page.locator("#result_list td.field-health_column").inner_text().startswith("Stale")
        if os.environ.get("LOOPSYNC_SCREENSHOTS") and width == 1400:
            page.goto(f"{base}/admin/connections/connection/")
            page.screenshot(path=str(SCREENSHOTS / "connection-list-1400.png"), full_page=True)
    assert states


def test_the_overview_and_job_health_show_a_late_and_a_missed_job(
    live_server: object,
    ops_in_transactional_db: User,  # noqa: F811
) -> None:
    _require_browser()
    import io

    from django.core.management import call_command

    from connections.jobhealth import last_due
    from connections.models import JobRunStatus

    now = timezone.now()
    make_every_state(now)
    call_command("sync_schedules", stdout=io.StringIO())
    # The CGM job (every 30 minutes) last ran before its latest half hour: Late (grace 30 min).
    JobRun.objects.create(
        job="sync-cgm-readings",
        status=JobRunStatus.SUCCESS,
        started_at=last_due("*/30 * * * *", now) - timedelta(minutes=1),
        finished_at=last_due("*/30 * * * *", now),
        users_synced=2,
    )
    # The daily Junction job last ran two days ago: yesterday's 03:00 was missed.
    JobRun.objects.create(
        job="wearable-sync-daily",
        status=JobRunStatus.PARTIAL,
        started_at=now - timedelta(days=2),
        finished_at=now - timedelta(days=2) + timedelta(minutes=4),
        users_synced=2,
        users_failed=1,
    )
    base = str(live_server)  # type: ignore[attr-defined]

    with chromium_page() as page:
        log_in(page, base, "/admin/")
        page.wait_for_selector("#ls-ops-summary")
        summary = page.inner_text("#ls-ops-summary")
        assert "Missed" in summary and "Late" in summary and "sync-cgm-readings" in summary
        page.click("#ls-ops-summary a:text-is('open the overview')")
        page.wait_for_selector("#ls-problems")
        assert page.get_attribute("#ls-job-sync-cgm-readings", "data-state") == "late"
        assert page.get_attribute("#ls-job-wearable-sync-daily", "data-state") == "missed"
        problems = page.locator("#ls-problems tr.ls-problem").all_inner_texts()
        assert "wearable-sync-daily" in problems[0] and "Missed" in problems[0]
        assert any("Failing" in p for p in problems) and any("reconnect" in p for p in problems)
        if os.environ.get("LOOPSYNC_SCREENSHOTS"):
            page.screenshot(path=str(SCREENSHOTS / "ops-overview.png"), full_page=True)

        page.goto(f"{base}/admin/connections/jobhealth/")
        late = page.locator("#job-sync-cgm-readings")
        assert "Late" in late.locator("h2").inner_text()
        schedule = late.locator("dd.ls-schedule").inner_text()
        assert schedule.startswith("late: due") and "next due" not in schedule
        if os.environ.get("LOOPSYNC_SCREENSHOTS"):
            late.screenshot(path=str(SCREENSHOTS / "job-late.png"))
