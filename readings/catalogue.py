"""The metric catalogue, declared once: every metric a reading or a daily statistic can carry, its unit, what it
measures, how a day aggregates it and how the rolling 7/30-day averages treat it.

Parsers take each metric's unit from here (a row never carries a unit its metric does not have), the
statistics take the rolling rule (`SUMMED_METRICS`), the read API documents and accepts these names, and the
admin shows them. Two measurements that mean different things never share a name: WHOOP's recovery reports a
resting heart rate and SpO2 measured during sleep (`recovery_resting_heart_rate`, `recovery_blood_oxygen`) and
the energy of a physiological cycle, sleep to sleep (`cycle_calories`), while Junction's `resting_heart_rate`
is the calendar day's resting heart rate from the activity summary, `blood_oxygen` its individual SpO2 samples
and `calories_total` the calendar day's energy including BMR (junction_api.md §4.2, provider_apis.md §1).

Rolling averages (readings/aggregate.py), over calendar days D-6..D (7-day) and D-29..D (30-day), day D
included, in the patient's local days:
- a SUM metric (steps, energy, distance, durations, counts): the mean of the daily sums over the days of the
  window that have data (average daily steps); a day with no data is left out, neither a zero nor a reason to
  reach further back;
- a MEAN metric (rates, levels, scores): the sample-weighted mean of every sample in the window (sum of daily
  sums / sum of daily counts); a day with no data adds no samples.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class Daily(StrEnum):
    SUM = "sum"  # the day's value is the sum of its samples (steps, kcal, m, s)
    MEAN = "mean"  # the day's value is the mean of its samples (bpm, %, ms, score)


ROLLING_RULE = {
    Daily.SUM: "mean of the daily sums over the days of the window with data",
    Daily.MEAN: "sample-weighted mean of every sample in the window",
}


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    description: str
    daily: Daily
    # A day-level summary (Junction's daily activity and body): it has a calendar date, not an instant. Stored
    # at 00:00 UTC of that date (Junction's own `date` convention) and counted on that date whatever the
    # patient's zone, so a zone change neither moves nor doubles it.
    day_level: bool = False

    @property
    def rolling(self) -> str:
        return ROLLING_RULE[self.daily]


S, M = Daily.SUM, Daily.MEAN

_METRICS: tuple[Metric, ...] = (
    # Junction timeseries samples.
    Metric("heart_rate", "bpm", "heart rate sample", M),
    Metric("hrv_rmssd", "ms", "heart rate variability sample, RMSSD", M),
    Metric("hrv_sdnn", "ms", "heart rate variability sample, SDNN (Apple Health reports SDNN, not RMSSD)", M),
    Metric("respiratory_rate", "breaths/min", "respiratory rate sample", M),
    Metric("blood_oxygen", "%", "SpO2 sample", M),
    Metric("steps", "count", "steps in an interval (usually 15 minutes)", S),
    # Junction sleep summaries (one per sleep, at its end: the calendar date is the wake date).
    Metric("sleep_duration", "s", "time in bed (bedtime stop - start)", S),
    Metric("sleep_total", "s", "time asleep (light + deep + REM)", S),
    Metric("sleep_awake", "s", "time awake in bed", S),
    Metric("sleep_light", "s", "light sleep", S),
    Metric("sleep_rem", "s", "REM sleep", S),
    Metric("sleep_deep", "s", "deep (slow-wave) sleep", S),
    Metric("sleep_efficiency", "%", "time asleep / time in bed", M),
    Metric("sleep_latency", "s", "time to fall asleep", M),
    Metric("sleep_score", "score", "the device maker's sleep score (0-100)", M),
    Metric("sleep_hr_lowest", "bpm", "lowest heart rate during sleep", M),
    Metric("sleep_hr_average", "bpm", "mean heart rate during sleep", M),
    Metric("sleep_resting_heart_rate", "bpm", "resting heart rate during sleep", M),
    Metric("sleep_hrv_rmssd", "ms", "mean HRV (RMSSD) during sleep", M),
    Metric("sleep_respiratory_rate", "breaths/min", "mean respiratory rate during sleep", M),
    Metric("readiness_score", "score", "readiness / recovery score of the sleep's source (0-100)", M),
    # Junction daily activity summaries (keyed by the calendar date the provider gives).
    Metric("activity_steps", "count", "the calendar day's steps", S, day_level=True),
    Metric(
        "calories_total", "kcal", "the calendar day's energy expenditure including BMR", S, day_level=True
    ),
    Metric("calories_active", "kcal", "the calendar day's active energy", S, day_level=True),
    Metric("activity_distance", "m", "the calendar day's distance", S, day_level=True),
    Metric("floors_climbed", "count", "the calendar day's floors climbed", S, day_level=True),
    Metric(
        "resting_heart_rate",
        "bpm",
        "the calendar day's resting heart rate (activity summary)",
        M,
        day_level=True,
    ),
    Metric("activity_heart_rate_avg", "bpm", "the calendar day's mean heart rate", M, day_level=True),
    # Workouts (Junction and WHOOP alike: one row per workout at its start).
    Metric("workout_duration", "s", "workout length", S),
    Metric("workout_calories", "kcal", "workout energy", S),
    Metric("workout_distance", "m", "workout distance", S),
    Metric("workout_heart_rate_avg", "bpm", "mean heart rate of a workout", M),
    Metric("workout_heart_rate_max", "bpm", "maximum heart rate of a workout", M),
    Metric("workout_strain", "score", "WHOOP strain of a workout (0-21)", M),
    # Junction body summaries.
    Metric("body_weight", "kg", "body weight", M, day_level=True),
    Metric("body_fat", "%", "body fat", M, day_level=True),
    Metric("body_mass_index", "kg/m2", "body mass index", M, day_level=True),
    # WHOOP recovery (one per cycle, at its creation in the morning).
    Metric("recovery_score", "%", "WHOOP recovery score (0-100)", M),
    Metric(
        "recovery_resting_heart_rate", "bpm", "WHOOP resting heart rate measured during the night's sleep", M
    ),
    Metric("recovery_blood_oxygen", "%", "WHOOP SpO2 measured during the night's sleep", M),
    Metric("skin_temperature", "degC", "WHOOP skin temperature during sleep", M),
    # WHOOP physiological cycles (sleep onset to sleep onset, not a calendar day).
    Metric("strain", "score", "WHOOP day strain of a cycle (0-21)", M),
    Metric("cycle_calories", "kcal", "WHOOP energy of a physiological cycle (sleep to sleep)", S),
    Metric("cycle_heart_rate_avg", "bpm", "WHOOP mean heart rate of a cycle", M),
    Metric("cycle_heart_rate_max", "bpm", "WHOOP maximum heart rate of a cycle", M),
    # WHOOP sleeps and naps (one per sleep, at its start). A WHOOP sleep's duration, stages, efficiency and
    # respiratory rate mean what Junction's sleep fields mean, so they share the sleep_* names above.
    Metric("sleep_performance", "%", "WHOOP sleep performance (sleep had / sleep needed)", M),
    Metric("sleep_disturbances", "count", "WHOOP disturbances during sleep", S),
    Metric("nap_duration", "s", "WHOOP nap: time in bed", S),
    Metric("nap_awake", "s", "WHOOP nap: time awake", S),
    Metric("nap_light", "s", "WHOOP nap: light sleep", S),
    Metric("nap_deep", "s", "WHOOP nap: slow-wave sleep", S),
    Metric("nap_rem", "s", "WHOOP nap: REM sleep", S),
    Metric("nap_total", "s", "WHOOP nap: time asleep", S),
    Metric("nap_efficiency", "%", "WHOOP nap: efficiency", M),
    Metric("nap_performance", "%", "WHOOP nap: performance", M),
    Metric("nap_respiratory_rate", "breaths/min", "WHOOP nap: respiratory rate", M),
    Metric("nap_disturbances", "count", "WHOOP nap: disturbances", S),
    # CGM readings (patient_glucose_readings), normalised to mg/dL.
    Metric("glucose", "mg/dL", "CGM glucose reading", M),
)

CATALOGUE: dict[str, Metric] = {m.name: m for m in _METRICS}
if len(CATALOGUE) != len(_METRICS):
    raise ValueError("the metric catalogue declares a metric twice")

GLUCOSE_METRIC = "glucose"
SUMMED_METRICS: frozenset[str] = frozenset(m.name for m in _METRICS if m.daily is Daily.SUM)
DAY_LEVEL_METRICS: frozenset[str] = frozenset(m.name for m in _METRICS if m.day_level)


def unit_of(metric: str) -> str:
    """The unit a metric is stored in; KeyError for a metric the catalogue does not declare."""
    return CATALOGUE[metric].unit


def summed_sql_list() -> str:
    """The summed metrics as an SQL IN list."""
    return _sql_list(SUMMED_METRICS)


def day_zone_sql(metric: str, zone: str) -> str:
    """SQL: the zone a row of `metric` is bucketed into days by: UTC for a day-level summary (its stamp is its
    calendar date at 00:00 UTC), else the patient's `zone`."""
    return f"(CASE WHEN {metric} IN ({_sql_list(DAY_LEVEL_METRICS)}) THEN 'UTC' ELSE {zone} END)"


def _sql_list(metrics: frozenset[str]) -> str:
    # Catalogue names are plain words (checked here), so they can be SQL literals.
    names = sorted(metrics)
    for name in names:
        if not re.fullmatch(r"[a-z0-9_]+", name):
            raise ValueError(f"not a plain metric name: {name!r}")
    return ", ".join(f"'{name}'" for name in names)


def describe(metrics: list[str] | None = None) -> str:
    """One line per metric (name, unit, per-day aggregate, meaning): the read API's parameter documentation."""
    chosen = [CATALOGUE[name] for name in (metrics or sorted(CATALOGUE))]
    return "; ".join(f"`{m.name}` ({m.unit}, daily {m.daily.value}): {m.description}" for m in chosen)


def markdown_table() -> str:
    """The catalogue as the README's table (tests/test_one_truth.py checks the README carries it)."""
    lines = [
        "| metric | unit | per day | rolling 7/30-day average | what it measures |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| `{m.name}` | {m.unit} | {m.daily.value} | {m.rolling} | {m.description} |" for m in _METRICS
    ]
    return "\n".join(lines)
