"""The WHOOP Developer API v2, simulated (provider_apis.md §1).

Paths as on `https://api.prod.whoop.com`: OAuth at `/oauth/oauth2/auth` and `/oauth/oauth2/token` (client
credentials in the form body, `offline` scope required for a refresh token, state >= 8 characters, refresh tokens
rotated and the old one killed at once), data at `/developer/v2/...`:
`/cycle`, `/recovery`, `/activity/sleep`, `/activity/workout`, `/user/profile/basic` (there is no
`/recovery/{id}`). Collections take `limit` (default 10, max 25, else 400), `start` (inclusive) and `end`
(exclusive) matched against the record's start (a recovery: its sleep's start), `nextToken` (opaque); records
come newest first; the body is `{"records": [...], "next_token": "..."}`, the token absent on the last page.

Rate limits: `X-RateLimit-Limit/Remaining/Reset` on every data response; 429 past `per_minute` (100) requests a
minute or `per_day` (10,000) a day, per app.

Data per user and local day D, deterministic in (seed, user, D): the night's sleep ending on D's morning, a cycle
from each sleep onset to the next (the current cycle has no `end`), its recovery, and a workout on some evenings.
A record exists once it has started (cycle) or ended (sleep, workout); it is `PENDING_SCORE` until
`score_delay` after that, then `SCORED` (about 3% of sleeps are `UNSCORABLE`). Tests move `score_delay` or time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
import time
import uuid
from collections import deque
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sandbox.base import HTTPError, Request, Response, json_response
from sandbox.cgm_data import unit_random
from sandbox.faults import TIME_MODES, shifted_time
from sandbox.oauth import OAuthServer

DEFAULT_CLIENT_ID = "loopsync-whoop-sandbox"
DEFAULT_CLIENT_SECRET = "whoop-sandbox-secret"  # noqa: S105 - a sandbox credential, public by design
NAMESPACE = uuid.UUID("9d4c1a2b-5e6f-5a7b-8c9d-0e1f2a3b4c5d")
OFFSETS = ("-05:00", "+01:00", "-08:00", "+10:00", "+00:00", "+09:00")
MAX_LIMIT = 25
COLLECTIONS = ("cycle", "recovery", "activity/sleep", "activity/workout")
SPORTS = ((0, "running"), (1, "cycling"), (44, "yoga"), (45, "weightlifting"), (63, "walking"))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _offset_hours(text: str) -> float:
    sign = -1 if text[0] == "-" else 1
    return sign * (int(text[1:3]) + int(text[4:6]) / 60)


class WhoopSandbox:
    name = "whoop"
    prefix = "/whoop"

    def __init__(
        self,
        users: int = 20,
        seed: int = 42,
        *,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        history_days: int = 60,
        score_delay: timedelta = timedelta(hours=1),
        per_minute: int = 100,
        per_day: int = 10_000,
        minute_seconds: float = 60.0,
    ) -> None:
        self.users = users
        self.seed = seed
        self.history_days = history_days
        self.score_delay = score_delay
        self.per_minute = per_minute
        self.per_day = per_day
        self.minute_seconds = minute_seconds  # tests shorten the "minute" to see the limit reset
        self.oauth = OAuthServer(
            client_id=client_id,
            client_secret=client_secret,
            access_ttl=3600,
            users=users,
            required_scope="offline",
            min_state_length=8,
        )
        self._calls: deque[float] = deque()
        self._calls_lock = threading.Lock()
        self.deleted: set[str] = set()
        # Knobs tests turn; reset() puts them back.
        self._defaults = {
            "score_delay": self.score_delay,
            "per_minute": self.per_minute,
            "per_day": self.per_day,
            "minute_seconds": self.minute_seconds,
        }

    # ------------------------------------------------------------------------------ helpers for tests

    def whoop_user_id(self, user: int) -> int:
        return 10_000 + user

    def records(
        self, user: int, collection: str, start: datetime, end: datetime, now: datetime | None = None
    ) -> list[dict[str, Any]]:
        """Every record the collection serves for [start, end) at `now`, newest first (all pages)."""
        return self._collect(user, collection, start, end, now or datetime.now(UTC))

    def reset(self) -> None:
        for knob, value in self._defaults.items():
            setattr(self, knob, value)
        self.oauth.reset()
        self.deleted.clear()
        with self._calls_lock:
            self._calls.clear()

    # ------------------------------------------------------------------------------ provider protocol

    def user_id_for(self, method: str, subpath: str) -> str | None:
        return None

    def user_id_from_headers(self, headers: dict[str, str]) -> str | None:
        token = headers.get("authorization", "").partition(" ")[2].strip()
        user = self.oauth.user_for_access_token(token) if token else None
        return str(user) if user is not None else None

    def handle(self, request: Request) -> Response:
        path = request.subpath.rstrip("/")
        if path == "/oauth/oauth2/auth" and request.method == "GET":
            return self.oauth.authorize(request)
        if path == "/oauth/oauth2/token" and request.method == "POST":
            return self.oauth.token(request)
        if not path.startswith("/developer/"):
            return json_response(404, {"error": "No resource found"})
        try:
            headers = self._rate_limit()
        except HTTPError as exc:
            return json_response(429, {"error": "Too Many Requests"}, exc.headers)
        try:
            response = self._data(request, path[len("/developer") :])
        except HTTPError as exc:
            response = json_response(exc.status, {"error": exc.detail})
        response.headers.extend(headers)
        return response

    # ------------------------------------------------------------------------------ endpoints

    def _rate_limit(self) -> list[tuple[str, str]]:
        moment = time.perf_counter()  # not frozen by time-machine, unlike monotonic
        with self._calls_lock:
            while self._calls and self._calls[0] <= moment - 86_400:
                self._calls.popleft()
            minute = [t for t in self._calls if t > moment - self.minute_seconds]
            reset = (
                int((minute[0] + self.minute_seconds - moment) + 0.999)
                if minute
                else int(self.minute_seconds)
            )
            limit_header = f"{self.per_minute}, {self.per_minute};window=60, {self.per_day};window=86400"
            if len(minute) >= self.per_minute or len(self._calls) >= self.per_day:
                headers = [
                    ("X-RateLimit-Limit", limit_header),
                    ("X-RateLimit-Remaining", "0"),
                    ("X-RateLimit-Reset", str(max(1, reset))),
                ]
                raise HTTPError(429, "Too Many Requests", headers)
            self._calls.append(moment)
            remaining = min(self.per_minute - len(minute) - 1, self.per_day - len(self._calls))
        return [
            ("X-RateLimit-Limit", limit_header),
            ("X-RateLimit-Remaining", str(remaining)),
            ("X-RateLimit-Reset", str(max(1, reset))),
        ]

    def _data(self, request: Request, path: str) -> Response:
        if request.method != "GET":
            raise HTTPError(405, "Method Not Allowed")
        user = self.oauth.authenticate(request)
        if path == "/v2/user/profile/basic":
            return json_response(
                200,
                {
                    "user_id": self.whoop_user_id(user),
                    "email": f"whoop{user}@sandbox.loopsync.test",
                    "first_name": "Sandbox",
                    "last_name": f"Athlete {user}",
                },
            )
        single = self._single(user, path, request.now)
        if single is not None:
            return json_response(200, single)
        collection = path[len("/v2/") :] if path.startswith("/v2/") else ""
        if collection not in COLLECTIONS:
            raise HTTPError(404, "No resource found")
        q = request.query
        try:
            limit = int(q.get("limit", "10"))
        except ValueError:
            raise HTTPError(400, "Client error constructing the request: limit") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise HTTPError(400, "Client error constructing the request: limit must be between 1 and 25")
        try:
            start = _parse_time(q["start"]) if q.get("start") else datetime(2000, 1, 1, tzinfo=UTC)
            end = _parse_time(q["end"]) if q.get("end") else request.now
        except ValueError:
            raise HTTPError(400, "Client error constructing the request: start/end") from None
        records = self._collect(user, collection, start, end, request.now)
        fingerprint = hashlib.sha256(
            f"{user}|{collection}|{q.get('start')}|{q.get('end')}|{limit}".encode()
        ).hexdigest()[:12]
        offset = 0
        if q.get("nextToken"):
            try:
                raw = base64.urlsafe_b64decode(q["nextToken"].encode() + b"==").decode()
                offset_text, _, seen = raw.partition(":")
                offset = int(offset_text)
            except (ValueError, binascii.Error, UnicodeDecodeError):
                raise HTTPError(400, "Client error constructing the request: nextToken") from None
            if seen != fingerprint:
                raise HTTPError(
                    400, "Client error constructing the request: nextToken does not match the query"
                )
        page = records[offset : offset + limit]
        if request.malformed and page:
            bad = dict(page[len(page) // 2])
            if request.malformed in TIME_MODES:
                key = "start" if "start" in bad else "created_at"
                real = datetime.fromisoformat(bad[key].replace("Z", "+00:00"))
                bad[key] = (
                    shifted_time(real, request.malformed, request.now).isoformat().replace("+00:00", "Z")
                )
            elif request.malformed == "timestamp":
                bad["start" if "start" in bad else "created_at"] = "yesterday"
            elif request.malformed == "value" and isinstance(bad.get("score"), dict):
                bad["score"] = {**bad["score"], next(iter(bad["score"])): "abc"}
            else:
                bad.pop("start" if "start" in bad else "cycle_id", None)
            page[len(page) // 2] = bad
        body: dict[str, Any] = {"records": page}
        if offset + limit < len(records):
            body["next_token"] = (
                base64.urlsafe_b64encode(f"{offset + limit}:{fingerprint}".encode()).decode().rstrip("=")
            )
        return json_response(200, body)

    def _single(self, user: int, path: str, now: datetime) -> dict[str, Any] | None:
        """`/v2/activity/sleep/{uuid}`, `/v2/activity/workout/{uuid}`, `/v2/cycle/{id}/recovery` (there is no
        `/v2/recovery/{id}`: a recovery webhook carries the sleep id, its cycle leads to the recovery); 404 for
        a record that does not exist (or was deleted)."""
        parts = path.strip("/").split("/")
        if parts[:3] in (["v2", "activity", "sleep"], ["v2", "activity", "workout"]) and len(parts) == 4:
            collection, wanted = f"activity/{parts[2]}", parts[3]
        elif len(parts) == 4 and parts[:2] == ["v2", "cycle"] and parts[3] == "recovery":
            collection, wanted = "recovery", parts[2]
        else:
            return None
        for record in self._collect(user, collection, datetime(2000, 1, 1, tzinfo=UTC), now, now):
            key = str(record["cycle_id"]) if collection == "recovery" else record["id"]
            if key == wanted:
                return record
        raise HTTPError(404, "No resource found")

    def arrivals(self, user: int, since: datetime, until: datetime) -> list[tuple[str, str]]:
        """The webhooks WHOOP sends for what appeared or changed in (since, until]: `(type, id)` pairs;
        `sleep.updated` / `workout.updated` carry the record's UUID, `recovery.updated` its sleep's UUID."""
        events: list[tuple[str, str]] = []
        low = datetime(2000, 1, 1, tzinfo=UTC)
        for collection, kind in (
            ("activity/sleep", "sleep"),
            ("recovery", "recovery"),
            ("activity/workout", "workout"),
        ):
            before = {self._record_key(r): r for r in self._collect(user, collection, low, since, since)}
            for record in self._collect(user, collection, low, until, until):
                if before.get(self._record_key(record)) != record:
                    events.append((f"{kind}.updated", self._record_key(record)))
        return events

    def delete(self, record_id: str) -> None:
        """The user deleted a sleep or workout (its recovery goes with a sleep): 404 from now on."""
        self.deleted.add(record_id)

    @staticmethod
    def _record_key(record: dict[str, Any]) -> str:
        return str(record.get("sleep_id") or record["id"])

    # ------------------------------------------------------------------------------ data

    def _offset(self, user: int) -> str:
        return OFFSETS[user % len(OFFSETS)]

    def _sleep_window(self, user: int, day: date) -> tuple[datetime, datetime]:
        """The night ending on the morning of local day `day`, as UTC instants."""
        hours = _offset_hours(self._offset(user))
        local_midnight = datetime(day.year, day.month, day.day, tzinfo=UTC) - timedelta(hours=hours)
        onset = local_midnight - timedelta(minutes=90 - 100 * unit_random(self.seed, user, day, "onset"))
        wake = local_midnight + timedelta(
            hours=6, minutes=15 + 90 * unit_random(self.seed, user, day, "wake")
        )
        onset = onset.replace(microsecond=int(unit_random(self.seed, user, day, "ms") * 999) * 1000)
        return onset, wake

    def _state(self, done_at: datetime, now: datetime, unscorable: bool = False) -> str:
        if now < done_at + self.score_delay:
            return "PENDING_SCORE"
        return "UNSCORABLE" if unscorable else "SCORED"

    def _days(self, now: datetime) -> list[date]:
        today = now.date()
        return [today - timedelta(days=n) for n in range(self.history_days, -2, -1)]

    def _collect(
        self, user: int, collection: str, start: datetime, end: datetime, now: datetime
    ) -> list[dict[str, Any]]:
        out: list[tuple[datetime, dict[str, Any]]] = []
        days = self._days(now)
        for day in days:
            onset, wake = self._sleep_window(user, day)
            if collection == "cycle" and onset <= now:
                key = onset
                out.append((key, self._cycle(user, day, onset, now)))
            elif collection == "activity/sleep" and wake <= now:
                out.append((onset, self._sleep(user, day, onset, wake, now)))
            elif collection == "recovery" and wake <= now:
                out.append((onset, self._recovery(user, day, onset, wake, now)))
            elif collection == "activity/workout":
                workout = self._workout(user, day, now)
                if workout is not None:
                    out.append((workout[0], workout[1]))
        hits = [
            record
            for key, record in out
            if start <= key < end and str(record.get("sleep_id") or record.get("id")) not in self.deleted
        ]
        hits.reverse()  # newest first
        return hits

    def _base(self, user: int, day: date, kind: str, moment: datetime, updated: datetime) -> dict[str, Any]:
        return {
            "user_id": self.whoop_user_id(user),
            "created_at": _iso(moment + timedelta(minutes=3)),
            "updated_at": _iso(updated),
        }

    def _cycle_id(self, user: int, day: date) -> int:
        return user * 1_000_000 + day.toordinal() - 730_000

    def _cycle(self, user: int, day: date, onset: datetime, now: datetime) -> dict[str, Any]:
        next_onset, _ = self._sleep_window(user, day + timedelta(days=1))
        closed = next_onset <= now
        state = self._state(onset, now)
        full_strain = 6 + 12 * unit_random(self.seed, user, day, "strain")
        record = {
            "id": self._cycle_id(user, day),
            **self._base(
                user,
                day,
                "cycle",
                onset,
                min(now, next_onset) if not closed else next_onset + self.score_delay,
            ),
            "start": _iso(onset),
            "end": _iso(next_onset) if closed else None,
            "timezone_offset": self._offset(user),
            "score_state": state,
        }
        if state == "SCORED":
            fraction = 1.0 if closed else max(0.05, (now - onset) / (next_onset - onset))
            strain = round(full_strain * fraction, 4)
            record["score"] = {
                "strain": strain,
                "kilojoule": round(7000 + 550 * strain, 2),
                "average_heart_rate": int(58 + 2 * strain),
                "max_heart_rate": int(120 + 3.5 * strain),
            }
        return record

    def _sleep_id(self, user: int, day: date) -> str:
        return str(uuid.uuid5(NAMESPACE, f"{self.seed}:{user}:{day}:sleep"))

    def _sleep(self, user: int, day: date, onset: datetime, wake: datetime, now: datetime) -> dict[str, Any]:
        state = self._state(wake, now, unit_random(self.seed, user, day, "unscorable") < 0.03)
        record = {
            "id": self._sleep_id(user, day),
            "cycle_id": self._cycle_id(user, day),
            "v1_id": None,
            **self._base(
                user, day, "sleep", wake, wake + self.score_delay if state != "PENDING_SCORE" else wake
            ),
            "start": _iso(onset),
            "end": _iso(wake),
            "timezone_offset": self._offset(user),
            "nap": False,
            "score_state": state,
        }
        if state == "SCORED":
            in_bed = int((wake - onset).total_seconds() * 1000)
            awake = int(in_bed * (0.05 + 0.08 * unit_random(self.seed, user, day, "awake")))
            asleep = in_bed - awake
            sws = int(asleep * (0.18 + 0.06 * unit_random(self.seed, user, day, "sws")))
            rem = int(asleep * (0.2 + 0.06 * unit_random(self.seed, user, day, "rem")))
            record["score"] = {
                "stage_summary": {
                    "total_in_bed_time_milli": in_bed,
                    "total_awake_time_milli": awake,
                    "total_no_data_time_milli": 0,
                    "total_light_sleep_time_milli": asleep - sws - rem,
                    "total_slow_wave_sleep_time_milli": sws,
                    "total_rem_sleep_time_milli": rem,
                    "sleep_cycle_count": 3 + int(3 * unit_random(self.seed, user, day, "cycles")),
                    "disturbance_count": int(15 * unit_random(self.seed, user, day, "dist")),
                },
                "sleep_needed": {
                    "baseline_milli": 27_000_000,
                    "need_from_sleep_debt_milli": 600_000,
                    "need_from_recent_strain_milli": 300_000,
                    "need_from_recent_nap_milli": 0,
                },
                "respiratory_rate": round(13 + 4 * unit_random(self.seed, user, day, "rr"), 6),
                "sleep_performance_percentage": round(70 + 30 * unit_random(self.seed, user, day, "perf")),
                "sleep_consistency_percentage": round(60 + 35 * unit_random(self.seed, user, day, "cons")),
                "sleep_efficiency_percentage": round(100 * asleep / in_bed, 6),
            }
        return record

    def _recovery(
        self, user: int, day: date, onset: datetime, wake: datetime, now: datetime
    ) -> dict[str, Any]:
        state = self._state(wake, now)
        record = {
            "cycle_id": self._cycle_id(user, day),
            "sleep_id": self._sleep_id(user, day),
            **self._base(
                user, day, "recovery", wake, wake + self.score_delay if state != "PENDING_SCORE" else wake
            ),
            "score_state": state,
        }
        if state == "SCORED":
            record["score"] = {
                "user_calibrating": False,
                "recovery_score": round(20 + 79 * unit_random(self.seed, user, day, "recovery")),
                "resting_heart_rate": round(48 + 14 * unit_random(self.seed, user, day, "rhr")),
                "hrv_rmssd_milli": round(30 + 70 * unit_random(self.seed, user, day, "hrv"), 6),
                "spo2_percentage": round(94 + 5 * unit_random(self.seed, user, day, "spo2"), 4),
                "skin_temp_celsius": round(33 + 1.5 * unit_random(self.seed, user, day, "skin"), 6),
            }
        return record

    def _workout(self, user: int, day: date, now: datetime) -> tuple[datetime, dict[str, Any]] | None:
        if unit_random(self.seed, user, day, "workout?") >= 0.4:
            return None
        hours = _offset_hours(self._offset(user))
        local_midnight = datetime(day.year, day.month, day.day, tzinfo=UTC) - timedelta(hours=hours)
        start = local_midnight + timedelta(
            hours=17, minutes=int(120 * unit_random(self.seed, user, day, "ws"))
        )
        end = start + timedelta(minutes=30 + int(60 * unit_random(self.seed, user, day, "wd")))
        if end > now:
            return None
        sport_id, sport = SPORTS[int(unit_random(self.seed, user, day, "sport") * len(SPORTS))]
        state = self._state(end, now)
        record = {
            "id": str(uuid.uuid5(NAMESPACE, f"{self.seed}:{user}:{day}:workout")),
            "v1_id": None,
            **self._base(
                user, day, "workout", end, end + self.score_delay if state != "PENDING_SCORE" else end
            ),
            "start": _iso(start),
            "end": _iso(end),
            "timezone_offset": self._offset(user),
            "sport_name": sport,
            "sport_id": sport_id,
            "score_state": state,
        }
        if state == "SCORED":
            strain = round(5 + 12 * unit_random(self.seed, user, day, "wstrain"), 4)
            minutes = (end - start).total_seconds() / 60
            record["score"] = {
                "strain": strain,
                "average_heart_rate": int(115 + 3 * strain),
                "max_heart_rate": int(150 + 2.5 * strain),
                "kilojoule": round(minutes * 40, 2),
                "percent_recorded": 100,
                "distance_meter": round(minutes * 160, 1)
                if sport in ("running", "cycling", "walking")
                else None,
                "altitude_gain_meter": None,
                "altitude_change_meter": None,
                "zone_durations": {
                    f"zone_{z}_milli": int(minutes * 60_000 / 6)
                    for z in ("zero", "one", "two", "three", "four", "five")
                },
            }
        return start, record


def _parse_time(raw: str) -> datetime:
    parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError("no offset")
    return parsed
