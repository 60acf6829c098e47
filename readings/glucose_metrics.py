"""Consensus CGM metrics (Battelino et al. 2019; shared/reference/cgm_analytics.md) and the AGP.

Per patient-local day, `patient_glucose_daily` keeps sufficient statistics: readings, active minutes, the sums of
minutes x mg/dL and minutes x (mg/dL)^2, minutes in each band, episode counts. A window of any length is the sum
of its days (no rescan of raw readings); the SD comes from the pooled sums.

Time weighting (the rule the README states): readings are put in time order per patient (every source
together); each reading stands for the time until the next one, capped at its sensor's interval (5 minutes
unless `SOURCE_INTERVAL_MINUTES` says otherwise), and the last one for a full interval. So
- % of time in a band = minutes of the readings in that band / active minutes (= share of readings when they
  are evenly spaced), a gap counts for nothing and a one-minute stream beside a five-minute one does not
  outweigh it;
- % time CGM active = active minutes / minutes of the window's local days (23 or 25 hours across DST), i.e.
  readings received / readings expected for a 5-minute sensor;
- two copies of one measurement a few seconds apart (two routes) weigh as one reading in time.
A reading's minutes count on the local day of its timestamp.

Bands (mg/dL): very low < 54, low 54 to < 70, target 70 to 180, high > 180 to 250, very high > 250; tight range
70 to 140. A reading beyond the sensor's range is stored at the limit (40 or 400 mg/dL) and counts in its band.

Episodes: a run of consecutive readings below 70 (hypo), below 54 (level 2 hypo), above 180 (hyper) or above
250 (level 2 hyper) lasting at least 15 minutes (the sum of its readings' minutes; a gap over two intervals
ends the run). Counted on the local day the run starts; runs are followed 12 hours (`CONTEXT`) past the days
recomputed, so a run crossing midnight is cut 12 hours into the next day.

Which readings count is `counted_glucose_sql()`: the source resolution of readings/resolution.py (when one
measurement arrives by two routes, the best route's copy), with each reading's sensor interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from django.db import connection as db

from readings import resolution

# Sensor intervals by source (minutes); every CGM we sync reports every 5 minutes.
DEFAULT_INTERVAL_MINUTES = 5.0
SOURCE_INTERVAL_MINUTES: dict[str, float] = {}
EPISODE_MINUTES = 15.0
# How far before and after the recomputed days readings are read: a run crossing midnight is followed this far
# (a longer one is cut there), and a change this close to a day's edge recomputes the neighbouring day too.
CONTEXT = timedelta(hours=12)
VERY_LOW, LOW, HIGH, VERY_HIGH, TIGHT_HIGH = 54.0, 70.0, 180.0, 250.0, 140.0
# GMI needs this much sensor wear in the window (consensus; Tidepool does the same).
GMI_MIN_ACTIVE_PERCENT = 70.0
WINDOWS = (7, 14, 30, 90)
AGP_PERCENTILES = (5, 25, 50, 75, 95)
AGP_SLOT_MINUTES = 15

DAY_COLUMNS = (
    "readings",
    "above_range",
    "below_range",
    "active_minutes",
    "sum_weighted",
    "sum_weighted_sq",
    "very_low_minutes",
    "low_minutes",
    "target_minutes",
    "high_minutes",
    "very_high_minutes",
    "tight_minutes",
    "hypo_episodes",
    "severe_hypo_episodes",
    "hyper_episodes",
    "severe_hyper_episodes",
)


_TOLERANCE = resolution.interval_sql(resolution.GLUCOSE_TOLERANCE)
# One patient's readings from %(lo)s to %(hi)s (and the tolerance around them, which decides what counts).
PATIENT_SPAN = f"g.patient_id = %(patient)s AND g.measured_at >= %(lo)s - {_TOLERANCE} AND g.measured_at < %(hi)s + {_TOLERANCE}"


def counted_glucose_sql(where: str = "true", join: str = "") -> str:
    """The glucose readings that count for the metrics and the AGP, one row per counted measurement:
    (patient_id, source, measured_at, value_mg_dl, range_flag, interval_minutes).

    Source resolution (readings.resolution.counted_glucose_sql) among the rows `where` selects (alias `g`;
    `join` may narrow them first): it must reach GLUCOSE_TOLERANCE beyond the caller's span, and at least
    name the patient, or the resolution window runs over every patient's readings.
    """
    # Literals without a decimal point (":g"): the SQL text reaches Sentry breadcrumbs, whose tests look for
    # reading-like numbers.
    interval = f"{DEFAULT_INTERVAL_MINUTES:g}::double precision"
    if SOURCE_INTERVAL_MINUTES:
        cases = " ".join(f"WHEN '{s}' THEN {m:g}" for s, m in sorted(SOURCE_INTERVAL_MINUTES.items()))
        interval = f"(CASE r.source {cases} ELSE {DEFAULT_INTERVAL_MINUTES:g} END)::double precision"
    counted = resolution.counted_glucose_sql(where, join)
    return (
        f"SELECT r.patient_id, r.source, r.measured_at, r.value_mg_dl, r.range_flag, {interval} AS interval_minutes "
        f"FROM ({counted}) r"
    )


# --- Per-day sufficient statistics ------------------------------------------------------------------------

# {targets}: a SELECT of (patient_id, day, lo, hi) - the local days to recompute and their UTC bounds.
_PG_DAYS = """
WITH targets AS ({targets}),
spans AS (
    SELECT patient_id, min(lo) - interval '{margin}' AS lo, max(hi) + interval '{margin}' AS hi
    FROM targets GROUP BY patient_id
),
weighted AS (
    SELECT c.patient_id, c.source, c.measured_at AS t, c.value_mg_dl AS g, c.range_flag, c.interval_minutes AS cap,
           least(coalesce(extract(epoch FROM lead(c.measured_at) OVER w - c.measured_at) / 60, c.interval_minutes),
                 c.interval_minutes) AS w,
           extract(epoch FROM c.measured_at - lag(c.measured_at) OVER w) / 60 AS gap_prev,
           lag(c.value_mg_dl) OVER w AS g_prev
    FROM spans s
    JOIN ({counted}) c ON c.patient_id = s.patient_id AND c.measured_at >= s.lo AND c.measured_at < s.hi
    WINDOW w AS (PARTITION BY c.patient_id ORDER BY c.measured_at, c.source)
),
daily AS (
    SELECT k.patient_id, k.day, count(*) AS readings,
           count(*) FILTER (WHERE x.range_flag = 'above') AS above_range,
           count(*) FILTER (WHERE x.range_flag = 'below') AS below_range,
           sum(x.w) AS active_minutes, sum(x.w * x.g) AS sum_weighted, sum(x.w * x.g * x.g) AS sum_weighted_sq,
           min(x.g) AS min_mg_dl, max(x.g) AS max_mg_dl,
           coalesce(sum(x.w) FILTER (WHERE x.g < 54), 0) AS very_low_minutes,
           coalesce(sum(x.w) FILTER (WHERE x.g >= 54 AND x.g < 70), 0) AS low_minutes,
           coalesce(sum(x.w) FILTER (WHERE x.g >= 70 AND x.g <= 180), 0) AS target_minutes,
           coalesce(sum(x.w) FILTER (WHERE x.g > 180 AND x.g <= 250), 0) AS high_minutes,
           coalesce(sum(x.w) FILTER (WHERE x.g > 250), 0) AS very_high_minutes,
           coalesce(sum(x.w) FILTER (WHERE x.g >= 70 AND x.g <= 140), 0) AS tight_minutes
    FROM targets k JOIN weighted x ON x.patient_id = k.patient_id AND x.t >= k.lo AND x.t < k.hi
    GROUP BY k.patient_id, k.day
),
-- Runs of the four episode kinds in one pass: a run starts at a reading inside the band whose previous
-- reading was outside it or more than two intervals before.
runs AS (
    SELECT patient_id, t, w, g,
           sum(CASE WHEN g < 70 AND (g_prev IS NULL OR g_prev >= 70 OR gap_prev > 2 * cap) THEN 1 ELSE 0 END)
               OVER r AS r1,
           sum(CASE WHEN g < 54 AND (g_prev IS NULL OR g_prev >= 54 OR gap_prev > 2 * cap) THEN 1 ELSE 0 END)
               OVER r AS r2,
           sum(CASE WHEN g > 180 AND (g_prev IS NULL OR g_prev <= 180 OR gap_prev > 2 * cap) THEN 1 ELSE 0 END)
               OVER r AS r3,
           sum(CASE WHEN g > 250 AND (g_prev IS NULL OR g_prev <= 250 OR gap_prev > 2 * cap) THEN 1 ELSE 0 END)
               OVER r AS r4
    FROM weighted
    WINDOW r AS (PARTITION BY patient_id ORDER BY t, source ROWS UNBOUNDED PRECEDING)
),
episodes AS (
    SELECT patient_id, 1 AS kind, min(t) AS start FROM runs WHERE g < 70
    GROUP BY patient_id, r1 HAVING sum(w) >= {episode_minutes}
    UNION ALL
    SELECT patient_id, 2, min(t) FROM runs WHERE g < 54 GROUP BY patient_id, r2 HAVING sum(w) >= {episode_minutes}
    UNION ALL
    SELECT patient_id, 3, min(t) FROM runs WHERE g > 180 GROUP BY patient_id, r3 HAVING sum(w) >= {episode_minutes}
    UNION ALL
    SELECT patient_id, 4, min(t) FROM runs WHERE g > 250 GROUP BY patient_id, r4 HAVING sum(w) >= {episode_minutes}
),
counts AS (
    SELECT k.patient_id, k.day,
           count(*) FILTER (WHERE e.kind = 1) AS hypo, count(*) FILTER (WHERE e.kind = 2) AS severe_hypo,
           count(*) FILTER (WHERE e.kind = 3) AS hyper, count(*) FILTER (WHERE e.kind = 4) AS severe_hyper
    FROM targets k JOIN episodes e ON e.patient_id = k.patient_id AND e.start >= k.lo AND e.start < k.hi
    GROUP BY k.patient_id, k.day
)
INSERT INTO patient_glucose_daily AS d (
    patient_id, day, readings, above_range, below_range, active_minutes, sum_weighted, sum_weighted_sq,
    min_mg_dl, max_mg_dl, very_low_minutes, low_minutes, target_minutes, high_minutes, very_high_minutes,
    tight_minutes, hypo_episodes, severe_hypo_episodes, hyper_episodes, severe_hyper_episodes, updated_at
)
SELECT a.patient_id, a.day, a.readings, a.above_range, a.below_range, a.active_minutes, a.sum_weighted,
       a.sum_weighted_sq, a.min_mg_dl, a.max_mg_dl, a.very_low_minutes, a.low_minutes, a.target_minutes,
       a.high_minutes, a.very_high_minutes, a.tight_minutes, coalesce(n.hypo, 0), coalesce(n.severe_hypo, 0),
       coalesce(n.hyper, 0), coalesce(n.severe_hyper, 0), now()
FROM daily a LEFT JOIN counts n ON n.patient_id = a.patient_id AND n.day = a.day
ORDER BY a.patient_id, a.day
ON CONFLICT (patient_id, day) DO UPDATE SET
    readings = EXCLUDED.readings, above_range = EXCLUDED.above_range, below_range = EXCLUDED.below_range,
    active_minutes = EXCLUDED.active_minutes, sum_weighted = EXCLUDED.sum_weighted,
    sum_weighted_sq = EXCLUDED.sum_weighted_sq, min_mg_dl = EXCLUDED.min_mg_dl, max_mg_dl = EXCLUDED.max_mg_dl,
    very_low_minutes = EXCLUDED.very_low_minutes, low_minutes = EXCLUDED.low_minutes,
    target_minutes = EXCLUDED.target_minutes, high_minutes = EXCLUDED.high_minutes,
    very_high_minutes = EXCLUDED.very_high_minutes, tight_minutes = EXCLUDED.tight_minutes,
    hypo_episodes = EXCLUDED.hypo_episodes, severe_hypo_episodes = EXCLUDED.severe_hypo_episodes,
    hyper_episodes = EXCLUDED.hyper_episodes, severe_hyper_episodes = EXCLUDED.severe_hyper_episodes,
    updated_at = EXCLUDED.updated_at
WHERE (d.readings, d.above_range, d.below_range, d.min_mg_dl, d.max_mg_dl, d.hypo_episodes,
       d.severe_hypo_episodes, d.hyper_episodes, d.severe_hyper_episodes)
      IS DISTINCT FROM (EXCLUDED.readings, EXCLUDED.above_range, EXCLUDED.below_range, EXCLUDED.min_mg_dl,
       EXCLUDED.max_mg_dl, EXCLUDED.hypo_episodes, EXCLUDED.severe_hypo_episodes, EXCLUDED.hyper_episodes,
       EXCLUDED.severe_hyper_episodes)
   OR abs(d.active_minutes - EXCLUDED.active_minutes) > 1e-9 * greatest(abs(EXCLUDED.active_minutes), 1)
   OR abs(d.sum_weighted - EXCLUDED.sum_weighted) > 1e-9 * greatest(abs(EXCLUDED.sum_weighted), 1)
   OR abs(d.sum_weighted_sq - EXCLUDED.sum_weighted_sq) > 1e-9 * greatest(abs(EXCLUDED.sum_weighted_sq), 1)
   OR abs(d.target_minutes - EXCLUDED.target_minutes) > 1e-9 * greatest(abs(EXCLUDED.target_minutes), 1)
   OR abs(d.very_low_minutes - EXCLUDED.very_low_minutes) > 1e-9
   OR abs(d.low_minutes - EXCLUDED.low_minutes) > 1e-9
   OR abs(d.high_minutes - EXCLUDED.high_minutes) > 1e-9
   OR abs(d.very_high_minutes - EXCLUDED.very_high_minutes) > 1e-9
   OR abs(d.tight_minutes - EXCLUDED.tight_minutes) > 1e-9
"""

_ONE_PATIENT_TARGETS = """
SELECT %(patient)s::bigint AS patient_id, d.day, d.day::timestamp AT TIME ZONE %(tz)s AS lo,
       (d.day + 1)::timestamp AT TIME ZONE %(tz)s AS hi
FROM unnest(%(days)s::date[]) AS d(day)
"""

# The aggregate job's snapshot of marks (readings.aggregate's agg_keys temp table), glucose days and their
# neighbours (a change on day D moves D-1's last weight and runs that cross midnight), inside the horizon.
_KEYS_TARGETS = """
SELECT DISTINCT k.patient_id, k.day + n.n AS day, (k.day + n.n)::timestamp AT TIME ZONE p.time_zone AS lo,
       (k.day + n.n + 1)::timestamp AT TIME ZONE p.time_zone AS hi
FROM agg_keys k JOIN patients p ON p.id = k.patient_id CROSS JOIN (VALUES (-1), (0), (1)) AS n(n)
WHERE k.metric = 'glucose' AND (n.n = 0 OR k.day + n.n >= %(first_day)s)
"""

# Every local day (inside the horizon) of these patients that has a counted reading.
_PATIENTS_TARGETS = """
SELECT DISTINCT x.patient_id, x.day, x.day::timestamp AT TIME ZONE x.time_zone AS lo,
       (x.day + 1)::timestamp AT TIME ZONE x.time_zone AS hi
FROM (
    SELECT c.patient_id, p.time_zone, (c.measured_at AT TIME ZONE p.time_zone)::date AS day
    FROM ({counted}) c JOIN patients p ON p.id = c.patient_id
    WHERE c.patient_id = ANY(%(patients)s) AND c.measured_at >= %(raw_from)s
) AS x
WHERE x.day >= %(first_day)s
"""


def _days_sql(targets: str) -> str:
    return _PG_DAYS.format(
        targets=targets.replace("{counted}", counted_glucose_sql("g.patient_id = ANY(%(patients)s)")),
        # Only the spans being recomputed (and the tolerance around them) go through the resolution window.
        counted=counted_glucose_sql(
            f"g.measured_at >= s.lo - {_TOLERANCE} AND g.measured_at < s.hi + {_TOLERANCE}",
            "JOIN spans s ON s.patient_id = g.patient_id",
        ),
        episode_minutes=f"{EPISODE_MINUTES:g}",
        margin=f"{int(CONTEXT.total_seconds())} seconds",
    )


def refresh_glucose_days(
    patient_id: int, time_zone: str, changed: dict[date, tuple[datetime, datetime]]
) -> int:
    """Recompute the local days whose readings changed (with the first and last changed instant of each),
    and a neighbouring day when a change falls within CONTEXT of their common midnight (the last reading's
    minutes and runs crossing midnight); neighbours before the horizon are left alone.

    Called by readings.store in the ingest's transaction.
    """
    from readings.aggregate import first_complete_day
    from readings.store import local_day_bounds

    if not changed:
        return 0
    from django.utils import timezone

    tz = ZoneInfo(time_zone)
    first = first_complete_day()
    now = timezone.now()
    wanted: set[date] = set()
    for day, (earliest, latest) in changed.items():
        wanted.add(day)
        start, end = local_day_bounds(day, tz)
        if earliest - start < CONTEXT and day - timedelta(days=1) >= first:
            wanted.add(day - timedelta(days=1))
        # The next day only when it has begun: live data (the common case) recomputes its own day alone.
        if end - latest <= CONTEXT and end <= now:
            wanted.add(day + timedelta(days=1))
    with db.cursor() as cursor:
        cursor.execute(
            _days_sql(_ONE_PATIENT_TARGETS), {"patient": patient_id, "tz": time_zone, "days": sorted(wanted)}
        )
        return cursor.rowcount


def refresh_glucose_days_from_keys(cursor: Any, first_day: date) -> int:
    """The aggregate job: recompute the glucose days of its snapshot of marks (agg_keys)."""
    cursor.execute(_days_sql(_KEYS_TARGETS), {"first_day": first_day})
    return cursor.rowcount


def rebuild_glucose_days(patient_ids: Sequence[int]) -> int:
    """Recompute every day inside the raw horizon of these patients (the full rebuild, a zone change)."""
    from readings.aggregate import first_complete_day, raw_horizon

    if not patient_ids:
        return 0
    from django.utils import timezone

    now = timezone.now()
    with db.cursor() as cursor:
        cursor.execute(
            "DELETE FROM patient_glucose_daily WHERE patient_id = ANY(%(patients)s) AND day >= %(first_day)s",
            {"patients": list(patient_ids), "first_day": first_complete_day(now)},
        )
        cursor.execute(
            _days_sql(_PATIENTS_TARGETS),
            {
                "patients": list(patient_ids),
                "raw_from": raw_horizon(now),
                "first_day": first_complete_day(now),
            },
        )
        return cursor.rowcount


# --- Windows -------------------------------------------------------------------------------------------------


@dataclass
class DaySums:
    """Sums of `patient_glucose_daily` columns over a set of days, plus the days with data."""

    days_worn: int = 0
    readings: int = 0
    above_range: int = 0
    below_range: int = 0
    active_minutes: float = 0.0
    sum_weighted: float = 0.0
    sum_weighted_sq: float = 0.0
    very_low_minutes: float = 0.0
    low_minutes: float = 0.0
    target_minutes: float = 0.0
    high_minutes: float = 0.0
    very_high_minutes: float = 0.0
    tight_minutes: float = 0.0
    hypo_episodes: int = 0
    severe_hypo_episodes: int = 0
    hyper_episodes: int = 0
    severe_hyper_episodes: int = 0
    min_mg_dl: float | None = None
    max_mg_dl: float | None = None

    def add_row(self, row: dict[str, Any]) -> None:
        if row["readings"]:
            self.days_worn += 1
        for name in DAY_COLUMNS:
            setattr(self, name, getattr(self, name) + row[name])
        low, high = row["min_mg_dl"], row["max_mg_dl"]
        self.min_mg_dl = low if self.min_mg_dl is None else min(self.min_mg_dl, low)
        self.max_mg_dl = high if self.max_mg_dl is None else max(self.max_mg_dl, high)


@dataclass
class GlucoseMetrics:
    start: date
    end: date
    days: int
    days_worn: int
    readings: int
    readings_above_range: int
    readings_below_range: int
    active_percent: float | None
    mean_mg_dl: float | None
    sd_mg_dl: float | None
    cv_percent: float | None
    gmi_percent: float | None
    gmi_absent_reason: str | None
    # Percent of active time per band.
    very_low_percent: float | None
    low_percent: float | None
    target_percent: float | None
    high_percent: float | None
    very_high_percent: float | None
    tight_percent: float | None
    below_70_percent: float | None
    above_180_percent: float | None
    gri: float | None
    gri_zone: str | None
    hypo_episodes: int
    severe_hypo_episodes: int
    hyper_episodes: int
    severe_hyper_episodes: int
    min_mg_dl: float | None
    max_mg_dl: float | None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("extra")
        out["start"], out["end"] = self.start.isoformat(), self.end.isoformat()
        return out


def gmi_percent(mean_mg_dl: float) -> float:
    """Glucose management indicator (Bergenstal et al. 2018)."""
    return 3.31 + 0.02392 * mean_mg_dl


def gri(very_low: float, low: float, high: float, very_high: float) -> float:
    """Glycemia risk index from the % of time in each band (Klonoff et al. 2022), capped at 100."""
    return min(100.0, 3.0 * very_low + 2.4 * low + 1.6 * very_high + 0.8 * high)


def gri_zone(value: float) -> str:
    """Zones A (0-20) to E (81-100), each upper bound inclusive."""
    for zone, upper in (("A", 20.0), ("B", 40.0), ("C", 60.0), ("D", 80.0)):
        if value <= upper:
            return zone
    return "E"


def window_minutes(start: date, end: date, time_zone: str, until: datetime | None = None) -> float:
    """Minutes from the start of local day `start` to the end of local day `end` (DST-aware), or to `until`
    when that is sooner (today's window is measured up to now)."""
    from readings.store import local_day_bounds

    tz = ZoneInfo(time_zone)
    lo, _ = local_day_bounds(start, tz)
    _, hi = local_day_bounds(end, tz)
    if until is not None:
        hi = max(lo, min(hi, until))
    return (hi - lo).total_seconds() / 60.0


def metrics_from_sums(sums: DaySums, start: date, end: date, minutes: float) -> GlucoseMetrics:
    active = sums.active_minutes

    def share(part: float) -> float | None:
        return 100.0 * part / active if active > 0 else None

    mean = sums.sum_weighted / active if active > 0 else None
    sd = cv = None
    if mean is not None:
        variance = max(0.0, sums.sum_weighted_sq / active - mean * mean)
        sd = math.sqrt(variance)
        cv = 100.0 * sd / mean if mean > 0 else None
    active_percent = 100.0 * active / minutes if minutes > 0 else None
    gmi = reason = None
    if mean is None:
        reason = "no glucose readings in the period"
    elif active_percent is None or active_percent < GMI_MIN_ACTIVE_PERCENT:
        reason = (
            f"sensor active {active_percent or 0:.1f}% of the period, below the "
            f"{GMI_MIN_ACTIVE_PERCENT:.0f}% the consensus requires"
        )
    else:
        gmi = gmi_percent(mean)
    bands = [
        share(x)
        for x in (
            sums.very_low_minutes,
            sums.low_minutes,
            sums.target_minutes,
            sums.high_minutes,
            sums.very_high_minutes,
            sums.tight_minutes,
        )
    ]
    very_low, low, target, high, very_high, tight = bands
    index = zone = None
    if very_low is not None:
        index = gri(very_low, low or 0.0, high or 0.0, very_high or 0.0)
        zone = gri_zone(index)
    return GlucoseMetrics(
        start=start,
        end=end,
        days=(end - start).days + 1,
        days_worn=sums.days_worn,
        readings=sums.readings,
        readings_above_range=sums.above_range,
        readings_below_range=sums.below_range,
        active_percent=active_percent,
        mean_mg_dl=mean,
        sd_mg_dl=sd,
        cv_percent=cv,
        gmi_percent=gmi,
        gmi_absent_reason=reason,
        very_low_percent=very_low,
        low_percent=low,
        target_percent=target,
        high_percent=high,
        very_high_percent=very_high,
        tight_percent=tight,
        below_70_percent=None if very_low is None else very_low + (low or 0.0),
        above_180_percent=None if high is None else high + (very_high or 0.0),
        gri=index,
        gri_zone=zone,
        hypo_episodes=sums.hypo_episodes,
        severe_hypo_episodes=sums.severe_hypo_episodes,
        hyper_episodes=sums.hyper_episodes,
        severe_hyper_episodes=sums.severe_hyper_episodes,
        min_mg_dl=sums.min_mg_dl,
        max_mg_dl=sums.max_mg_dl,
    )


_DAY_ROWS = (
    "SELECT day, "
    + ", ".join(DAY_COLUMNS)
    + ", min_mg_dl, max_mg_dl FROM patient_glucose_daily WHERE patient_id = %s AND day BETWEEN %s AND %s"
)


def day_rows(patient_id: int, start: date, end: date) -> dict[date, dict[str, Any]]:
    with db.cursor() as cursor:
        cursor.execute(_DAY_ROWS, [patient_id, start, end])
        names = [c.name for c in cursor.description]
        return {row[0]: dict(zip(names, row, strict=True)) for row in cursor.fetchall()}


def window_metrics(
    patient_id: int,
    time_zone: str,
    end: date,
    days: int,
    rows: dict[date, dict[str, Any]] | None = None,
    until: datetime | None = None,
) -> GlucoseMetrics:
    """The metrics of the `days` local days ending on `end` (inclusive)."""
    start = end - timedelta(days=days - 1)
    if rows is None:
        rows = day_rows(patient_id, start, end)
    sums = DaySums()
    for day, row in sorted(rows.items()):
        if start <= day <= end:
            sums.add_row(row)
    return metrics_from_sums(sums, start, end, window_minutes(start, end, time_zone, until))


_BULK_SUMS = (
    "SELECT d.patient_id, p.time_zone, count(*) FILTER (WHERE d.readings > 0), "
    + ", ".join(f"sum(d.{c})" for c in DAY_COLUMNS)
    + ", min(d.min_mg_dl), max(d.max_mg_dl) FROM patient_glucose_daily d JOIN patients p ON p.id = d.patient_id "
    "WHERE d.day BETWEEN %(start)s AND %(end)s {only} GROUP BY d.patient_id, p.time_zone"
)


def bulk_window_metrics(
    end: date, days: int, patient_ids: Sequence[int] | None = None, until: datetime | None = None
) -> dict[int, GlucoseMetrics]:
    """The `days`-day window ending on `end` for many patients at once: one GROUP BY over their day rows."""
    start = end - timedelta(days=days - 1)
    only = "AND d.patient_id = ANY(%(patients)s)" if patient_ids is not None else ""
    minutes: dict[str, float] = {}
    out = {}
    with db.cursor() as cursor:
        cursor.execute(
            _BULK_SUMS.replace("{only}", only),
            {"start": start, "end": end, "patients": list(patient_ids or [])},
        )
        for patient_id, time_zone, worn, *totals in cursor.fetchall():
            sums = DaySums(days_worn=worn, min_mg_dl=totals[-2], max_mg_dl=totals[-1])
            for name, value in zip(DAY_COLUMNS, totals[:-2], strict=True):
                setattr(sums, name, value)
            if time_zone not in minutes:
                minutes[time_zone] = window_minutes(start, end, time_zone, until)
            out[patient_id] = metrics_from_sums(sums, start, end, minutes[time_zone])
    return out


CHANGE_FIELDS = (
    "mean_mg_dl",
    "sd_mg_dl",
    "cv_percent",
    "gmi_percent",
    "active_percent",
    "very_low_percent",
    "low_percent",
    "target_percent",
    "high_percent",
    "very_high_percent",
    "tight_percent",
    "gri",
)


@dataclass
class Summary:
    current: GlucoseMetrics
    previous: GlucoseMetrics
    # current - previous for each of CHANGE_FIELDS (None when either is absent).
    change: dict[str, float | None]


def _summary_from_rows(
    patient_id: int,
    time_zone: str,
    end: date,
    days: int,
    rows: dict[date, dict[str, Any]],
    until: datetime | None,
) -> Summary:
    current = window_metrics(patient_id, time_zone, end, days, rows, until)
    previous = window_metrics(patient_id, time_zone, end - timedelta(days=days), days, rows)
    change = {}
    for name in CHANGE_FIELDS:
        now, before = getattr(current, name), getattr(previous, name)
        change[name] = None if now is None or before is None else now - before
    return Summary(current, previous, change)


def summary(patient_id: int, time_zone: str, end: date, days: int, until: datetime | None = None) -> Summary:
    """One window and the previous window of the same length, from one read of the day rows. `until` (now)
    ends the current window's time early when `end` is today."""
    rows = day_rows(patient_id, end - timedelta(days=2 * days - 1), end)
    return _summary_from_rows(patient_id, time_zone, end, days, rows, until)


def rolling(
    patient_id: int,
    time_zone: str,
    end: date,
    windows: Sequence[int] = WINDOWS,
    until: datetime | None = None,
) -> dict[int, Summary]:
    """The 7/14/30/90-day windows ending on `end`, each with its change against the previous period, from
    one read of the day rows."""
    rows = day_rows(patient_id, end - timedelta(days=2 * max(windows) - 1), end)
    return {days: _summary_from_rows(patient_id, time_zone, end, days, rows, until) for days in windows}


# --- Consensus targets ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    metric: str
    label: str
    comparison: str  # "<" or ">" or "<="
    threshold: float

    def met(self, value: float | None) -> bool | None:
        if value is None:
            return None
        if self.comparison == "<":
            return value < self.threshold
        if self.comparison == "<=":
            return value <= self.threshold
        return value > self.threshold


# Adults with type 1 or type 2 diabetes (Battelino et al. 2019; ADA Standards of Care, Table 6.2).
CONSENSUS_TARGETS = (
    Target("target_percent", "Time in range 70-180 mg/dL above 70%", ">", 70.0),
    Target("below_70_percent", "Time below 70 mg/dL under 4%", "<", 4.0),
    Target("very_low_percent", "Time below 54 mg/dL under 1%", "<", 1.0),
    Target("above_180_percent", "Time above 180 mg/dL under 25%", "<", 25.0),
    Target("very_high_percent", "Time above 250 mg/dL under 5%", "<", 5.0),
    Target("cv_percent", "Coefficient of variation at most 36%", "<=", 36.0),
    Target("active_percent", "CGM active at least 70% of the time", ">", 69.999999),
)


def targets_for(metrics: GlucoseMetrics) -> list[dict[str, Any]]:
    return [
        {
            "metric": t.metric,
            "label": t.label,
            "comparison": t.comparison if t.metric != "active_percent" else ">=",
            "threshold": t.threshold if t.metric != "active_percent" else 70.0,
            "value": getattr(metrics, t.metric),
            "met": t.met(getattr(metrics, t.metric)),
        }
        for t in CONSENSUS_TARGETS
    ]


# --- AGP -------------------------------------------------------------------------------------------------------

_PG_AGP = """
SELECT slot, count(*),
       percentile_cont(ARRAY[0.05, 0.25, 0.5, 0.75, 0.95]) WITHIN GROUP (ORDER BY value_mg_dl)
FROM (
    SELECT c.value_mg_dl,
           (extract(hour FROM c.measured_at AT TIME ZONE %(tz)s) * 4
            + floor(extract(minute FROM c.measured_at AT TIME ZONE %(tz)s) / 15))::int AS slot
    FROM ({counted}) c
    WHERE c.patient_id = %(patient)s AND c.measured_at >= %(lo)s AND c.measured_at < %(hi)s
) AS r
GROUP BY slot ORDER BY slot
"""


@dataclass
class AgpSlot:
    slot: int
    minute: int  # minutes after local midnight at the slot's start
    readings: int
    p5: float
    p25: float
    p50: float
    p75: float
    p95: float


def agp(patient_id: int, time_zone: str, end: date, days: int = 14) -> list[AgpSlot]:
    """Percentiles 5/25/50/75/95 of the counted readings per 15-minute slot of the local day, over the `days`
    local days ending on `end`. Slots without readings are left out."""
    from readings.store import local_day_bounds

    tz = ZoneInfo(time_zone)
    lo, _ = local_day_bounds(end - timedelta(days=days - 1), tz)
    _, hi = local_day_bounds(end, tz)
    with db.cursor() as cursor:
        cursor.execute(
            _PG_AGP.replace("{counted}", counted_glucose_sql(PATIENT_SPAN)),
            {"tz": time_zone, "patient": patient_id, "lo": lo, "hi": hi},
        )
        return [
            AgpSlot(slot, slot * AGP_SLOT_MINUTES, count, *[float(v) for v in values])
            for slot, count, values in cursor.fetchall()
        ]
