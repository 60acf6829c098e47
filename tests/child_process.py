"""For tests that run the product in child processes (a worker killed, a cluster killed): the environment that
points a child at this test's database and the session's sandbox."""

from __future__ import annotations

import os
from pathlib import Path

from django.db import connection as db

from connections.config import JunctionSyncConfig

ROOT = Path(__file__).resolve().parent.parent


def child_env(config: JunctionSyncConfig, **extra: str) -> dict[str, str]:
    settings = db.settings_dict
    url = (
        f"postgres://{settings['USER']}:{settings['PASSWORD'] or ''}@{settings['HOST'] or '127.0.0.1'}:"
        f"{settings['PORT'] or 5432}/{settings['NAME']}"
    )
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "loopsync.settings_test",
        "DATABASE_URL": url,
        "JUNCTION_BASE_URL": config.base_url_override,
        "JUNCTION_API_KEY": config.api_key,
        "JUNCTION_SYNC_USER_IDS": ",".join(config.user_ids),
        "JUNCTION_SYNC_LOOKBACK_DAYS": str(config.lookback_days),
        "LOG_LEVEL": "error",
        "PYTHONPATH": str(ROOT),
        **extra,
    }
