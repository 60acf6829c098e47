"""WHOOP Developer API v2 client and record parsing (provider_apis.md §1).

OAuth at `/oauth/oauth2/auth|token` with client credentials in the form body and the `offline` scope (without it
WHOOP issues no refresh token); data at `/developer/v2/...` with `limit` <= 25, `start` inclusive / `end` exclusive
and `nextToken` (query, camelCase) / `next_token` (body, snake_case) pagination. Rate limits come back as
X-RateLimit-* headers, which the HTTP layer honours on 429.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from connections.config import DirectProvidersConfig
from connections.providers.common import as_dict, bearer, canonical, reading_instant, warn_invalid
from connections.providers.contract import InvalidPayload, InvalidRecord, WearableRow, number_in_range
from connections.providers.oauth2 import OAuthClient
from readings.catalogue import unit_of

PROVIDER = "whoop"
SCOPES = "offline read:recovery read:cycles read:workout read:sleep read:profile read:body_measurement"
PAGE_LIMIT = 25
COLLECTIONS = ("cycle", "recovery", "activity/sleep", "activity/workout")
SOURCE = "whoop"
KJ_PER_KCAL = 4.184
MAX_PAGES = 1000


_SLEEP_PARTS = (
    "duration",
    "awake",
    "light",
    "deep",
    "rem",
    "total",
    "efficiency",
    "performance",
    "respiratory_rate",
    "disturbances",
)
# Every metric a WHOOP record can produce (the read API accepts exactly these names).
METRICS: tuple[str, ...] = (
    "recovery_score",
    "recovery_resting_heart_rate",
    "sleep_hrv_rmssd",
    "recovery_blood_oxygen",
    "skin_temperature",
    "strain",
    "cycle_calories",
    "cycle_heart_rate_avg",
    "cycle_heart_rate_max",
    *(f"{prefix}_{part}" for prefix in ("sleep", "nap") for part in _SLEEP_PARTS),
    "workout_duration",
    "workout_strain",
    "workout_calories",
    "workout_heart_rate_avg",
    "workout_heart_rate_max",
    "workout_distance",
)


# The webhook kinds (sleep, workout, recovery: a recovery keyed by its sleep's id) and the metrics of each.
RECORD_KINDS = {"activity/sleep": "sleep", "activity/workout": "workout", "recovery": "recovery"}
KIND_METRICS: dict[str, tuple[str, ...]] = {
    "sleep": tuple(m for m in METRICS if m.startswith(("sleep_", "nap_")) and m != "sleep_hrv_rmssd"),
    "workout": tuple(m for m in METRICS if m.startswith("workout_")),
    "recovery": (
        "recovery_score",
        "recovery_resting_heart_rate",
        "sleep_hrv_rmssd",
        "recovery_blood_oxygen",
        "skin_temperature",
    ),
}


class WhoopClient(OAuthClient):
    provider = PROVIDER
    authorize_path = "/oauth/oauth2/auth"
    token_path = "/oauth/oauth2/token"
    scope = SCOPES
    # WHOOP returns a new refresh token only when the refresh asks for the offline scope again.
    refresh_extra = {"scope": "offline"}

    @classmethod
    def from_config(cls, config: DirectProvidersConfig) -> WhoopClient:
        return cls(config.whoop_api_url, config.whoop_client_id, config.whoop_client_secret)

    # --- Data ----------------------------------------------------------------------------------------

    def profile(self, access_token: str) -> dict[str, Any]:
        route = "/developer/v2/user/profile/basic"
        response = self.http.request("GET", route, headers=bearer(access_token), route=route)
        return as_dict(self.http.decode(route, response.content), "profile")

    def collection(
        self, name: str, token: Callable[[], str], start: datetime, end: datetime
    ) -> list[dict[str, Any]]:
        """Every record of a collection with start in [start, end), following next_token."""
        route = f"/developer/v2/{name}"
        params: dict[str, str] = {
            "limit": str(PAGE_LIMIT),
            "start": start.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "end": end.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        }
        records: list[dict[str, Any]] = []
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            response = self.http.request("GET", route, params=params, headers=bearer(token()), route=route)
            body = as_dict(self.http.decode(route, response.content), name)
            page = body.get("records")
            if not isinstance(page, list):
                raise InvalidPayload(f"{name} response has no records list")
            records.extend(r for r in page if isinstance(r, dict))
            next_token = body.get("next_token")
            if not next_token:
                return records
            if not isinstance(next_token, str):
                raise InvalidPayload(f"{name} next_token is not a string")
            if next_token in seen:
                raise InvalidPayload(f"{name} pagination repeated a token")
            seen.add(next_token)
            params = {**params, "nextToken": str(next_token)}
        raise InvalidPayload(f"{name} pagination did not end")

    def record(self, path: str, token: Callable[[], str]) -> dict[str, Any] | None:
        """One record by id (a webhook's); None when WHOOP has no such record (deleted since)."""
        route = "/developer" + path
        response = self.http.request(
            "GET", route, headers=bearer(token()), route=route.rsplit("/", 1)[0], accept=frozenset({404})
        )
        if response.status_code == 404:
            return None
        return as_dict(self.http.decode(route, response.content), path)


# --- Parsing --------------------------------------------------------------------------------------------


@dataclass
class WhoopParsed:
    readings: list[WearableRow] = field(default_factory=list)
    skipped: int = 0
    # The start of the oldest record that may still change (PENDING_SCORE, or the open cycle).
    unsettled_since: datetime | None = None
    # (kind, record id, the instant its rows are keyed at): a later `*.deleted` webhook finds them by it.
    records: list[tuple[str, str, str]] = field(default_factory=list)

    def unsettled(self, moment: datetime) -> None:
        if self.unsettled_since is None or moment < self.unsettled_since:
            self.unsettled_since = moment


def _opt(score: dict[str, Any], key: str, low: float, high: float) -> float | None:
    raw = score.get(key)
    return None if raw is None else number_in_range(raw, key, low, high)


def _state(record: dict[str, Any]) -> str:
    state = record.get("score_state")
    if state not in ("SCORED", "PENDING_SCORE", "UNSCORABLE"):
        raise InvalidRecord("score_state is not SCORED, PENDING_SCORE or UNSCORABLE")
    if state == "SCORED" and not isinstance(record.get("score"), dict):
        raise InvalidRecord("score is missing on a SCORED record")
    return state


def parse_records(collection: str, records: list[dict[str, Any]], out: WhoopParsed) -> None:
    """WHOOP records → wearable rows keyed by the record's own start (so a re-scored record upserts in place)."""
    for index, record in enumerate(records):
        try:
            rows = _rows(collection, record, out)
        except InvalidRecord as exc:
            out.skipped += 1
            warn_invalid(PROVIDER, collection, index, exc)
            continue
        out.readings.extend(rows)
        kind = RECORD_KINDS.get(collection)
        record_id = record.get("sleep_id") if collection == "recovery" else record.get("id")
        if kind and rows and isinstance(record_id, str):
            out.records.append((kind, record_id[:64], rows[0][3]))


def _rows(collection: str, record: dict[str, Any], out: WhoopParsed) -> list[WearableRow]:
    state = _state(record)
    score = record.get("score") if state == "SCORED" else None
    rows: list[WearableRow] = []

    def add(metric: str, at: str, end: str | None, value: float | None) -> None:
        if value is not None:
            rows.append((metric, SOURCE, "", at, end, value, unit_of(metric)))

    if collection == "recovery":
        created = reading_instant(record.get("created_at"), "created_at")
        if not isinstance(record.get("cycle_id"), int):
            raise InvalidRecord("cycle_id is missing")
        if state == "PENDING_SCORE":
            # Recoveries are filtered by their sleep's start, which precedes created_at by a night.
            out.unsettled(created - timedelta(hours=24))
        if score is not None:
            at = canonical(created)
            add(
                "recovery_score",
                at,
                None,
                number_in_range(score.get("recovery_score"), "recovery_score", 0, 100),
            )
            add("recovery_resting_heart_rate", at, None, _opt(score, "resting_heart_rate", 20, 250))
            add("sleep_hrv_rmssd", at, None, _opt(score, "hrv_rmssd_milli", 1, 300))
            add("recovery_blood_oxygen", at, None, _opt(score, "spo2_percentage", 50, 100))
            add("skin_temperature", at, None, _opt(score, "skin_temp_celsius", 20, 45))
        return rows

    start = reading_instant(record.get("start"), "start")
    end = reading_instant(record["end"], "end") if record.get("end") else None
    if end is not None and end < start:
        raise InvalidRecord("end is before start")
    at, end_text = canonical(start), canonical(end) if end else None
    if state == "PENDING_SCORE" or end is None:
        out.unsettled(start)
    if collection == "cycle":
        if score is not None:
            add("strain", at, end_text, number_in_range(score.get("strain"), "strain", 0, 21))
            kj = _opt(score, "kilojoule", 0, 100_000)
            add("cycle_calories", at, end_text, round(kj / KJ_PER_KCAL, 2) if kj is not None else None)
            add("cycle_heart_rate_avg", at, end_text, _opt(score, "average_heart_rate", 20, 250))
            add("cycle_heart_rate_max", at, end_text, _opt(score, "max_heart_rate", 20, 250))
        return rows
    if end is None:
        raise InvalidRecord("end is missing")
    if collection == "activity/sleep":
        prefix = "nap" if record.get("nap") else "sleep"
        if score is not None:
            stages = score.get("stage_summary") if isinstance(score.get("stage_summary"), dict) else {}
            seconds = {k: _opt(stages, k, 0, 86_400_000) for k in stages if k.endswith("_milli")}

            def secs(key: str) -> float | None:
                milli = seconds.get(key)
                return round(milli / 1000, 3) if milli is not None else None

            light, deep, rem = (
                secs("total_light_sleep_time_milli"),
                secs("total_slow_wave_sleep_time_milli"),
                secs("total_rem_sleep_time_milli"),
            )
            add(f"{prefix}_duration", at, end_text, secs("total_in_bed_time_milli"))
            add(f"{prefix}_awake", at, end_text, secs("total_awake_time_milli"))
            add(f"{prefix}_light", at, end_text, light)
            add(f"{prefix}_deep", at, end_text, deep)
            add(f"{prefix}_rem", at, end_text, rem)
            if None not in (light, deep, rem):
                add(f"{prefix}_total", at, end_text, round(light + deep + rem, 3))  # type: ignore[operator]
            add(f"{prefix}_efficiency", at, end_text, _opt(score, "sleep_efficiency_percentage", 0, 100))
            add(
                f"{prefix}_performance",
                at,
                end_text,
                _opt(score, "sleep_performance_percentage", 0, 100),
            )
            add(
                f"{prefix}_respiratory_rate",
                at,
                end_text,
                _opt(score, "respiratory_rate", 3, 60),
            )
            add(f"{prefix}_disturbances", at, end_text, _opt(stages, "disturbance_count", 0, 1000))
        return rows
    # activity/workout
    add("workout_duration", at, end_text, (end - start).total_seconds())
    if score is not None:
        add("workout_strain", at, end_text, number_in_range(score.get("strain"), "strain", 0, 21))
        kj = _opt(score, "kilojoule", 0, 100_000)
        add("workout_calories", at, end_text, round(kj / KJ_PER_KCAL, 2) if kj is not None else None)
        add("workout_heart_rate_avg", at, end_text, _opt(score, "average_heart_rate", 20, 250))
        add("workout_heart_rate_max", at, end_text, _opt(score, "max_heart_rate", 20, 250))
        add("workout_distance", at, end_text, _opt(score, "distance_meter", 0, 1_000_000))
    return rows
