"""Cross-setting rules of the daily-statistics and retention jobs (reported by `manage.py check`)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, register


@register()
def retention_settings_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    lookback = settings.JUNCTION_SYNC.lookback_days
    if settings.RAW_READING_RETENTION_DAYS <= lookback:
        return [
            Error(
                f"RAW_READING_RETENTION_DAYS={settings.RAW_READING_RETENTION_DAYS} must exceed "
                f"JUNCTION_SYNC_LOOKBACK_DAYS={lookback}: every sync would re-insert rows the cleanup removes.",
                id="readings.E001",
            )
        ]
    return []
