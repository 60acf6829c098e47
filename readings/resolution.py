"""Source resolution: which stored rows count, when one measurement arrives by two routes.

Every reading keeps its route (the provider of the connection that delivered it: `dexcom`, `junction`, ...;
none when unknown or gone) and its source (the device maker as the route names it: `dexcom`, `dexcom_v3`).
Rows are never dropped at write time; the statistics count, per measurement, the copy of the best route:

- A measurement's **device family** is the provider family whose `source_patterns` its source matches
  (`dexcom%`, `%libre%`, `whoop%`: Junction's `dexcom_v3` is Dexcom's); any other source is its own family,
  and only one route (Junction) brings it, so it always counts.
- A route's **rank** for a patient and family: the patient's override (`RoutePriority`, edited in the admin's
  patient page), else the provider's registry `priority` (a maker's own API 2, Junction 1, unknown 0); ties
  broken by the provider key, so the choice is deterministic.
- **Matching**: two copies are one measurement when patient, family (and for wearables the metric) agree and
  their match instants are within the tolerance: glucose ±150 s (half a 5-minute CGM interval; Dexcom's
  record id is not relayed by Junction, whose stamps differ from Dexcom's `systemTime` by under a minute);
  WHOOP wearable values ±30 min, matched on the end of the sleep for `sleep_*` metrics (Junction stamps a sleep
  at `bedtime_stop`, WHOOP at its start, with the end beside it) and on the start otherwise. A row counts iff
  its route's rank is the highest among the rows matching it (a window `max(rank) OVER (... RANGE BETWEEN
  tolerance PRECEDING AND tolerance FOLLOWING)`), so each measurement is counted once, by the best route.

`counted_glucose_sql` is THE rule for glucose: the daily statistics and the CGM metrics use it.
Cleanup's duplicate removal (readings/retention.py) keeps the same copy and only tidies storage.
"""

from __future__ import annotations

import re
from datetime import timedelta

from connections.providers.registry import PROVIDERS

GLUCOSE_TOLERANCE = timedelta(seconds=150)
WEARABLE_TOLERANCE = timedelta(minutes=30)
# The rows a wearable window reads around a day: a sleep counted on its start day is matched by its end.
WEARABLE_MARGIN = timedelta(days=1)


def _literal(text: str) -> str:
    # Provider keys and source patterns are code, not input; still, only plain words become SQL literals.
    if not re.fullmatch(r"[a-z0-9_%-]+", text):
        raise ValueError(f"not a plain provider word: {text!r}")
    return f"'{text}'"


def device_families() -> list[tuple[str, tuple[str, ...]]]:
    """(family, LIKE patterns of its source names) of every provider that is a device maker's own route."""
    return [(p.source_family, p.source_patterns) for p in PROVIDERS.values() if p.source_patterns]


def family_sql(source: str) -> str:
    """SQL: the device family of a source name, whichever route brought it."""
    whens = " ".join(
        f"WHEN {source} LIKE {_literal(pattern).replace('%', '%%')} THEN {_literal(family)}"
        for family, patterns in device_families()
        for pattern in patterns
    )
    return f"(CASE {whens} ELSE {source} END)" if whens else source


def device_family_condition(source: str) -> str:
    """SQL: true when a source belongs to a family some direct provider also brings (it may have two routes)."""
    likes = [
        f"{source} LIKE {_literal(pattern).replace('%', '%%')}"
        for _, patterns in device_families()
        for pattern in patterns
    ]
    return "(" + " OR ".join(likes) + ")" if likes else "false"


def route_rank_sql(provider: str, override: str) -> str:
    """SQL: a route's rank, higher wins: the patient's override, else the registry priority; the provider key's
    position breaks ties (ranks are distinct per route)."""
    keys = sorted(PROVIDERS)
    whens = " ".join(f"WHEN {_literal(k)} THEN {PROVIDERS[k].priority}" for k in keys)
    ordinal = " ".join(f"WHEN {_literal(k)} THEN {i + 1}" for i, k in enumerate(keys))
    return f"(coalesce({override}, CASE {provider} {whens} ELSE 0 END) * 1000 + CASE {provider} {ordinal} ELSE 0 END)"


def cross_route_metrics() -> frozenset[str]:
    """Metrics a direct provider stores (so a second route may bring them too): refreshing one of their days
    refreshes its neighbours, whose counted copies the tolerance may change."""
    metrics = {m for p in PROVIDERS.values() if p.source_patterns for m in p.metrics}
    if any(p.glucose and p.source_patterns for p in PROVIDERS.values()):
        metrics.add("glucose")
    return frozenset(metrics)


def cross_route_sql_list() -> str:
    """The cross-route wearable metrics as an SQL IN list ('' never matches: a list is never empty)."""
    names = sorted(m for m in cross_route_metrics() if m != "glucose") or [""]
    for name in names:
        if not re.fullmatch(r"[a-z0-9_]*", name):
            raise ValueError(f"not a plain metric name: {name!r}")
    return ", ".join(f"'{name}'" for name in names)


def interval_sql(delta: timedelta) -> str:
    return _interval(delta)


def _interval(delta: timedelta) -> str:
    return f"INTERVAL '{int(delta.total_seconds())} seconds'"


def counted_glucose_sql(where: str, join: str = "", table: str = "patient_glucose_readings") -> str:
    """SELECT of the glucose rows that count (columns of patient_glucose_readings), among the rows `where`
    selects (a condition on alias `g`). Rows within GLUCOSE_TOLERANCE outside the span the caller buckets
    must be selected too (they decide whether a row inside it counts); the caller then keeps its span. `join`
    may narrow the rows first (e.g. to the spans of the days being recomputed)."""
    family = family_sql("g.source")
    rank = route_rank_sql("c.provider", "o.priority")
    tolerance = _interval(GLUCOSE_TOLERANCE)
    return f"""
SELECT x.patient_id, x.source, x.measured_at, x.value_mg_dl, x.range_flag, x.connection_id FROM (
    SELECT g.patient_id, g.source, g.measured_at, g.value_mg_dl, g.range_flag, g.connection_id,
           {rank} AS route_rank,
           max({rank}) OVER (
               PARTITION BY g.patient_id, {family} ORDER BY g.measured_at
               RANGE BETWEEN {tolerance} PRECEDING AND {tolerance} FOLLOWING
           ) AS best_rank
    FROM {table} g
    {join}
    LEFT JOIN patient_connections c ON c.id = g.connection_id
    LEFT JOIN patient_route_priorities o
      ON o.patient_id = g.patient_id AND o.source_family = {family} AND o.provider = c.provider
    WHERE {where}
) x WHERE x.route_rank = x.best_rank
"""


def counted_wearable_sql(
    where: str, join: str = "", *, wide_where: str | None = None, wide_join: str | None = None
) -> str:
    """SELECT of the wearable rows that count (patient_id, metric, measured_at, value), among the rows `where`
    selects (alias `r`). A source no direct provider brings has one route and counts without a window; the
    rest (WHOOP's family) are matched across routes: `wide_where`/`wide_join` (default `where`/`join`) select
    those, and must reach WEARABLE_MARGIN around the caller's span."""
    wide = join if wide_join is None else wide_join
    wide_where = where if wide_where is None else wide_where
    family = family_sql("r.source")
    rank = route_rank_sql("c.provider", "o.priority")
    tolerance = _interval(WEARABLE_TOLERANCE)
    match = (
        "(CASE WHEN r.metric LIKE 'sleep\\_%%' THEN coalesce(r.end_at, r.measured_at) ELSE r.measured_at END)"
    )
    device = device_family_condition("r.source")
    return f"""
SELECT r.patient_id, r.metric, r.measured_at, r.value
FROM patient_wearable_readings r
{join}
WHERE ({where}) AND NOT ({device} AND r.metric IN ({cross_route_sql_list()}))
UNION ALL
SELECT x.patient_id, x.metric, x.measured_at, x.value FROM (
    SELECT r.patient_id, r.metric, r.measured_at, r.value, {rank} AS route_rank,
           max({rank}) OVER (
               PARTITION BY r.patient_id, r.metric, {family} ORDER BY {match}
               RANGE BETWEEN {tolerance} PRECEDING AND {tolerance} FOLLOWING
           ) AS best_rank
    FROM patient_wearable_readings r
    {wide}
    LEFT JOIN patient_connections c ON c.id = r.connection_id
    LEFT JOIN patient_route_priorities o
      ON o.patient_id = r.patient_id AND o.source_family = {family} AND o.provider = c.provider
    WHERE ({wide_where}) AND {device} AND r.metric IN ({cross_route_sql_list()})
) x WHERE x.route_rank = x.best_rank
"""
