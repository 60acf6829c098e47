"""In headless Debian Chromium: a clinician opens a CGM patient from the connection list sorted by time below
range, sees the AGP report on the patient page and opens the printable report. With DOCS_SCREENSHOTS=1 the
test also writes docs/agp-report.png (the screenshot in the README)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest
from django.apps import apps
from django.contrib.auth.models import User

from connections.config import DirectProvidersConfig
from connections.models import Provider
from sandbox import SandboxServer
from tests.direct_helpers import connect, sync
from tests.ops_fixtures import PASSWORD, make_staff
from tests.test_admin_browser import _require_browser, chromium_page

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture
def clinician() -> User:
    migration = importlib.import_module("connections.migrations.0004_ops_groups_latest_reading")
    migration.create_groups(apps, None)
    return make_staff("cara-clinic", "support")


def test_clinician_triages_by_time_below_range_and_reads_the_agp_report(
    live_server: object, direct_config: DirectProvidersConfig, clean_sandbox: SandboxServer, clinician: User
) -> None:
    _require_browser()
    # Real time (a frozen clock would stall the browser driver): the sandbox serves the last 14 days.
    config = direct_config.replace(cgm_initial_days=14)
    for user in (1, 3, 4):
        assert sync(connect(clean_sandbox, config, Provider.DEXCOM, user), config).status == "success"
    base = str(live_server)  # type: ignore[attr-defined]

    with chromium_page() as page:
        page.goto(f"{base}/admin/login/?next=/admin/connections/connection/")
        page.fill("#id_username", "cara-clinic")
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_selector("#result_list")

        page.click("#result_list thead th.column-tbr_14d a")
        page.wait_for_url("**o=**")
        first = page.locator("#result_list tbody tr").first
        assert "%" in first.locator("td.field-tbr_14d").inner_text()
        first.locator("td.field-patient_link a").click()

        page.wait_for_selector("#agp-report")
        report = page.inner_text("#agp-report")
        assert "Glucose statistics" in report and "GMI" in report and "Time in ranges" in report
        assert page.locator("#agp-report svg.ls-agp").count() == 16
        assert page.locator("#agp-report polyline.agp-median").count() == 1
        box = page.locator("#agp-report polygon.agp-p5-p95").bounding_box()
        assert box is not None and box["width"] > 600

        page.click("#patient-agp h2 a")
        page.wait_for_selector("#agp-report")
        assert "AGP report · patient" in page.inner_text("h1")
        if os.environ.get("DOCS_SCREENSHOTS"):
            page.set_viewport_size({"width": 900, "height": 1200})
            page.screenshot(path=str(DOCS / "agp-report.png"), full_page=True)
