"""The web service as render.yaml deploys it (issue 17, items 7 and 8).

Static files: `collectstatic` with the production storage (hashed names, gzip), then gunicorn with DEBUG off
and the production settings in a child process, asked over real HTTP for the admin's CSS and Swagger UI's files
named by the pages that use them. The system check that stops a deploy without Clerk keys, and render.yaml
carrying what that check and the health routes need.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.urls import reverse

from connections.checks import rest_api_settings_check

# The gunicorn child reads this run's test database (migrated): the mark makes pytest-django create it.
pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent
RENDER = yaml.safe_load((ROOT / "render.yaml").read_text())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def production_env(static_root: Path, database_url: str) -> dict[str, str]:
    """The production settings module with DEBUG off, as on Render, pointed at this run's test database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "SENTRY_"))}
    return env | {
        "DJANGO_SETTINGS_MODULE": "loopsync.settings",
        "DEBUG": "false",
        "SECRET_KEY": "test-only-secret-key",
        "DATABASE_URL": database_url,
        "ALLOWED_HOSTS": "127.0.0.1",
        "STATIC_ROOT": str(static_root),
        "SANDBOX_ENABLED": "false",
        "JUNCTION_ENV": "sandbox",
        "LOG_LEVEL": "error",
        "PYTHONPATH": str(ROOT),
    }


@pytest.fixture(scope="module")
def gunicorn_url(
    django_db_setup: None, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    from django.db import connection

    db = connection.settings_dict
    database_url = (
        f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/"
        f"{db['NAME']}"
    )
    env = production_env(tmp_path_factory.mktemp("staticfiles"), database_url)
    # render.yaml's build step, with the storage of the production settings.
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=120,
    )
    port = _free_port()
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    process = subprocess.Popen(
        [
            gunicorn,
            "loopsync.wsgi:application",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"gunicorn did not start (exit code {process.poll()})")
            time.sleep(0.2)
        with django_db_blocker.unblock():
            yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def _static_url(html: str, pattern: str) -> str:
    match = re.search(rf'(?:href|src)="(/static/{pattern})"', html)
    assert match, f"no /static/{pattern} in the page"
    return match.group(1)


def test_admin_css_is_served_with_debug_off(gunicorn_url: str) -> None:
    page = httpx.get(f"{gunicorn_url}/admin/login/")
    assert page.status_code == 200
    css = _static_url(page.text, r"admin/css/base(?:\.[0-9a-f]{12})?\.css")
    response = httpx.get(f"{gunicorn_url}{css}", headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 200, css
    assert response.headers["content-type"].startswith("text/css")
    assert "#header" in response.text
    # The page names the hashed file collectstatic wrote (manifest storage), served gzipped, and browsers may
    # keep it for good: a hashed name never changes content.
    assert re.fullmatch(r"/static/admin/css/base\.[0-9a-f]{12}\.css", css), css
    assert response.headers["content-encoding"] == "gzip"
    assert "immutable" in response.headers["cache-control"]


def test_swagger_ui_assets_are_served_with_debug_off(gunicorn_url: str) -> None:
    page = httpx.get(f"{gunicorn_url}/api/docs/")
    assert page.status_code == 200
    sidecar = r"drf_spectacular_sidecar/swagger-ui-dist/"
    for pattern, content_type in (
        (sidecar + r"swagger-ui-bundle(?:\.[0-9a-f]{12})?\.js", "text/javascript"),
        (sidecar + r"swagger-ui-standalone-preset(?:\.[0-9a-f]{12})?\.js", "text/javascript"),
        (sidecar + r"swagger-ui(?:\.[0-9a-f]{12})?\.css", "text/css"),
    ):
        url = _static_url(page.text, pattern)
        response = httpx.get(f"{gunicorn_url}{url}")
        assert response.status_code == 200, url
        assert response.headers["content-type"].startswith(content_type), response.headers["content-type"]
        assert len(response.content) > 10_000
        assert re.search(r"\.[0-9a-f]{12}\.(js|css)$", url), url


def test_an_unknown_static_file_is_404(gunicorn_url: str) -> None:
    assert httpx.get(f"{gunicorn_url}/static/admin/css/nope.css").status_code == 404


def test_readiness_over_gunicorn(gunicorn_url: str) -> None:
    response = httpx.get(f"{gunicorn_url}/healthz/ready", headers={"Accept": "application/json"})
    assert response.status_code == 200, response.text
    assert set(response.json().values()) == {"OK"}


# --- The deploy's system check and render.yaml ----------------------------------------------------------


def test_no_clerk_keys_with_debug_off_is_an_error_that_stops_the_check(settings: Any) -> None:
    settings.CLERK_JWT_KEY = ""
    settings.CLERK_JWKS_URL = ""
    assert "connections.E104" in {m.id for m in rest_api_settings_check(None) if m.is_serious()}
    with pytest.raises(SystemCheckError, match="connections.E104"):
        call_command("check")
    # Local work (DEBUG on) may run without Clerk.
    settings.DEBUG = True
    assert "connections.E104" not in {m.id for m in rest_api_settings_check(None)}


def test_the_test_settings_pass_the_deploy_check() -> None:
    # The suite's own Clerk configuration is complete (a key no token verifies against), not silenced.
    assert rest_api_settings_check(None) == []
    call_command("check")


def test_a_cors_origin_clerk_would_refuse_is_a_warning(settings: Any) -> None:
    settings.CORS_ALLOWED_ORIGINS = ["http://localhost:3000", "https://other.example.com"]
    warnings = [m for m in rest_api_settings_check(None) if m.id == "connections.W104"]
    assert len(warnings) == 1 and "https://other.example.com" in warnings[0].msg


def _service(name: str) -> dict[str, Any]:
    return next(s for s in RENDER["services"] if s["name"] == name)


def _shared_env() -> dict[str, dict[str, Any]]:
    (group,) = (g for g in RENDER["envVarGroups"] if g["name"] == "loopsync-shared")
    return {v["key"]: v for v in group["envVars"]}


def test_render_yaml_sets_the_clerk_and_cors_variables_as_secrets() -> None:
    env = _shared_env()
    for key in ("CLERK_JWT_KEY", "CLERK_JWKS_URL", "CLERK_ISSUER", "CLERK_AUTHORIZED_PARTIES"):
        assert env[key].get("sync") is False, key
    assert env["CORS_ALLOWED_ORIGINS"].get("sync") is False


def test_render_yaml_checks_builds_static_files_and_probes_readiness() -> None:
    web = _service("loopsync-web")
    assert "python manage.py collectstatic --noinput" in web["buildCommand"]
    # The system checks run before migrations, so a deploy missing Clerk keys stops there.
    assert web["preDeployCommand"].startswith("python manage.py check --fail-level ERROR &&")
    assert web["healthCheckPath"] == reverse("healthz-ready")


# --- In a real browser ---------------------------------------------------------------------------------------


@pytest.mark.browser
def test_admin_and_swagger_ui_are_styled_in_a_browser_with_debug_off(gunicorn_url: str) -> None:
    """Headless Chromium on the gunicorn above (not pytest-django's live_server, whose own static handler would
    serve the files whatever the settings): the stylesheets apply and Swagger UI renders the schema."""
    from tests.test_admin_browser import _require_browser, chromium_page

    _require_browser()
    with chromium_page() as page:
        failed: list[str] = []
        page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
        page.goto(f"{gunicorn_url}/admin/login/")
        # The admin's base.css paints the header; unstyled, it is transparent.
        header = page.eval_on_selector("#header", "e => getComputedStyle(e).backgroundColor")
        assert header not in ("rgba(0, 0, 0, 0)", "transparent"), header
        assert page.evaluate("document.styleSheets.length") >= 1

        page.goto(f"{gunicorn_url}/api/docs/")
        page.wait_for_selector(".swagger-ui .info .title")
        assert "Loop Sync API" in page.inner_text(".swagger-ui .info .title")
        assert failed == []
