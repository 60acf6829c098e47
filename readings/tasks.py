"""django-q2 entry points for the daily-statistics and retention jobs: thin wrappers returning summaries.

Both are recorded as job runs (JobRun row, Sentry Crons check-ins, summary log line) like the sync jobs.
"""

from __future__ import annotations

from typing import Any

from connections.jobruns import tracked_job
from readings.aggregate import run_aggregation
from readings.retention import run_cleanup


@tracked_job("aggregate-wearable-data")
def aggregate_wearable_data(full: bool = False) -> dict[str, Any]:
    """`aggregate-wearable-data` (daily, 04:30 UTC, after the 03:00 sync): consume the day marks."""
    return run_aggregation(full=full).as_dict()


@tracked_job("cleanup-wearable-data")
def cleanup_wearable_data(dry_run: bool = False) -> dict[str, Any]:
    """`cleanup-wearable-data` (weekly): partitions ahead, retention, orphans, duplicates."""
    return run_cleanup(dry_run=dry_run).as_dict()
