"""Configuration: bad values stop start-up (or the command) with a message naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from connections.config import JunctionSyncConfig

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith(("JUNCTION_", "PATIENT_GRAPH_")):
            monkeypatch.delenv(name)
    return monkeypatch


def test_defaults_are_sandbox_us_with_a_7_day_lookback(clean_env: pytest.MonkeyPatch) -> None:
    config = JunctionSyncConfig.from_env()
    assert (config.environment, config.region, config.lookback_days) == ("sandbox", "us", 7)
    assert config.base_url == "https://api.sandbox.us.junction.com"
    assert config.user_ids == ()


@pytest.mark.parametrize(
    ("env", "region", "host"),
    [
        ("production", "us", "https://api.us.junction.com"),
        ("production", "eu", "https://api.eu.junction.com"),
        ("sandbox", "us", "https://api.sandbox.us.junction.com"),
        ("sandbox", "eu", "https://api.sandbox.eu.junction.com"),
    ],
)
def test_host_follows_environment_and_region(
    clean_env: pytest.MonkeyPatch, env: str, region: str, host: str
) -> None:
    clean_env.setenv("JUNCTION_ENV", env)
    clean_env.setenv("JUNCTION_REGION", region)
    clean_env.setenv("JUNCTION_API_KEY", "pk_us_x")
    assert JunctionSyncConfig.from_env().base_url == host


def test_base_url_override_wins(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("JUNCTION_BASE_URL", "http://127.0.0.1:8765/junction/")
    assert JunctionSyncConfig.from_env().base_url == "http://127.0.0.1:8765/junction"


def test_user_ids_are_split_trimmed_and_deduplicated(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("JUNCTION_SYNC_USER_IDS", " user_123, user_456,,user_123 ")
    assert JunctionSyncConfig.from_env().user_ids == ("user_123", "user_456")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("JUNCTION_REGION", "asia"),
        ("JUNCTION_ENV", "staging"),
        ("JUNCTION_SYNC_LOOKBACK_DAYS", "seven"),
        ("JUNCTION_SYNC_LOOKBACK_DAYS", "0"),
        ("JUNCTION_SYNC_LOOKBACK_DAYS", "400"),
    ],
)
def test_bad_value_names_the_variable(clean_env: pytest.MonkeyPatch, name: str, value: str) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(ImproperlyConfigured, match=name):
        JunctionSyncConfig.from_env()


def test_production_without_api_key_is_refused(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("JUNCTION_ENV", "production")
    with pytest.raises(ImproperlyConfigured, match="JUNCTION_API_KEY"):
        JunctionSyncConfig.from_env()


def test_patient_graph_url_needs_its_key(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("PATIENT_GRAPH_API_URL", "https://graph.example")
    with pytest.raises(ImproperlyConfigured, match="PATIENT_GRAPH_API_KEY"):
        JunctionSyncConfig.from_env()


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JUNCTION_", "DJANGO_SETTINGS"))}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**base, "DEBUG": "true", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_bad_region_stops_start_up_with_the_variable_name() -> None:
    proc = _manage("check", JUNCTION_REGION="asia")
    assert proc.returncode != 0
    assert "JUNCTION_REGION" in proc.stderr and "asia" in proc.stderr


def test_missing_secret_key_with_debug_off_stops_start_up() -> None:
    proc = _manage("check", DEBUG="false", SECRET_KEY="")
    assert proc.returncode != 0
    assert "SECRET_KEY" in proc.stderr


def test_bad_lookback_on_the_command_line_is_a_command_error() -> None:
    proc = _manage("sync_wearables", "--lookback-days", "seven", "--json")
    assert proc.returncode != 0
    assert "--lookback-days" in proc.stderr
    assert proc.stdout == ""
