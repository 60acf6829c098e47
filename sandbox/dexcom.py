"""The Dexcom API v3, simulated (provider_apis.md §2): OAuth under `/v2/oauth2/*`, data under `/v3/users/self/*`.

- `GET /v2/oauth2/login` approves at once; `POST /v2/oauth2/token` exchanges codes and rotates refresh tokens.
- `GET /v3/users/self/egvs?startDate=...&endDate=...`: both required, `YYYY-MM-DDThh:mm:ss` with no offset, read
  as UTC against `systemTime`, inclusive; a window over 30 days, an offset or an end before the start is 400.
- Data delay: readings newer than `now - delay` are not served yet (default 1 h; `delays[user]` overrides).
- `dropped_days` {(user, UTC day)}: days the receiver never uploaded (gaps at the provider itself).
- `GET /v3/users/self/dataRange`: first and last EGV the user has (after the delay).
- Every response is wrapped `{recordType, recordVersion: "3.0", userId, records}`; `userId` is per app.
- 429 past `hourly_limit` calls per app per rolling hour; expired/unknown token 401.

Per-user variety, as real traffic has: phone users (`displayDevice` iOS/android, `displayTime` with an offset),
receiver users (`displayTime` without one), one user in five reporting mmol/L, and receiver users whose
`systemTime` has no seconds (the Tidepool "HACK: Dexcom" case). Beyond the sensor's 40..400 mg/dL range an EGV has
`value: null` and `status` `low`/`high`; users 6, 16, ... label integer mg/dL values mmol/L; SENSOR_CHANGES users have
warm-ups, gaps and a new transmitter per sensor (sandbox/cgm_data.py).
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections import deque
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sandbox import cgm_data
from sandbox.base import HTTPError, Request, Response, json_response
from sandbox.faults import TIME_MODES, shifted_time
from sandbox.oauth import OAuthServer

DEFAULT_CLIENT_ID = "loopsync-dexcom-sandbox"
DEFAULT_CLIENT_SECRET = "dexcom-sandbox-secret"  # noqa: S105 - a sandbox credential, public by design
NAMESPACE = uuid.UUID("6a1d0b7e-3f52-5c1e-9d2a-0f4e8b7c6d13")
MAX_WINDOW = timedelta(days=30)
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"
DEVICES = ("iOS", "android", "receiver")
OFFSETS = (-5.0, 1.0, -8.0, 10.0, 0.0, 9.0)
MGDL_PER_MMOLL = 18.0156


class DexcomSandbox:
    name = "dexcom"
    prefix = "/dexcom"

    def __init__(
        self,
        users: int = 20,
        seed: int = 42,
        *,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        history_days: int = 90,
        delay: timedelta = timedelta(hours=1),
        hourly_limit: int = 60_000,
    ) -> None:
        self.users = users
        self.seed = seed
        self.history_days = history_days
        self.delay = delay
        self.delays: dict[int, timedelta] = {}
        # (user, UTC day) pairs whose readings the receiver never uploaded: gaps at the provider (tests).
        self.dropped_days: set[tuple[int, date]] = set()
        self.hourly_limit = hourly_limit
        self.oauth = OAuthServer(
            client_id=client_id,
            client_secret=client_secret,
            access_ttl=7200,
            users=users,
            required_scope="offline_access",
        )
        self._calls: deque[float] = deque()
        self._calls_lock = threading.Lock()
        # Knobs tests turn; reset() puts them back.
        self._defaults = {"delay": self.delay, "hourly_limit": self.hourly_limit}

    # ------------------------------------------------------------------------------ helpers for tests

    def user_id(self, user: int) -> str:
        """The per-app hashed user id Dexcom puts in every response."""
        return hashlib.sha256(f"{self.seed}:{user}:{self.oauth.client_id}".encode()).hexdigest()[:32]

    def display_device(self, user: int) -> str:
        return DEVICES[user % len(DEVICES)]

    def unit(self, user: int) -> str:
        return "mmol/L" if user % 5 == 0 or cgm_data.mislabelled_mmol(user) else "mg/dL"

    def egvs(
        self, user: int, start: datetime, end: datetime, now: datetime | None = None
    ) -> list[dict[str, Any]]:
        """Exactly the records the egvs endpoint serves for [start, end] at `now` (default: the current time)."""
        return self._records(user, start, end, now or datetime.now(UTC))

    def reset(self) -> None:
        for knob, value in self._defaults.items():
            setattr(self, knob, value)
        self.oauth.reset()
        self.delays.clear()
        self.dropped_days.clear()
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
        try:
            return self._handle(request)
        except HTTPError as exc:
            return json_response(exc.status, {"error": "request_failed", "error_description": exc.detail})

    def _handle(self, request: Request) -> Response:
        path = request.subpath.rstrip("/")
        if path == "/v2/oauth2/login" and request.method == "GET":
            return self.oauth.authorize(request)
        if path == "/v2/oauth2/token" and request.method == "POST":
            return self.oauth.token(request)
        if not path.startswith("/v3/users/self/"):
            raise HTTPError(404, "Not Found")
        if request.method != "GET":
            raise HTTPError(405, "Method Not Allowed")
        self._count_call()
        user = self.oauth.authenticate(request)
        resource = path.rsplit("/", 1)[1]
        if resource == "egvs":
            return self._get_egvs(request, user)
        if resource == "dataRange":
            return self._get_data_range(request, user)
        if resource in ("calibrations", "events", "alerts", "devices"):
            self._window(request)
            return json_response(
                200, self._wrap(resource[:-1] if resource != "alerts" else "alert", user, [])
            )
        raise HTTPError(404, "Not Found")

    # ------------------------------------------------------------------------------ endpoints

    def _count_call(self) -> None:
        moment = time.perf_counter()  # not frozen by time-machine, unlike monotonic
        with self._calls_lock:
            while self._calls and self._calls[0] <= moment - 3600:
                self._calls.popleft()
            if len(self._calls) >= self.hourly_limit:
                raise HTTPError(429, "Too many requests")
            self._calls.append(moment)

    def _window(self, request: Request) -> tuple[datetime, datetime]:
        raw_start, raw_end = request.query.get("startDate"), request.query.get("endDate")
        if not raw_start or not raw_end:
            raise HTTPError(400, "startDate and endDate are required")
        try:
            start = datetime.strptime(raw_start, DATE_FORMAT).replace(tzinfo=UTC)
            end = datetime.strptime(raw_end, DATE_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            raise HTTPError(
                400, "startDate and endDate must be YYYY-MM-DDThh:mm:ss in UTC, without offset"
            ) from None
        if end <= start:
            raise HTTPError(400, "endDate must be after startDate")
        if end - start > MAX_WINDOW:
            raise HTTPError(400, "The maximum time window is 30 days")
        return start, end

    def _get_egvs(self, request: Request, user: int) -> Response:
        start, end = self._window(request)
        records = self._records(user, start, end, request.now)
        if request.malformed and records:
            bad = dict(records[len(records) // 2])
            if request.malformed in TIME_MODES:
                real = datetime.fromisoformat(bad["systemTime"]).replace(tzinfo=UTC)
                shifted = shifted_time(real, request.malformed, request.now)
                bad["systemTime"] = shifted.replace(tzinfo=None).isoformat(timespec="seconds")
                bad["displayTime"] = bad["systemTime"]
            elif request.malformed == "timestamp":
                bad["systemTime"] = "not-a-time"
            elif request.malformed == "value":
                bad["value"] = "abc"
            else:
                bad.pop("systemTime")
            records[len(records) // 2] = bad
        return json_response(200, self._wrap("egv", user, records))

    def _get_data_range(self, request: Request, user: int) -> Response:
        first, last = self._available(user, request.now)
        body: dict[str, Any] = {
            "recordType": "dataRange",
            "recordVersion": "3.0",
            "userId": self.user_id(user),
        }
        if first is None or last is None:
            body.update({"calibrations": None, "egvs": None, "events": None})
            return json_response(200, body)
        offset = timedelta(hours=OFFSETS[user % len(OFFSETS)])
        body["egvs"] = {
            "start": {
                "systemTime": first.strftime(DATE_FORMAT),
                "displayTime": (first + offset).strftime(DATE_FORMAT),
            },
            "end": {
                "systemTime": last.strftime(DATE_FORMAT),
                "displayTime": (last + offset).strftime(DATE_FORMAT),
            },
        }
        body["calibrations"] = None
        body["events"] = None
        return json_response(200, body)

    # ------------------------------------------------------------------------------ data

    def _wrap(self, record_type: str, user: int, records: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "recordType": record_type,
            "recordVersion": "3.0",
            "userId": self.user_id(user),
            "records": records,
        }

    def _available(self, user: int, now: datetime) -> tuple[datetime | None, datetime | None]:
        newest = now - self.delays.get(user, self.delay)
        first_slot = cgm_data.slot_of(now - timedelta(days=self.history_days)) + 1
        last_slot = cgm_data.slot_of(newest)
        if last_slot < first_slot:
            return None, None
        return self._time_of(user, first_slot), self._time_of(user, last_slot)

    def _time_of(self, user: int, slot: int) -> datetime:
        # Receivers report whole minutes (their systemTime has no seconds); phones a per-user second offset.
        seconds = (
            0
            if self.display_device(user) == "receiver"
            else int(cgm_data.unit_random(self.seed, user, "s") * 59)
        )
        return cgm_data.slot_start(slot) + timedelta(seconds=seconds)

    def _records(self, user: int, start: datetime, end: datetime, now: datetime) -> list[dict[str, Any]]:
        first, last = self._available(user, now)
        if first is None or last is None:
            return []
        lo = max(cgm_data.slot_of(start) - 1, cgm_data.slot_of(first))
        hi = min(cgm_data.slot_of(end), cgm_data.slot_of(last))
        device = self.display_device(user)
        offset_hours = OFFSETS[user % len(OFFSETS)]
        offset = timedelta(hours=offset_hours)
        mmol = self.unit(user) == "mmol/L"
        generation = ("g6", "g7", "g6+", "g7")[user % 4]
        mislabelled = cgm_data.mislabelled_mmol(user)
        records = []
        previous = cgm_data.glucose_mg_dl(self.seed, "dexcom", user, lo - 1, offset_hours)
        for slot in range(lo, hi + 1):
            value = cgm_data.glucose_mg_dl(self.seed, "dexcom", user, slot, offset_hours)
            moment = self._time_of(user, slot)
            if (
                not start <= moment <= end
                or not cgm_data.has_reading(self.seed, "dexcom", user, slot)
                or (user, moment.date()) in self.dropped_days
            ):
                previous = value
                continue
            true = cgm_data.true_glucose(self.seed, "dexcom", user, slot, offset_hours)
            status = "high" if true > 400 else "low" if true < 40 else None
            sensor = cgm_data.sensor_number(user, slot)
            transmitter = hashlib.sha256(
                f"{self.seed}:{user}:tx".encode() + (f":{sensor}".encode() if sensor else b"")
            ).hexdigest()
            rate = round((value - previous) / 5, 1)
            if device == "receiver":
                system_time = moment.strftime("%Y-%m-%dT%H:%MZ")  # no seconds
                display_time = (moment + offset).strftime("%Y-%m-%dT%H:%M:%S")
            else:
                system_time = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
                sign = "+" if offset_hours >= 0 else "-"
                hours = abs(int(offset_hours))
                display_time = (moment + offset).strftime("%Y-%m-%dT%H:%M:%S") + f"{sign}{hours:02d}:00"
            records.append(
                {
                    "recordId": str(uuid.uuid5(NAMESPACE, f"{self.seed}:{user}:{slot}")),
                    "systemTime": system_time,
                    "displayTime": display_time,
                    "transmitterId": transmitter,
                    "transmitterTicks": 1_000_000 + slot % 10_000_000,
                    "value": None
                    if status
                    else value
                    if mislabelled or not mmol
                    else round(value / MGDL_PER_MMOLL, 1),
                    "status": status,
                    "trend": _trend(rate),
                    "trendRate": round(rate / MGDL_PER_MMOLL, 2) if mmol else rate,
                    "unit": "mmol/L" if mmol else "mg/dL",
                    "rateUnit": "mmol/L/min" if mmol else "mg/dL/min",
                    "displayDevice": device,
                    "transmitterGeneration": generation,
                }
            )
            previous = value
        return records


def _trend(rate: float) -> str:
    if rate >= 3:
        return "doubleUp"
    if rate >= 2:
        return "singleUp"
    if rate >= 1:
        return "fortyFiveUp"
    if rate > -1:
        return "flat"
    if rate > -2:
        return "fortyFiveDown"
    if rate > -3:
        return "singleDown"
    return "doubleDown"
