"""Screenshots of the ops admin for the README, from realistic sandbox-synced data.

    .venv/bin/python scripts/admin_screenshots.py        # writes docs/admin-*.png

1. A fresh database `loopsync_screenshots` on DATABASE_URL's server (or the embedded one), migrated; the
   sandbox on a loopback port.
2. 30 days of the real `wearable-sync-daily` job (the django-q2 entry point, in sync mode), one run per day
   at 03:00 UTC under time-machine, with the sandbox's fault injection making some days go wrong: a user
   down for a few days, an outage day, and two users failing last night.
3. Ops actions through `connections.actions`: one connection deactivated, one reactivated after two days
   (so stale until the next run), one forced resync.
4. `manage.py runserver` on that database, and headless Debian Chromium (Playwright) takes the pictures.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
USERS = 10
DAYS = 30
PASSWORD = "screenshots-only-password"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fresh_database() -> str:
    """An empty database of its own, so the pictures never show (or damage) the demo's data."""
    import psycopg

    sys.path.insert(0, str(ROOT))
    from loopsync import embedded_db

    base = (os.environ.get("DATABASE_URL") or embedded_db.url()).rpartition("/")[0]
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute('DROP DATABASE IF EXISTS "loopsync_screenshots" WITH (FORCE)')
        conn.execute('CREATE DATABASE "loopsync_screenshots"')
    return f"{base}/loopsync_screenshots"


def build_data(env: dict[str, str]) -> None:
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "loopsync.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    import time_machine
    from django.conf import settings
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command
    from django.test import override_settings

    from connections import actions, tasks
    from connections.models import Connection, Patient
    from sandbox import SandboxServer

    call_command("migrate", verbosity=0)
    call_command("sync_schedules", verbosity=0)
    ops = User.objects.create_user("olivia-ops", password=PASSWORD, is_staff=True)
    ops.groups.add(Group.objects.get(name="ops"))

    # The most recent 03:00 UTC that has passed: the last scheduled run.
    now = datetime.now(UTC)
    today = now.replace(hour=3, minute=0, second=0, microsecond=0)
    if today > now:
        today -= timedelta(days=1)
    with SandboxServer(port=0, users=USERS, seed=11) as sandbox:
        users = sandbox.junction.user_ids
        config = settings.JUNCTION_SYNC.replace(
            api_key=sandbox.api_key,
            base_url_override=sandbox.junction_url,
            environment="sandbox",
            user_ids=tuple(users),
            lookback_days=2,
        )
        with override_settings(
            JUNCTION_SYNC=config, SYNC_RETRY_BASE_SECONDS=0.01, PROVIDER_BACKOFF_BASE=0.01
        ):
            for days_ago in range(DAYS - 1, -1, -1):
                sandbox.faults.clear()
                if days_ago in (18, 17, 16):  # one user's provider link broken for three days
                    sandbox.faults.add({"user_id": users[3], "status": 503, "count": -1})
                if days_ago == 9:  # a provider outage: everyone fails
                    sandbox.faults.add({"status": 503, "count": -1})
                if days_ago == 0:  # last night: two users failing
                    for user in users[1:3]:
                        sandbox.faults.add({"user_id": user, "status": 503, "count": -1})
                if days_ago == 2:
                    quiet = Connection.objects.get(patient__junction_user_id=users[5])
                    actions.do_deactivate_connection(
                        quiet, reason="patient paused the study", actor="olivia-ops"
                    )
                with time_machine.travel(today - timedelta(days=days_ago), tick=True):
                    tasks.sync_job("wearable-sync-daily")
                print(f"day -{days_ago}: synced", flush=True)
            sandbox.faults.clear()
            later = datetime.now(UTC)
            with time_machine.travel(later, tick=True):
                actions.do_reactivate_connection(
                    Connection.objects.get(patient__junction_user_id=users[5]), actor="olivia-ops"
                )
                left = Connection.objects.get(patient__junction_user_id=users[7])
                actions.do_deactivate_connection(left, reason="patient revoked access", actor="olivia-ops")
                actions.do_request_resync(
                    Connection.objects.get(patient__junction_user_id=users[0]), actor="olivia-ops"
                )
        shown = next(u for u in users if sandbox.junction.user(u).cgm_provider and u not in users[1:3])
    Path(env["SCREENSHOT_STATE"]).write_text(str(Patient.objects.get(junction_user_id=shown).pk))


def take_screenshots(env: dict[str, str], patient_id: str) -> None:
    from playwright.sync_api import sync_playwright

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        chromium = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1680, "height": 900})
            page.goto(f"{base}/admin/login/")
            page.fill("#id_username", "olivia-ops")
            page.fill("#id_password", PASSWORD)
            page.click("input[type=submit]")
            page.wait_for_selector("#site-name")
            shots = {
                "admin-connections.png": "/admin/connections/connection/",
                "admin-patient.png": f"/admin/connections/patient/{patient_id}/change/",
                "admin-job-health.png": "/admin/connections/jobhealth/",
            }
            for name, url in shots.items():
                page.goto(base + url)
                page.wait_for_load_state("networkidle")
                page.screenshot(path=str(DOCS / name), full_page=True)
                print(f"wrote docs/{name}")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=10)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            "DEBUG": "true",
            "SECRET_KEY": "screenshots-only",
            "DATABASE_URL": fresh_database(),
            "Q_SYNC": "true",
            "LOG_LEVEL": "warning",
            "SCREENSHOT_STATE": f"{tmp}/state",
        }
        # The data is built in a child process: Django is set up there on the temporary database, and
        # Playwright's event loop never shares a thread with the ORM.
        subprocess.run([sys.executable, __file__, "--build"], check=True, env={**os.environ, **env})
        take_screenshots(env, Path(env["SCREENSHOT_STATE"]).read_text())


if __name__ == "__main__":
    if "--build" in sys.argv:
        build_data(
            {k: os.environ[k] for k in ("DEBUG", "SECRET_KEY", "DATABASE_URL", "Q_SYNC", "SCREENSHOT_STATE")}
        )
    else:
        main()
