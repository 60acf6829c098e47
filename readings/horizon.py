"""The frozen horizon: raw readings are kept RAW_READING_RETENTION_DAYS; before that, daily statistics are final.

- `raw_horizon(now)`: the instant before which retention may already have removed raw rows. A reading older
  than it is refused: the service ingest API answers 400 naming the row, a sync skips it (counted in the
  sync's skipped records, logged without values). Storing it would recompute a day from partial raw rows.
- `first_complete_day(now)`: the first local day (in any zone: a 2-day margin covers UTC-12..UTC+14) whose
  raw rows are all still inside the horizon. Statistics of earlier days are final: no ingest, mark,
  duplicate removal or aggregation (incremental or `--full`) recomputes them; only their rolling averages
  follow from the stored daily values.
"""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta

from django.conf import settings
from django.utils import timezone

logger = logging.getLogger("loopsync.horizon")

# A local day's UTC start is at most 14 hours before its UTC date's start (UTC+14), its end 12 hours after.
HORIZON_MARGIN = timedelta(days=2)


def raw_horizon(now: datetime | None = None) -> datetime:
    return (now or timezone.now()) - timedelta(days=settings.RAW_READING_RETENTION_DAYS)


def first_complete_day(now: datetime | None = None) -> date:
    return (raw_horizon(now) + HORIZON_MARGIN).date()


def canonical_horizon(now: datetime | None = None) -> str:
    """The horizon in the rows' canonical UTC text form ("YYYY-MM-DD HH:MM:SS+00:00"), which orders like the
    instants it names (a fraction of a second sorts after the whole second), so rows compare as strings."""
    return raw_horizon(now).strftime("%Y-%m-%d %H:%M:%S+00:00")


def drop_past_horizon(readings: list, glucose: list, now: datetime | None = None) -> tuple[list, list, int]:
    """The rows measured inside the horizon, and how many were dropped (a sync counts them as skipped)."""
    horizon = canonical_horizon(now)
    kept_readings = [row for row in readings if row[3] >= horizon]
    kept_glucose = [row for row in glucose if row[1] >= horizon]
    dropped = len(readings) - len(kept_readings) + len(glucose) - len(kept_glucose)
    if dropped:
        logger.warning(
            "skipped readings older than the raw retention horizon",
            extra={"skipped": dropped, "retention_days": settings.RAW_READING_RETENTION_DAYS},
        )
    return kept_readings, kept_glucose, dropped
