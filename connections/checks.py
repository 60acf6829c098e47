"""Cross-setting rules, reported by `manage.py check` and at the start of every command."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register


@register()
def loopsync_settings_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    if settings.TIME_ZONE != "UTC":
        messages.append(Error("TIME_ZONE must be 'UTC': storage is aware UTC.", id="connections.E001"))
    q = settings.Q_CLUSTER
    if q.get("timeout") and q.get("retry") and q["timeout"] >= q["retry"]:
        messages.append(
            Error(
                "Q_CLUSTER timeout must be below retry, or a slow task is delivered twice.",
                hint="Lower Q_TIMEOUT.",
                id="connections.E002",
            )
        )
    engine = settings.DATABASES["default"]["ENGINE"]
    if not settings.DEBUG and engine.endswith("sqlite3"):
        messages.append(
            Warning(
                "DATABASE_URL points at SQLite with DEBUG off; production runs on PostgreSQL.",
                id="connections.W001",
            )
        )
    return messages
