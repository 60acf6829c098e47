"""Each ingest marks the (patient, metric, local day) keys it touched; `aggregate-wearable-data` consumes them.

The mark is written in the caller's transaction, so it commits (or rolls back) with the readings it covers.
A re-mark bumps `version`: the aggregator deletes a mark only if its version is the one it read.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date

from django.db import connection as db

_PG_MARK = """
INSERT INTO patient_wearable_daily_stats_dirty AS d (patient_id, metric, day, version, marked_at)
SELECT %(patient)s, k.metric, k.day, 1, now()
FROM unnest(%(metrics)s::text[], %(days)s::date[]) AS k(metric, day)
ON CONFLICT (patient_id, metric, day) DO UPDATE
    SET version = d.version + 1, marked_at = EXCLUDED.marked_at
"""


def mark_dirty(patient_id: int, keys: Iterable[tuple[str, date]]) -> None:
    """Upsert the marks of one patient's touched (metric, local day) keys. Needs the caller's transaction."""
    # Sorted: two transactions marking overlapping keys lock them in the same order (no deadlock).
    ordered = sorted(set(keys))
    if not ordered:
        return
    with db.cursor() as cursor:
        cursor.execute(
            _PG_MARK,
            {"patient": patient_id, "metrics": [m for m, _ in ordered], "days": [d for _, d in ordered]},
        )
