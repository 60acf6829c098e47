"""Junction (formerly Vital) wearables API client and payload parsing.

Follows the real API (see docs/ARCHITECTURE.md and the Junction reference): `x-vital-api-key` header,
`/v2/summary/{resource}/{user_id}`, grouped timeseries `/v2/timeseries/{user_id}/{resource}/grouped` paginated
by `next_cursor` until it is null, timestamps rendered in UTC with `+00:00`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from django.utils import timezone

from connections.config import JunctionSyncConfig
from connections.providers.base import ProviderHTTP
from connections.providers.common import http_for
from connections.providers.contract import (
    CLOCK_SKEW,
    GLUCOSE_HIGH_MGDL,
    GLUCOSE_LOW_MGDL,
    MGDL_PER_MMOLL,
    GlucoseRow,
    InvalidPayload,
    InvalidRecord,
    WearableRow,
    number_in_range,
    plausible_day,
    plausible_instant,
)
from readings.catalogue import unit_of

logger = logging.getLogger("loopsync.providers.junction")


# Junction providers that are CGMs: glucose is fetched only for users connected to one of them.
CGM_PROVIDER_SLUGS = frozenset(
    {"freestyle_libre", "freestyle_libre_ble", "abbott_libreview", "dexcom", "dexcom_v3", "tandem_source"}
)


@dataclass(frozen=True)
class SeriesSpec:
    """How one grouped timeseries resource maps to stored metrics: each unit the API may give a sample, the
    metric it is stored under (its unit from readings.catalogue), and the plausible value range."""

    resource: str
    # unit as the sample gives it (lower case) -> metric
    units: dict[str, str]
    low: float
    high: float
    interval: bool = False

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.units.values()))


TIMESERIES: tuple[SeriesSpec, ...] = (
    SeriesSpec("heartrate", {"bpm": "heart_rate"}, 20, 250),
    # The spec's HRV unit names the statistic: `rmssd`; Apple Health measures SDNN, a different quantity,
    # which has its own metric rather than being averaged with RMSSD.
    SeriesSpec("hrv", {"rmssd": "hrv_rmssd", "sdnn": "hrv_sdnn"}, 1, 300),
    SeriesSpec("respiratory_rate", {"bpm": "respiratory_rate", "breaths/min": "respiratory_rate"}, 3, 60),
    SeriesSpec("blood_oxygen", {"%": "blood_oxygen", "percent": "blood_oxygen"}, 50, 100),
    SeriesSpec("steps", {"count": "steps", "steps": "steps"}, 0, 100_000, interval=True),
)
GLUCOSE_RESOURCE = "glucose"

SUMMARY_KINDS: tuple[str, ...] = ("sleep", "activity", "workouts", "body")
# Envelope key of each summary response.
SUMMARY_ENVELOPE = {"sleep": "sleep", "activity": "activity", "workouts": "workouts", "body": "body"}

# (field path, metric, low, high) per summary kind (units from readings.catalogue); a null field is simply
# absent that day.
SLEEP_FIELDS: tuple[tuple[str, str, float, float], ...] = (
    ("duration", "sleep_duration", 0, 86_400),
    ("total", "sleep_total", 0, 86_400),
    ("awake", "sleep_awake", 0, 86_400),
    ("light", "sleep_light", 0, 86_400),
    ("rem", "sleep_rem", 0, 86_400),
    ("deep", "sleep_deep", 0, 86_400),
    ("efficiency", "sleep_efficiency", 0, 100),
    ("latency", "sleep_latency", 0, 86_400),
    ("score", "sleep_score", 0, 100),
    ("hr_lowest", "sleep_hr_lowest", 20, 250),
    ("hr_average", "sleep_hr_average", 20, 250),
    ("hr_resting", "sleep_resting_heart_rate", 20, 250),
    ("average_hrv", "sleep_hrv_rmssd", 1, 300),
    ("respiratory_rate", "sleep_respiratory_rate", 3, 60),
    ("recovery_readiness_score", "readiness_score", 0, 100),
)
ACTIVITY_FIELDS: tuple[tuple[str, str, float, float], ...] = (
    ("steps", "activity_steps", 0, 200_000),
    ("calories_total", "calories_total", 0, 20_000),
    ("calories_active", "calories_active", 0, 20_000),
    ("distance", "activity_distance", 0, 500_000),
    ("floors_climbed", "floors_climbed", 0, 2_000),
    ("heart_rate.resting_bpm", "resting_heart_rate", 20, 250),
    ("heart_rate.avg_bpm", "activity_heart_rate_avg", 20, 250),
)
WORKOUT_FIELDS: tuple[tuple[str, str, float, float], ...] = (
    ("calories", "workout_calories", 0, 20_000),
    ("distance", "workout_distance", 0, 1_000_000),
    ("average_hr", "workout_heart_rate_avg", 20, 250),
    ("max_hr", "workout_heart_rate_max", 20, 250),
)
BODY_FIELDS: tuple[tuple[str, str, float, float], ...] = (
    ("weight", "body_weight", 1, 700),
    ("fat", "body_fat", 0, 100),
    ("body_mass_index", "body_mass_index", 5, 150),
)


@dataclass
class ParsedPayload:
    readings: list[WearableRow] = field(default_factory=list)
    glucose: list[GlucoseRow] = field(default_factory=list)
    # Records that failed validation (a skipped summary counts once, however many metrics it held).
    skipped: int = 0

    @property
    def records(self) -> int:
        """Readings this payload yields, plus the records skipped: what the summary calls "fetched"."""
        return len(self.readings) + len(self.glucose) + self.skipped

    def extend(self, other: ParsedPayload) -> None:
        self.readings.extend(other.readings)
        self.glucose.extend(other.glucose)
        self.skipped += other.skipped


def canonical_utc(raw: object, field_name: str = "timestamp", *, ahead: timedelta = CLOCK_SKEW) -> str:
    """Validate an ISO-8601 timestamp with an offset and return it as a canonical UTC string."""
    if not isinstance(raw, str):
        raise InvalidRecord(f"{field_name} is not a string")
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise InvalidRecord(f"{field_name} is not an ISO-8601 datetime") from None
    if parsed.tzinfo is None:
        raise InvalidRecord(f"{field_name} has no UTC offset")
    utc = plausible_instant(parsed, field_name, ahead=ahead)
    # Junction renders every timestamp with +00:00, so the common case is a string slice.
    if len(raw) == 25 and raw.endswith("+00:00"):
        return f"{raw[:10]} {raw[11:]}"
    return utc.isoformat(sep=" ")


def _dig(record: dict[str, Any], path: str) -> Any:
    node: Any = record
    for part in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _source_of(group_key: str, source: Any) -> tuple[str, str]:
    if isinstance(source, dict):
        provider = source.get("provider") or source.get("slug") or group_key
        return str(provider)[:40], str(source.get("type") or "")[:32]
    return group_key[:40], ""


def _warn_invalid(resource: str, index: int, error: InvalidRecord) -> None:
    # Values are PHI: the log names the resource, position and rule only.
    logger.warning(
        "skipped invalid record", extra={"resource": resource, "index": index, "reason": str(error)}
    )


def parse_timeseries(spec: SeriesSpec, payload: Any) -> ParsedPayload:
    """Grouped timeseries page → wearable rows, each sample stored under the metric its own unit names. Invalid
    samples and samples in a unit the spec does not know are logged (never their value) and skipped."""
    out = ParsedPayload()
    rows = out.readings
    low, high = spec.low, spec.high
    units = spec.units
    unknown_units: dict[str, int] = {}
    for group_key, entries in _groups(payload, spec.resource):
        for entry in entries:
            source, source_type = _source_of(group_key, entry.get("source"))
            samples = entry.get("data") or []
            for index, sample in enumerate(samples):
                try:
                    if not isinstance(sample, dict):
                        raise InvalidRecord("sample is not an object")
                    unit = sample.get("unit")
                    metric = units.get(unit.lower()) if isinstance(unit, str) else None
                    if metric is None:
                        name = str(unit)[:24] if isinstance(unit, str) else "missing"
                        unknown_units[name] = unknown_units.get(name, 0) + 1
                        out.skipped += 1
                        continue
                    value = sample.get("value")
                    # Some providers report SpO2 as a fraction; the API's unit is percent.
                    if spec.resource == "blood_oxygen" and isinstance(value, float) and 0 < value <= 1:
                        value *= 100
                    number = number_in_range(value, "value", low, high)
                    if spec.interval:
                        start = canonical_utc(sample.get("start") or sample.get("timestamp"), "start")
                        end = canonical_utc(sample["end"], "end") if sample.get("end") else None
                    else:
                        start = canonical_utc(sample.get("timestamp"))
                        end = None
                except InvalidRecord as exc:
                    out.skipped += 1
                    _warn_invalid(spec.resource, index, exc)
                    continue
                rows.append((metric, source, source_type, start, end, number, unit_of(metric)))
    for unit_name, count in unknown_units.items():
        # A unit name is not PHI; one line per unit and page, not per sample.
        logger.warning(
            "skipped samples in an unknown unit",
            extra={"resource": spec.resource, "unit": unit_name, "skipped": count},
        )
    return out


def parse_glucose(payload: Any) -> ParsedPayload:
    out = ParsedPayload()
    for group_key, entries in _groups(payload, GLUCOSE_RESOURCE):
        for entry in entries:
            source, source_type = _source_of(group_key, entry.get("source"))
            for index, sample in enumerate(entry.get("data") or []):
                try:
                    if not isinstance(sample, dict):
                        raise InvalidRecord("sample is not an object")
                    unit = str(sample.get("unit") or "mmol/L")
                    raw_value = sample.get("value")
                    if unit.lower().replace(" ", "") in ("mg/dl", "mgdl"):
                        mg_dl = number_in_range(raw_value, "value", GLUCOSE_LOW_MGDL, GLUCOSE_HIGH_MGDL)
                        original = mg_dl
                    else:
                        original = number_in_range(
                            raw_value,
                            "value",
                            GLUCOSE_LOW_MGDL / MGDL_PER_MMOLL,
                            GLUCOSE_HIGH_MGDL / MGDL_PER_MMOLL,
                        )
                        mg_dl = round(original * MGDL_PER_MMOLL, 2)
                    measured_at = canonical_utc(sample.get("timestamp"))
                except InvalidRecord as exc:
                    out.skipped += 1
                    _warn_invalid(GLUCOSE_RESOURCE, index, exc)
                    continue
                # Junction carries no trend arrow for glucose; the device column records the source type
                # (automatic CGM sample vs manual_scan).
                out.glucose.append((source, measured_at, mg_dl, original, unit[:16], "", None, source_type))
    return out


def _groups(payload: Any, resource: str) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    if not isinstance(payload, dict) or not isinstance(payload.get("groups"), dict):
        raise InvalidPayload(f"{resource} response has no groups object")
    for key, entries in payload["groups"].items():
        if isinstance(entries, list):
            yield str(key), [e for e in entries if isinstance(e, dict)]


def day_stamp(day: date) -> str:
    """A day-level summary's stamp: its calendar date at 00:00 UTC (Junction's own `date` field). The statistics
    count it on that calendar date whatever the patient's zone (readings.catalogue, day-level metrics), so
    the stored key does not depend on the zone: a zone change neither moves nor doubles it."""
    return f"{day.isoformat()} 00:00:00+00:00"


def parse_summaries(kind: str, payload: Any, tz: ZoneInfo) -> ParsedPayload:
    """Summary response (sleep / activity / workouts / body) → one wearable row per present metric."""
    if not isinstance(payload, dict) or not isinstance(payload.get(SUMMARY_ENVELOPE[kind]), list):
        raise InvalidPayload(f"{kind} summary response has no {SUMMARY_ENVELOPE[kind]!r} list")
    out = ParsedPayload()
    for index, record in enumerate(payload[SUMMARY_ENVELOPE[kind]]):
        try:
            rows = _summary_rows(kind, record, tz)
        except InvalidRecord as exc:
            out.skipped += 1
            _warn_invalid(kind, index, exc)
            continue
        out.readings.extend(rows)
    return out


def _summary_rows(kind: str, record: Any, tz: ZoneInfo) -> list[WearableRow]:
    if not isinstance(record, dict):
        raise InvalidRecord("record is not an object")
    if not record.get("id"):
        raise InvalidRecord("id is missing")
    source, source_type = _source_of("unknown", record.get("source"))
    if kind == "sleep":
        measured_at = canonical_utc(record.get("bedtime_stop"), "bedtime_stop")
        canonical_utc(record.get("bedtime_start"), "bedtime_start")
        fields = SLEEP_FIELDS
    elif kind == "workouts":
        measured_at = canonical_utc(record.get("time_start"), "time_start")
        end = canonical_utc(record.get("time_end"), "time_end")
        fields = WORKOUT_FIELDS
    else:
        try:
            day = date.fromisoformat(str(record.get("calendar_date")))
        except ValueError:
            raise InvalidRecord("calendar_date is not a date") from None
        plausible_day(day, timezone.localtime(timezone=tz).date(), "calendar_date")
        measured_at = day_stamp(day)
        fields = ACTIVITY_FIELDS if kind == "activity" else BODY_FIELDS
    rows: list[WearableRow] = []
    for path, metric, low, high in fields:
        raw = _dig(record, path)
        if raw is None:
            continue
        if (
            metric == "sleep_efficiency"
            and isinstance(raw, int | float)
            and not isinstance(raw, bool)
            and raw <= 1
        ):
            raw = raw * 100  # documented as a fraction (0.97); stored as percent
        rows.append(
            (
                metric,
                source,
                source_type,
                measured_at,
                None,
                number_in_range(raw, path, low, high),
                unit_of(metric),
            )
        )
    if kind == "workouts":
        seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(measured_at)).total_seconds()
        if seconds < 0:
            raise InvalidRecord("time_end is before time_start")
        rows.append(
            ("workout_duration", source, source_type, measured_at, end, seconds, unit_of("workout_duration"))
        )
    return rows


class JunctionClient:
    """Typed calls to the Junction API over the shared HTTP layer."""

    provider = "junction"

    def __init__(self, base_url: str, api_key: str, *, http: ProviderHTTP | None = None, **http_options: Any):
        self.http = http or ProviderHTTP(
            self.provider, base_url, headers={"x-vital-api-key": api_key}, **http_options
        )

    @classmethod
    def from_config(cls, config: JunctionSyncConfig) -> JunctionClient:
        http = http_for(cls.provider, config.base_url, headers={"x-vital-api-key": config.api_key})
        return cls(config.base_url, config.api_key, http=http)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> JunctionClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def list_users(self, page_size: int = 500) -> list[dict[str, Any]]:
        users: list[dict[str, Any]] = []
        offset = 0
        while True:
            page = self.http.get_json("/v2/user", {"offset": offset, "limit": page_size}, route="/v2/user")
            batch = page.get("users") or []
            users.extend(batch)
            offset += len(batch)
            if not batch or offset >= int(page.get("total") or 0):
                return users

    def get_user(self, user_id: str) -> dict[str, Any]:
        return self.http.get_json(f"/v2/user/{user_id}", route="/v2/user/{user_id}")

    def connected_providers(self, user_id: str) -> list[dict[str, Any]]:
        body = self.http.get_json(f"/v2/user/providers/{user_id}", route="/v2/user/providers/{user_id}")
        providers = (body.get("providers") or []) if isinstance(body, dict) else None
        if not isinstance(providers, list):
            raise InvalidPayload("providers response has no providers list")
        readable = [p for p in providers if isinstance(p, dict)]
        if len(readable) != len(providers):
            logger.warning(
                "skipped unreadable provider entries", extra={"skipped": len(providers) - len(readable)}
            )
        return readable

    def refresh_user(self, user_id: str, timeout_s: int = 10) -> dict[str, Any]:
        # Not idempotent in cost (8 an hour per user): never retried blindly.
        response = self.http.request(
            "POST",
            f"/v2/user/refresh/{user_id}",
            params={"timeout": timeout_s},
            idempotent=False,
            route="/v2/user/refresh/{user_id}",
        )
        return self.http.decode("/v2/user/refresh/{user_id}", response.content)

    def summary_bytes(self, kind: str, user_id: str, start: date, end: date) -> bytes:
        return self.http.get_bytes(
            f"/v2/summary/{kind}/{user_id}",
            {"start_date": start.isoformat(), "end_date": end.isoformat()},
            route=f"/v2/summary/{kind}/{{user_id}}",
        )

    def timeseries_pages(self, user_id: str, resource: str, start: date, end: date) -> list[bytes]:
        """Every page of a grouped timeseries query: the identical query repeated with `next_cursor`."""
        route = f"/v2/timeseries/{{user_id}}/{resource}/grouped"
        params: dict[str, str] = {"start_date": start.isoformat(), "end_date": end.isoformat()}
        pages: list[bytes] = []
        seen_cursors: set[str] = set()
        while True:
            body = self.http.get_bytes(f"/v2/timeseries/{user_id}/{resource}/grouped", params, route=route)
            pages.append(body)
            decoded = self.http.decode(route, body)
            if not isinstance(decoded, dict):
                raise InvalidPayload(f"{resource} response is not a JSON object")
            cursor = decoded.get("next_cursor")
            if not cursor:
                return pages
            if not isinstance(cursor, str):
                raise InvalidPayload(f"{resource} next_cursor is not a string")
            if cursor in seen_cursors:
                raise InvalidPayload(f"{resource} pagination repeated a cursor")
            seen_cursors.add(cursor)
            params = {**params, "next_cursor": cursor}


def fallback_time_zone(user: dict[str, Any]) -> str | None:
    """The IANA zone from a ClientFacingUser (an object on output, a string on input)."""
    raw = user.get("fallback_time_zone")
    if isinstance(raw, dict):
        raw = raw.get("id")
    if isinstance(raw, str) and raw:
        try:
            ZoneInfo(raw)
        except Exception:  # noqa: BLE001 - any unknown zone name falls back to the patient's default
            return None
        return raw
    return None


def has_cgm(providers: list[dict[str, Any]]) -> bool:
    for provider in providers:
        if provider.get("slug") in CGM_PROVIDER_SLUGS:
            return True
        availability = provider.get("resource_availability") or {}
        if (
            isinstance(availability, dict)
            and (availability.get("glucose") or {}).get("status") == "available"
        ):
            return True
    return False


def utc_days(start: datetime, end: datetime) -> list[date]:
    """The UTC calendar days from start to end inclusive (Junction date params are UTC days)."""
    first, last = start.astimezone(UTC).date(), end.astimezone(UTC).date()
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]
