"""The provider sandbox is no part of a production deployment: its app is installed only when asked for."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHECK = "from django.conf import settings; print('sandbox' in settings.INSTALLED_APPS)"


def installed(**env: str) -> bool:
    clean = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "SANDBOX_ENABLED")}
    result = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {CHECK}"],
        env={**clean, "DJANGO_SETTINGS_MODULE": "loopsync.settings", "SECRET_KEY": "x" * 50, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout.strip() == "True"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, False),
        ({"DEBUG": "true"}, True),
        ({"SANDBOX_ENABLED": "true"}, True),
        ({"DEBUG": "true", "SANDBOX_ENABLED": "false"}, False),
    ],
)
def test_the_sandbox_app_is_installed_only_with_debug_or_sandbox_enabled(
    env: dict[str, str], expected: bool
) -> None:
    assert installed(**env) is expected
