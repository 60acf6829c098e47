"""The Junction (Vital) wearables API, simulated: users, summaries, grouped timeseries, refresh.

Follows /work/shared/reference/junction_api.md (sections 1-5, 7, 11): real paths under `/v2`, the
`x-vital-api-key` header, FastAPI-style errors (`{"detail": "..."}`; 422 as a pydantic v2 error list),
summary envelopes without pagination, grouped timeseries with an opaque `next_cursor`.

Choices where the real API is undocumented (reference section 11/12), made explicit here:
- Wrong or missing API key -> 401; unknown user -> 404 `{"detail": "User not found"}`.
- Order of checks is FastAPI's: route (404/405) -> auth (401) -> parameter validation (422) -> user (404).
- Summaries are filtered on `calendar_date` in [date(start), date(end)], both inclusive; without `end_date`
  everything that exists "now" is served. A record is served only once it exists: a sleep after
  `bedtime_stop`, a workout after `time_end`, a weigh-in after it happened, today's activity partially.
- Timeseries pages hold at most `page_size` samples. The cursor is base64 JSON of the last timestamp served
  plus a fingerprint of the query, so a cursor replayed with a different query is a 422, not silently
  wrong data. The last page has `next` and `next_cursor` both null (never an empty trailing page).
- Each user has one source per resource (the wearable, or the CGM for glucose), so `groups` holds at most
  one provider with one source.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import math
import re
import threading
import uuid
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import orjson

from sandbox import junction_data as data
from sandbox.base import HTTPError, Request, Response, json_response
from sandbox.faults import TIME_MODES, shifted_time
from sandbox.junction_data import JunctionUser

DEFAULT_API_KEY = "sk_us_loopsync_sandbox"
REFRESH_LIMIT = 8  # per user per rolling hour (reference section 3/7)
REFRESH_WINDOW_SECONDS = 3600
MAX_USERS_LIMIT = 500

# Every grouped resource the real API has (reference section 5). Those we do not generate answer with empty
# groups rather than 404, as the real API does for a user without that data.
KNOWN_TIMESERIES: frozenset[str] = frozenset(
    {
        "heartrate",
        "hrv",
        "glucose",
        "blood_oxygen",
        "blood_pressure",
        "respiratory_rate",
        "body_weight",
        "body_fat",
        "cholesterol",
        "electrocardiogram_voltage",
        "ige",
        "igg",
        "body_temperature",
        "body_temperature_delta",
        "basal_body_temperature",
        "afib_burden",
        "lean_body_mass",
        "body_mass_index",
        "uv_exposure",
        "forced_vital_capacity",
        "forced_expiratory_volume_1",
        "peak_expiratory_flow_rate",
        "heart_rate_alert",
        "stand_hour",
        "sleep_apnea_alert",
        "sleep_breathing_disturbance",
        "wheelchair_push",
        "inhaler_usage",
        "fall",
        "handwashing",
        "heart_rate_recovery_one_minute",
        "workout_swimming_stroke",
        "insulin_injection",
        "note",
        "hypnogram",
        "steps",
        "calories_active",
        "calories_basal",
        "distance",
        "floors_climbed",
        "vo2_max",
        "stress_level",
        "water",
        "caffeine",
        "mindfulness_minutes",
        "carbohydrates",
        "workout_duration",
        "stand_duration",
        "daylight_exposure",
        "waist_circumference",
        "workout_distance",
    }
)
# Summary endpoints we serve without data: the route exists, the list is empty.
EMPTY_SUMMARIES: dict[str, str] = {
    "meal": "meals",
    "sleep_cycle": "sleep_cycle",
    "menstrual_cycle": "menstrual_cycle",
    "electrocardiogram": "electrocardiogram",
}
# The field a "malformed" fault breaks per summary kind: required and numeric, so a strict parser notices.
_CORRUPT_FIELD = {"sleep": "duration", "activity": "steps", "workouts": "calories", "body": "weight"}
_CORRUPT_TIME_FIELD = {
    "sleep": "bedtime_start",
    "activity": "created_at",
    "workouts": "time_start",
    "body": "created_at",
}


# ------------------------------------------------------------------------------------------- validation


def _error(
    kind: str, loc: tuple[str, str], msg: str, value: Any, ctx: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One pydantic v2 error entry, as FastAPI renders it inside `{"detail": [...]}`."""
    entry: dict[str, Any] = {"type": kind, "loc": list(loc), "msg": msg, "input": value}
    if ctx is not None:
        entry["ctx"] = ctx
    return entry


def _parse_uuid(raw: str, loc: tuple[str, str], errors: list[dict[str, Any]]) -> str:
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        hexdigits = raw.replace("-", "")
        if len(hexdigits) != 32:
            reason = (
                f"invalid group count: expected 5, found {raw.count('-') + 1}"
                if "-" in raw
                else (f"invalid length: expected length 32 for simple format, found {len(raw)}")
            )
        else:
            bad = next((i for i, c in enumerate(raw) if c not in "0123456789abcdefABCDEF-"), 0)
            reason = (
                "invalid character: expected an optional prefix of `urn:uuid:` followed by [0-9a-fA-F-], "
                f"found `{raw[bad]}` at {bad + 1}"
            )
        errors.append(
            _error("uuid_parsing", loc, f"Input should be a valid UUID, {reason}", raw, {"error": reason})
        )
        return raw


def _parse_int(
    query: Mapping[str, str],
    name: str,
    default: int,
    low: int | None,
    high: int | None,
    errors: list[dict[str, Any]],
) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        errors.append(
            _error(
                "int_parsing",
                ("query", name),
                "Input should be a valid integer, unable to parse string as an integer",
                raw,
            )
        )
        return default
    if low is not None and value < low:
        errors.append(
            _error(
                "greater_than_equal",
                ("query", name),
                f"Input should be greater than or equal to {low}",
                raw,
                {"ge": low},
            )
        )
    elif high is not None and value > high:
        errors.append(
            _error(
                "less_than_equal",
                ("query", name),
                f"Input should be less than or equal to {high}",
                raw,
                {"le": high},
            )
        )
    return value


_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True, slots=True)
class When:
    """A parsed `start_date` / `end_date`: the instant it stands for and the calendar date summaries use."""

    instant: datetime  # aware UTC
    day: date


def parse_when(raw: str, *, is_end: bool) -> When:
    """`YYYY-MM-DD` (start -> 00:00:00 UTC, end -> 23:59:59 UTC) or an ISO datetime (naive = UTC). ValueError."""
    raw = raw.strip()
    if _DATE_ONLY.match(raw):
        d = date.fromisoformat(raw)
        return When(datetime.combine(d, time(23, 59, 59) if is_end else time(0), tzinfo=UTC), d)
    # An unencoded "+00:00" arrives as " 00:00" after query decoding; take it back rather than reject.
    if " " in raw and "T" in raw:
        raw = raw.replace(" ", "+")
    dt = datetime.fromisoformat(raw)
    dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    return When(dt, dt.date())


def _parse_range(query: Mapping[str, str], errors: list[dict[str, Any]]) -> tuple[When | None, When | None]:
    start: When | None = None
    end: When | None = None
    raw_start = query.get("start_date")
    if raw_start is None:
        errors.append(_error("missing", ("query", "start_date"), "Field required", None))
    for name, raw, is_end in (("start_date", raw_start, False), ("end_date", query.get("end_date"), True)):
        if raw is None:
            continue
        try:
            parsed = parse_when(raw, is_end=is_end)
        except ValueError as exc:
            errors.append(
                _error(
                    "datetime_from_date_parsing",
                    ("query", name),
                    f"Input should be a valid datetime or date, {exc}",
                    raw,
                    {"error": str(exc)},
                )
            )
            continue
        if is_end:
            end = parsed
        else:
            start = parsed
    return start, end


def _epoch(dt: datetime) -> int:
    return math.floor(dt.timestamp())


# ---------------------------------------------------------------------------------------------- cursor


def _fingerprint(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def encode_cursor(last_epoch: int, fingerprint: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"t": last_epoch, "q": fingerprint})).decode().rstrip("=")


def decode_cursor(cursor: str, fingerprint: str) -> int:
    """The last timestamp (epoch) served before this cursor. ValueError if it is garbage or for another query."""
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, orjson.JSONDecodeError, ValueError) as exc:
        raise ValueError("invalid cursor") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("t"), int):
        raise ValueError("invalid cursor")
    if payload.get("q") != fingerprint:
        raise ValueError("cursor does not belong to this query (repeat the identical query with next_cursor)")
    return int(payload["t"])


# --------------------------------------------------------------------------------------------- corruption


def _corrupt_sample(raw: bytes, mode: str, now: datetime) -> bytes:
    sample = orjson.loads(raw)
    if mode in TIME_MODES:
        # Every time field moves together, so an interval stays well-formed and only its date is impossible.
        for key in ("timestamp", "start", "end"):
            if isinstance(sample.get(key), str):
                sample[key] = shifted_time(datetime.fromisoformat(sample[key]), mode, now).isoformat()
    elif mode == "timestamp":
        sample["timestamp"] = "not-a-timestamp"
    elif mode == "missing":
        del sample["value"]
    else:
        sample["value"] = "abc"
    return orjson.dumps(sample)


def _corrupt_object(
    obj: dict[str, Any],
    mode: str,
    value_field: str,
    time_field: str,
    required: str,
    now: datetime | None = None,
) -> dict[str, Any]:
    bad = copy.deepcopy(obj)  # the original may be a cached record: never mutate it
    if mode in TIME_MODES:
        moved = "calendar_date" if "calendar_date" in bad else time_field
        if moved == "calendar_date":
            real = datetime.combine(date.fromisoformat(bad[moved]), datetime.min.time(), tzinfo=UTC)
            bad[moved] = shifted_time(real, mode, now or datetime.now(UTC)).date().isoformat()
        elif isinstance(bad.get(moved), str):
            bad[moved] = shifted_time(
                datetime.fromisoformat(bad[moved]), mode, now or datetime.now(UTC)
            ).isoformat()
    elif mode == "value":
        bad[value_field] = "abc"
    elif mode == "timestamp":
        bad[time_field] = "not-a-timestamp"
    else:
        bad.pop(required, None)
    return bad


# -------------------------------------------------------------------------------------------------- routes


@dataclass(frozen=True, slots=True)
class _Route:
    pattern: re.Pattern[str]
    methods: Mapping[str, str]  # HTTP method -> name of the JunctionSandbox method handling it
    # Name of the JunctionSandbox method that validates the query string (returns parsed arguments,
    # appends pydantic-style errors). Runs before the user lookup, like FastAPI's parameter validation.
    validator: str | None = None


_ROUTES: tuple[_Route, ...] = (
    _Route(re.compile(r"^/v2/user$"), {"GET": "_list_users"}, "_validate_paging"),
    _Route(re.compile(r"^/v2/user/providers/(?P<user_id>[^/]+)$"), {"GET": "_get_providers"}),
    _Route(re.compile(r"^/v2/user/refresh/(?P<user_id>[^/]+)$"), {"POST": "_refresh"}, "_validate_refresh"),
    _Route(re.compile(r"^/v2/user/(?P<user_id>[^/]+)$"), {"GET": "_get_user"}),
    _Route(re.compile(r"^/v2/summary/profile/(?P<user_id>[^/]+)$"), {"GET": "_get_profile"}),
    _Route(
        re.compile(
            r"^/v2/summary/(?P<kind>sleep|activity|workouts|body|meal|sleep_cycle|menstrual_cycle|electrocardiogram)"
            r"/(?P<user_id>[^/]+)$"
        ),
        {"GET": "_get_summary"},
        "_validate_summary",
    ),
    _Route(
        re.compile(r"^/v2/timeseries/(?P<user_id>[^/]+)/(?P<resource>[a-z0-9_]+)/grouped$"),
        {"GET": "_get_grouped"},
        "_validate_grouped",
    ),
)


def _match(subpath: str) -> tuple[_Route, dict[str, str]] | None:
    for route in _ROUTES:
        m = route.pattern.match(subpath)
        if m:
            params = m.groupdict()
            if "resource" in params and params["resource"] not in KNOWN_TIMESERIES:
                return None  # no such route in the real API either: 404 before auth, as routing comes first
            return route, params
    return None


class JunctionSandbox:
    """The Junction provider. Stateless apart from refresh counters: data is generated on demand, cached."""

    name = "junction"
    prefix = "/junction"

    def __init__(
        self,
        users: int = 20,
        seed: int = 42,
        api_key: str = DEFAULT_API_KEY,
        page_size: int = 2000,
        data_start: date = data.DEFAULT_DATA_START,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self.seed = seed
        self.api_key = api_key
        self.page_size = page_size
        self.data_start = data_start
        self.users: list[JunctionUser] = [data.make_user(seed, i, data_start) for i in range(1, users + 1)]
        self._by_id: dict[str, JunctionUser] = {u.user_id: u for u in self.users}
        self._refresh_lock = threading.Lock()
        self._refreshes: dict[str, deque[float]] = {}

    # ------------------------------------------------------------------------------ helpers for tests

    @property
    def user_ids(self) -> list[str]:
        return [u.user_id for u in self.users]

    def user(self, user_id: str) -> JunctionUser:
        """The user with that id (any UUID spelling). KeyError if unknown."""
        return self._by_id[str(uuid.UUID(user_id))]

    def samples(
        self,
        user_id: str,
        resource: str,
        start: datetime,
        end: datetime,
        provider: str = "",
        now: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """Every sample the grouped endpoint serves for [start, end] (all pages merged, sorted by timestamp).

        `start`/`end` are instants (naive = UTC); `now` defaults to the current (possibly time-machine) time.
        """
        user = self.user(user_id)
        now_e = _epoch(now or datetime.now(UTC))
        if self._source_provider(user, resource, provider) is None:
            return []
        ranges, _, _ = self._collect(
            user, resource, _epoch(_aware(start)), _epoch(_aware(end)), now_e, None, None
        )
        return orjson.loads(b"[" + _join(ranges) + b"]")

    def summaries(
        self,
        user_id: str,
        kind: str,
        start_date: date,
        end_date: date | None,
        provider: str = "",
        now: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """Exactly the list the summary endpoint serves for these dates (deep copies: safe to modify)."""
        if kind not in data.SUMMARY_KINDS:
            raise ValueError(f"kind must be one of {data.SUMMARY_KINDS}")
        user = self.user(user_id)
        records = self._summaries(user, kind, start_date, end_date, provider, now or datetime.now(UTC))
        return copy.deepcopy(records)

    def arrivals(self, user_id: str, since: datetime, until: datetime) -> list[tuple[str, dict[str, Any]]]:
        """The webhook events Junction sends for what became available in (since, until]: per timeseries
        resource one `daily.data.<resource>.created` with the new samples (the grouped form `{source, data,
        source_id, user_id}`), per summary a `.created` when it first appears and an `.updated` when it changed
        (an activity summary grows all day). `(event_type, data)` pairs, in that order."""
        user = self.user(user_id)
        events: list[tuple[str, dict[str, Any]]] = []
        # An interval sample becomes available up to its interval after it starts: a day back covers it.
        low = since - timedelta(days=1)
        for index, resource in enumerate(data.RESOURCES):
            slug = user.provider_for(resource)
            if slug is None:
                continue
            before = {_sample_key(s) for s in self.samples(user_id, resource, low, since, now=since)}
            new = [
                s
                for s in self.samples(user_id, resource, low, until, now=until)
                if _sample_key(s) not in before
            ]
            if new:
                grouped = {
                    "data": new,
                    "source_id": 16 + index,
                    "source": user.source(slug),
                    "user_id": user.user_id,
                }
                events.append((f"daily.data.{resource}.created", grouped))
        first = since.date() - timedelta(days=2)
        for kind in data.SUMMARY_KINDS:
            old = {r["id"]: r for r in self.summaries(user_id, kind, first, None, now=since)}
            for record in self.summaries(user_id, kind, first, None, now=until):
                previous = old.get(record["id"])
                if previous is None:
                    events.append((f"daily.data.{kind}.created", {**record, "user_id": user.user_id}))
                elif previous != record:
                    events.append((f"daily.data.{kind}.updated", {**record, "user_id": user.user_id}))
        return events

    def warm(self, start: date, end: date, resources: tuple[str, ...] | None = None) -> int:
        """Generate (and cache) every user's series and summaries for local days start..end; returns the
        number of samples. Generation costs ~5 us a sample, so a benchmark warms first and measures the sync."""
        total = 0
        for user in self.users:
            day = max(start, user.data_start)
            while day <= end:
                for resource in resources or tuple(data.RESOURCES):
                    total += len(data.series(user, day, resource).starts)
                data.sleep_summary(user, day)
                data.workout_summary(user, day)
                data.body_summary(user, day)
                day += timedelta(days=1)
        return total

    def reset(self) -> None:
        with self._refresh_lock:
            self._refreshes.clear()

    # --------------------------------------------------------------------------------- provider API

    def user_id_for(self, method: str, subpath: str) -> str | None:
        found = _match(subpath)
        if found is None or "user_id" not in found[1]:
            return None
        raw = found[1]["user_id"]
        try:
            return str(uuid.UUID(raw))
        except ValueError:
            return raw.lower()

    def handle(self, request: Request) -> Response:
        try:
            return self._handle(request)
        except HTTPError as exc:
            return exc.to_response()

    def _handle(self, request: Request) -> Response:
        found = _match(request.subpath)
        if found is None:
            raise HTTPError(404, "Not Found")
        route, params = found
        handler_name = route.methods.get(request.method)
        if handler_name is None:
            raise HTTPError(405, "Method Not Allowed", [("Allow", ", ".join(route.methods))])
        self._authenticate(request)
        # Path and query problems are reported together in one 422, as FastAPI does.
        errors: list[dict[str, Any]] = []
        if "user_id" in params:
            params["user_id"] = _parse_uuid(params["user_id"], ("path", "user_id"), errors)
        args: dict[str, Any] = (
            getattr(self, route.validator)(request, params, errors) if route.validator else {}
        )
        if errors:
            raise HTTPError(422, errors)
        user: JunctionUser | None = None
        if "user_id" in params:
            user = self._by_id.get(params["user_id"])
            if user is None:
                raise HTTPError(404, "User not found")
        return getattr(self, handler_name)(request, params, user, **args)

    # ---------------------------------------------------------------------------------- validators

    def _validate_paging(
        self, request: Request, params: dict[str, str], errors: list[dict[str, Any]]
    ) -> dict[str, Any]:
        return {
            "offset": _parse_int(request.query, "offset", 0, 0, None, errors),
            "limit": _parse_int(request.query, "limit", 100, 1, MAX_USERS_LIMIT, errors),
        }

    def _validate_refresh(
        self, request: Request, params: dict[str, str], errors: list[dict[str, Any]]
    ) -> dict[str, Any]:
        _parse_int(request.query, "timeout", 10, 5, 60, errors)  # accepted and validated; we answer at once
        return {}

    def _validate_summary(
        self, request: Request, params: dict[str, str], errors: list[dict[str, Any]]
    ) -> dict[str, Any]:
        start, end = _parse_range(request.query, errors)
        return {"start": start, "end": end}

    def _validate_grouped(
        self, request: Request, params: dict[str, str], errors: list[dict[str, Any]]
    ) -> dict[str, Any]:
        query = request.query
        start, end = _parse_range(query, errors)
        fingerprint = _fingerprint(
            params["user_id"],
            params["resource"],
            query.get("start_date", ""),
            query.get("end_date", ""),
            query.get("provider", ""),
        )
        # `cursor` is the deprecated name of the same parameter.
        name = "next_cursor" if query.get("next_cursor") else "cursor"
        raw_cursor = query.get(name)
        after: int | None = None
        if raw_cursor:
            try:
                after = decode_cursor(raw_cursor, fingerprint)
            except ValueError as exc:
                errors.append(
                    _error(
                        "value_error", ("query", name), f"Value error, {exc}", raw_cursor, {"error": str(exc)}
                    )
                )
        return {"start": start, "end": end, "after": after, "fingerprint": fingerprint}

    def _authenticate(self, request: Request) -> None:
        key = request.headers.get("x-vital-api-key")
        if not key:
            raise HTTPError(401, "Missing API key: send it in the x-vital-api-key header.")
        # Constant-time compare; the key itself is never echoed back.
        if not hashlib.sha256(key.encode()).digest() == hashlib.sha256(self.api_key.encode()).digest():
            raise HTTPError(401, "Invalid API key.")

    # ------------------------------------------------------------------------------------ users

    def _user_object(self, user: JunctionUser) -> dict[str, Any]:
        created = data.iso(int(user.created_on.timestamp()))
        sources = []
        for slug in user.providers:
            info = {"name": data.PROVIDER_NAMES[slug], "slug": slug, "logo": data.PROVIDER_LOGOS[slug]}
            sources.append({"provider": info, "created_on": created, "source": dict(info)})
        return {
            "user_id": user.user_id,
            "team_id": user.team_id,
            "client_user_id": user.client_user_id,
            "created_on": created,
            "connected_sources": sources,
            "fallback_time_zone": {"id": user.time_zone, "source_slug": "manual", "updated_at": created},
            "fallback_birth_date": {
                "value": user.birth_date.isoformat(),
                "source_slug": "manual",
                "updated_at": created,
            },
            "ingestion_start": None,
            "ingestion_end": None,
        }

    def _list_users(
        self, request: Request, params: dict[str, str], user: JunctionUser | None, *, offset: int, limit: int
    ) -> Response:
        users = [self._user_object(u) for u in self.users[offset : offset + limit]]
        if request.malformed and users:
            users[0] = _corrupt_object(users[0], request.malformed, "created_on", "created_on", "user_id")
        return json_response(
            200, {"users": users, "total": len(self.users), "offset": offset, "limit": limit}
        )

    def _get_user(self, request: Request, params: dict[str, str], user: JunctionUser | None) -> Response:
        assert user is not None
        obj = self._user_object(user)
        if request.malformed:
            obj = _corrupt_object(obj, request.malformed, "created_on", "created_on", "client_user_id")
        return json_response(200, obj)

    def _get_providers(self, request: Request, params: dict[str, str], user: JunctionUser | None) -> Response:
        assert user is not None
        created = data.iso(int(user.created_on.timestamp()))
        providers = []
        for slug in user.providers:
            resources = (
                ["glucose"]
                if slug == user.cgm_provider
                else [*data.SUMMARY_KINDS, *(r for r, s in data.RESOURCES.items() if not s.cgm)]
            )
            providers.append(
                {
                    "name": data.PROVIDER_NAMES[slug],
                    "slug": slug,
                    "logo": data.PROVIDER_LOGOS[slug],
                    "created_on": created,
                    "status": "connected",
                    "resource_availability": {
                        r: {"status": "available", "scope_requirements": None} for r in resources
                    },
                }
            )
        if request.malformed and providers:
            providers[0] = _corrupt_object(
                providers[0], request.malformed, "created_on", "created_on", "slug"
            )
        return json_response(200, {"providers": providers})

    def _refresh(self, request: Request, params: dict[str, str], user: JunctionUser | None) -> Response:
        assert user is not None
        now = request.now.timestamp()
        with self._refresh_lock:
            calls = self._refreshes.setdefault(user.user_id, deque())
            while calls and calls[0] <= now - REFRESH_WINDOW_SECONDS:
                calls.popleft()
            if len(calls) >= REFRESH_LIMIT:
                # Rejected calls do not count: the window only holds refreshes that ran.
                retry_after = max(1, math.ceil(calls[0] + REFRESH_WINDOW_SECONDS - now))
                raise HTTPError(429, "Too many requests", [("Retry-After", str(retry_after))])
            calls.append(now)
        sources = [f"{user.provider}/{kind}" for kind in data.SUMMARY_KINDS]
        sources += [f"{user.provider}/vitals/{r}" for r, s in data.RESOURCES.items() if not s.cgm]
        if user.cgm_provider:
            sources.append(f"{user.cgm_provider}/vitals/glucose")
        body: dict[str, Any] = {
            "success": True,
            "user_id": user.user_id,
            "refreshed_sources": sources,
            "in_progress_sources": [],
            "failed_sources": [],
        }
        if request.malformed:
            body = _corrupt_object(body, request.malformed, "success", "user_id", "user_id")
        return json_response(200, body)

    # -------------------------------------------------------------------------------- summaries

    def _get_profile(self, request: Request, params: dict[str, str], user: JunctionUser | None) -> Response:
        assert user is not None
        provider = request.query.get("provider", "")
        if provider and provider != user.provider:
            raise HTTPError(404, "Profile not found")
        created = data.iso(int(user.created_on.timestamp()))
        obj = {
            "id": str(uuid.uuid5(data.NAMESPACE, f"{user.seed}:{user.index}:profile")),
            "user_id": user.user_id,
            "height": user.height_cm,
            "birth_date": user.birth_date.isoformat(),
            "wheelchair_use": False,
            "gender": user.sex,
            "sex": user.sex,
            "source": user.source(user.provider),
            "created_at": created,
            "updated_at": created,
        }
        if request.malformed:
            obj = _corrupt_object(obj, request.malformed, "height", "created_at", "user_id")
        return json_response(200, obj)

    def _get_summary(
        self,
        request: Request,
        params: dict[str, str],
        user: JunctionUser | None,
        *,
        start: When,
        end: When | None,
    ) -> Response:
        assert user is not None
        kind = params["kind"]
        if kind in EMPTY_SUMMARIES:
            return json_response(200, {EMPTY_SUMMARIES[kind]: []})
        provider = request.query.get("provider", "")
        records = self._summaries(user, kind, start.day, end.day if end else None, provider, request.now)
        if request.malformed and records:
            records = list(records)
            i = len(records) // 2  # the middle one: a client that only checks the first record still trips
            records[i] = _corrupt_object(
                records[i],
                request.malformed,
                _CORRUPT_FIELD[kind],
                _CORRUPT_TIME_FIELD[kind],
                "calendar_date",
                request.now,
            )
        return json_response(200, {kind: records})

    def _summaries(
        self, user: JunctionUser, kind: str, start: date, end: date | None, provider: str, now: datetime
    ) -> list[dict[str, Any]]:
        if provider and provider != user.provider:
            return []  # every summary comes from the wearable
        now_e = _epoch(now)
        now_iso = data.iso(now_e)
        tz = user.tz
        # No end_date: up to "now" in the user's own calendar (a Sydney user's "today" may be tomorrow in UTC).
        last = data.local_date(tz, now_e)
        if end is not None:
            last = min(last, end)
        day = max(start, user.data_start)
        out: list[dict[str, Any]] = []
        while day <= last:
            if kind == "activity":
                record = data.activity_summary(user, day, now_e)
            elif kind == "sleep":
                record = data.sleep_summary(user, day)
            elif kind == "workouts":
                record = data.workout_summary(user, day)
            else:
                record = data.body_summary(user, day)
            # ISO strings of one fixed format compare like the instants they name.
            if record is not None and data.summary_available_at(kind, record) <= now_iso:
                out.append(record)
            day += timedelta(days=1)
        return out

    # ------------------------------------------------------------------------------- timeseries

    def _source_provider(self, user: JunctionUser, resource: str, provider: str) -> str | None:
        slug = user.provider_for(resource)
        if slug is None or (provider and provider != slug):
            return None
        return slug

    def _get_grouped(
        self,
        request: Request,
        params: dict[str, str],
        user: JunctionUser | None,
        *,
        start: When,
        end: When | None,
        after: int | None,
        fingerprint: str,
    ) -> Response:
        assert user is not None
        resource = params["resource"]
        provider = request.query.get("provider", "")
        slug = self._source_provider(user, resource, provider)
        now_e = _epoch(request.now)
        end_e = _epoch(end.instant) if end is not None else now_e
        if slug is None:
            return Response(200, b'{"groups":{},"next":null,"next_cursor":null}')
        ranges, last, more = self._collect(
            user, resource, _epoch(start.instant), end_e, now_e, after, self.page_size
        )
        if not ranges:
            return Response(200, b'{"groups":{},"next":null,"next_cursor":null}')
        if request.malformed:
            ranges = _corrupt_middle(ranges, request.malformed, request.now)
        cursor = orjson.dumps(encode_cursor(last, fingerprint) if more and last is not None else None)
        body = b"".join(
            (
                b'{"groups":{',
                orjson.dumps(slug),
                b':[{"source":',
                orjson.dumps(user.source(slug)),
                b',"data":[',
                _join(ranges),
                b']}]},"next":',
                cursor,
                b',"next_cursor":',
                cursor,
                b"}",
            )
        )
        return Response(200, body)

    def _collect(
        self,
        user: JunctionUser,
        resource: str,
        start_e: int,
        end_e: int,
        now_e: int,
        after: int | None,
        limit: int | None,
    ) -> tuple[list[_Range], int | None, bool]:
        """The samples with start_e <= timestamp <= end_e, timestamp > after, and available by now_e, as
        (day, lo, hi) ranges; plus the timestamp of the last one and whether more follow.

        Walks local days lazily from the cursor, so a page deep into a long range touches only the days it needs
        (keyset pagination: nothing to skip), and stops as soon as it knows whether another page exists.
        """
        if resource not in data.RESOURCES:
            return [], None, False
        lower = start_e if after is None else max(start_e, after + 1)
        ranges: list[_Range] = []
        count = 0
        last: int | None = None
        for series in self._days(user, resource, lower, min(end_e, now_e)):
            lo = bisect_left(series.starts, lower)
            # Interval samples exist once their interval has ended; discrete ones once their timestamp passed.
            hi = min(bisect_right(series.starts, end_e), bisect_right(series.starts, now_e - series.interval))
            if hi <= lo:
                continue
            if limit is not None and count >= limit:
                return ranges, last, True  # a full page and at least one more sample
            take = hi - lo if limit is None else min(hi - lo, limit - count)
            ranges.append((series, lo, lo + take))
            count += take
            last = series.starts[lo + take - 1]
            if take < hi - lo:
                return ranges, last, True
        return ranges, last, False

    def _days(self, user: JunctionUser, resource: str, lower: int, upper: int) -> Iterator[data.SeriesDay]:
        if upper < lower:
            return
        tz = user.tz
        day = max(data.local_date(tz, lower), user.data_start)
        last = data.local_date(tz, upper)
        while day <= last:
            yield data.series(user, day, resource)
            day += timedelta(days=1)


_Range = tuple[data.SeriesDay, int, int]


def _sample_key(sample: dict[str, Any]) -> str:
    return str(sample.get("timestamp") or sample.get("start"))


def _join(ranges: list[_Range]) -> bytes:
    return b",".join(series.chunk(lo, hi) for series, lo, hi in ranges)


class _Patched:
    """A one-sample stand-in for a SeriesDay range, carrying a corrupted sample."""

    def __init__(self, sample: bytes) -> None:
        self.sample = sample

    def chunk(self, lo: int, hi: int) -> bytes:
        return self.sample


def _corrupt_middle(ranges: list[_Range], mode: str, now: datetime) -> list[Any]:
    """The same ranges with the page's middle sample replaced by a corrupted copy (cached data untouched)."""
    total = sum(hi - lo for _, lo, hi in ranges)
    k = total // 2  # the middle one: a client that only checks the first sample still trips
    out: list[Any] = []
    for series, lo, hi in ranges:
        if 0 <= k < hi - lo:
            i = lo + k
            out += [
                (series, lo, i),
                (_Patched(_corrupt_sample(series.sample(i), mode, now)), 0, 1),
                (series, i + 1, hi),
            ]
        else:
            out.append((series, lo, hi))
        k -= hi - lo
    return [r for r in out if r[2] > r[1]]


def _aware(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt
