"""LibreLinkUp, the unofficial FreeStyle Libre follower API, simulated (provider_apis.md §3).

Hosts: `/libre` is the global host (`api.libreview.io`, which serves the "us" region), `/libre/api-{region}` the
regional ones (`api-{region}.libreview.io`). Every request needs `product` (llu.android | llu.ios) and a
`version` at or above `min_version`, else 403 `{"data": {"minimumVersion": ...}, "status": 920}`.

- `POST /llu/auth/login {"email", "password"}`: success (`status: 0` with `user` and `authTicket`); the wrong
  region's host answers `{"status": 0, "data": {"redirect": true, "region": "eu2"}}`; bad credentials are HTTP 200
  `{"status": 2, ...}`; three failures lock the account for 300 s (429 `"message": "locked"`); a user who must
  accept new terms gets `status: 4` with a `step`.
- After login: `Authorization: Bearer <ticket>` and `account-id: sha256_hex(user.id)` (else
  `{"message": "RequiredHeaderMissing"}`); an expired or unknown ticket is 401.
- `GET /llu/connections`: the one patient this account follows. `GET /llu/connections/{patientId}/graph`: about
  the last 12 hours at 5-minute spacing, `FactoryTimestamp` in UTC and `Timestamp` in the wearer's local time,
  both `%m/%d/%Y %I:%M:%S %p`; the current reading with its `TrendArrow` in `connection.glucoseMeasurement`.
- Heavy polling: more than `poll_limit` requests per account in `poll_window` seconds is 429 with Retry-After.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from sandbox import cgm_data
from sandbox.base import HTTPError, Request, Response, json_response
from sandbox.faults import TIME_MODES, shifted_time

NAMESPACE = uuid.UUID("0b8e2f4c-7d31-5a6e-b2c9-1e3f5a7d9c24")
REGIONS = ("us", "eu", "eu2", "de", "ca", "ap")
OFFSETS = (-5.0, 0.0, 1.0, 1.0, -8.0, 10.0)
TICKET_DURATION_MS = 15_552_000_000  # 180 days
GRAPH_HOURS = 12
TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"
MIN_VERSION = "4.16.0"
LOCKOUT_SECONDS = 300
MAX_FAILURES = 3
MGDL_PER_MMOLL = 18.0156


@dataclass(frozen=True)
class LibreUser:
    index: int
    user_id: str
    patient_id: str
    email: str
    password: str
    region: str
    utc_offset_hours: float
    mg_dl: bool
    sensor_serial: str


def _version(raw: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in raw.strip().split("."))
    except ValueError:
        return (0,)


def _fmt(moment: datetime) -> str:
    # Windows-style: hours without a leading zero ("4:47:40 PM"), as the real payloads show.
    text = moment.strftime(TIME_FORMAT)
    month, day, rest = text.split("/", 2)
    year, clock, ampm = rest.split(" ")
    return f"{int(month)}/{int(day)}/{year} {clock.lstrip('0') or '0'} {ampm}"


def _parse_fmt(text: str) -> datetime:
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)


class LibreSandbox:
    name = "libre"
    prefix = "/libre"

    def __init__(
        self,
        users: int = 20,
        seed: int = 42,
        *,
        min_version: str = MIN_VERSION,
        poll_limit: int = 30,
        poll_window: float = 60.0,
    ) -> None:
        self.seed = seed
        self.min_version = min_version
        self.poll_limit = poll_limit
        self.poll_window = poll_window
        self.users = [self._make_user(i) for i in range(1, users + 1)]
        self._by_email = {u.email: u for u in self.users}
        self._by_id = {u.user_id: u for u in self.users}
        self.terms_pending: set[int] = set()
        self._lock = threading.Lock()
        self._tickets: dict[str, tuple[int, datetime]] = {}
        self._failures: dict[str, list[float]] = {}
        self._locked_until: dict[str, float] = {}
        self._polls: dict[int, list[float]] = {}
        self.logins = 0
        # Knobs tests turn; reset() puts them back.
        self._defaults = {
            "min_version": self.min_version,
            "poll_limit": self.poll_limit,
            "poll_window": self.poll_window,
        }

    def _make_user(self, i: int) -> LibreUser:
        region = REGIONS[i % len(REGIONS)]
        return LibreUser(
            index=i,
            user_id=str(uuid.uuid5(NAMESPACE, f"{self.seed}:{i}:user")),
            patient_id=str(uuid.uuid5(NAMESPACE, f"{self.seed}:{i}:patient")),
            email=f"libre{i}@sandbox.loopsync.test",
            password=f"sandbox-password-{i}",
            region=region,
            utc_offset_hours=OFFSETS[i % len(OFFSETS)],
            mg_dl=i % 4 != 0,
            sensor_serial=f"0{i:08d}",
        )

    # ------------------------------------------------------------------------------ helpers for tests

    def user(self, index: int) -> LibreUser:
        return self.users[index - 1]

    def expire_tickets(self, index: int | None = None) -> int:
        past = datetime(2000, 1, 1, tzinfo=UTC)
        with self._lock:
            hit = [t for t, (u, _) in self._tickets.items() if index is None or u == index]
            for token in hit:
                self._tickets[token] = (self._tickets[token][0], past)
        return len(hit)

    def graph_points(self, index: int, now: datetime | None = None) -> list[dict[str, Any]]:
        return self._graph(self.user(index), now or datetime.now(UTC))[0]

    def reset(self) -> None:
        for knob, value in self._defaults.items():
            setattr(self, knob, value)
        with self._lock:
            self._failures.clear()
            self._locked_until.clear()
            self._polls.clear()
            self.terms_pending.clear()
            self.logins = 0

    # ------------------------------------------------------------------------------ provider protocol

    def user_id_for(self, method: str, subpath: str) -> str | None:
        return None

    def user_id_from_headers(self, headers: dict[str, str]) -> str | None:
        token = headers.get("authorization", "").partition(" ")[2].strip()
        with self._lock:
            found = self._tickets.get(token)
        return str(found[0]) if found else None

    def handle(self, request: Request) -> Response:
        try:
            return self._handle(request)
        except HTTPError as exc:
            body = exc.detail if isinstance(exc.detail, dict) else {"message": exc.detail}
            return json_response(exc.status, body, exc.headers)

    def _handle(self, request: Request) -> Response:
        path = request.subpath
        region = "us"
        if path.startswith("/api-"):
            head, _, rest = path[1:].partition("/")
            region = head[len("api-") :]
            path = "/" + rest
            if region not in REGIONS:
                raise HTTPError(404, "Not Found")
        path = path.rstrip("/")
        product = request.headers.get("product", "")
        if product not in ("llu.android", "llu.ios"):
            raise HTTPError(403, {"status": 920, "data": {"minimumVersion": self.min_version}})
        if _version(request.headers.get("version", "")) < _version(self.min_version):
            raise HTTPError(403, {"status": 920, "data": {"minimumVersion": self.min_version}})
        if path == "/llu/auth/login" and request.method == "POST":
            return self._login(request, region)
        if path == "/llu/config/country" and request.method == "GET":
            return json_response(
                200, {"status": 0, "data": {"regionalMap": {r: {"lslApi": f"api-{r}"} for r in REGIONS}}}
            )
        user = self._authenticate(request)
        if user.region != region:
            raise HTTPError(401, {"message": "InvalidCredentials"})
        self._count_poll(user)
        if path == "/llu/connections" and request.method == "GET":
            return json_response(
                200,
                {
                    "status": 0,
                    "data": [self._connection(user, request.now)],
                    "ticket": self._ticket_for(user, request),
                },
            )
        parts = path.split("/")
        if (
            len(parts) == 5
            and parts[1:3] == ["llu", "connections"]
            and parts[4] == "graph"
            and request.method == "GET"
        ):
            if parts[3] != user.patient_id:
                return json_response(200, {"status": 4, "error": {"message": "couldNotLoadPatient"}})
            points, current = self._graph(user, request.now)
            if request.malformed and points:
                bad = dict(points[len(points) // 2])
                if request.malformed in TIME_MODES:
                    real = _parse_fmt(bad["FactoryTimestamp"])
                    bad["FactoryTimestamp"] = _fmt(shifted_time(real, request.malformed, request.now))
                    bad["Timestamp"] = bad["FactoryTimestamp"]
                elif request.malformed == "timestamp":
                    bad["FactoryTimestamp"] = "13/45/2026 99:00:00 XM"
                elif request.malformed == "value":
                    bad["ValueInMgPerDl"] = "abc"
                else:
                    bad.pop("FactoryTimestamp")
                points[len(points) // 2] = bad
            connection = self._connection(user, request.now, current)
            body = {
                "status": 0,
                "data": {
                    "connection": connection,
                    "activeSensors": [
                        {"sensor": connection["sensor"], "device": connection["patientDevice"]}
                    ],
                    "graphData": points,
                },
                "ticket": self._ticket_for(user, request),
            }
            return Response(200, orjson.dumps(body))
        raise HTTPError(404, "Not Found")

    # ------------------------------------------------------------------------------ auth

    def _login(self, request: Request, region: str) -> Response:
        try:
            body = orjson.loads(request.body or b"{}")
        except orjson.JSONDecodeError:
            raise HTTPError(400, "body must be JSON") from None
        email = str(body.get("email", "")).strip().lower()
        moment = time.perf_counter()  # not frozen by time-machine, unlike monotonic
        with self._lock:
            if self._locked_until.get(email, 0) > moment:
                raise HTTPError(
                    429,
                    {
                        "status": 429,
                        "data": {
                            "code": 60,
                            "data": {"failures": MAX_FAILURES, "interval": 60, "lockout": LOCKOUT_SECONDS},
                            "message": "locked",
                        },
                    },
                    [("Retry-After", str(int(self._locked_until[email] - moment) + 1))],
                )
            user = self._by_email.get(email)
            if user is None or not secrets.compare_digest(str(body.get("password", "")), user.password):
                failures = [t for t in self._failures.get(email, []) if t > moment - 60] + [moment]
                self._failures[email] = failures
                if len(failures) >= MAX_FAILURES:
                    self._locked_until[email] = moment + LOCKOUT_SECONDS
                return json_response(200, {"status": 2, "error": {"message": "notAuthenticated"}})
            self._failures.pop(email, None)
        if user.region != region:
            return json_response(200, {"status": 0, "data": {"redirect": True, "region": user.region}})
        if user.index in self.terms_pending:
            return json_response(
                200,
                {
                    "status": 4,
                    "data": {"step": {"type": "tou", "componentName": "AcceptDocument", "props": {}}},
                },
            )
        token = "eyJ" + secrets.token_urlsafe(40)
        expires = request.now + timedelta(milliseconds=TICKET_DURATION_MS)
        with self._lock:
            self._tickets[token] = (user.index, expires)
            self.logins += 1
        return json_response(
            200,
            {
                "status": 0,
                "data": {
                    "user": {
                        "id": user.user_id,
                        "country": user.region.upper()[:2],
                        "uom": "1" if user.mg_dl else "0",
                    },
                    "messages": {},
                    "notifications": {},
                    "authTicket": {
                        "token": token,
                        "expires": int(expires.timestamp()),
                        "duration": TICKET_DURATION_MS,
                    },
                    "invitations": None,
                },
            },
        )

    def _authenticate(self, request: Request) -> LibreUser:
        token = request.headers.get("authorization", "").partition(" ")[2].strip()
        with self._lock:
            found = self._tickets.get(token)
        if found is None or found[1] <= request.now:
            raise HTTPError(401, {"message": "InvalidCredentials"})
        user = self.users[found[0] - 1]
        expected = hashlib.sha256(user.user_id.encode()).hexdigest()
        if request.headers.get("account-id") != expected:
            raise HTTPError(400, {"message": "RequiredHeaderMissing"})
        return user

    def _ticket_for(self, user: LibreUser, request: Request) -> dict[str, Any]:
        token = request.headers.get("authorization", "").partition(" ")[2].strip()
        with self._lock:
            expires = self._tickets[token][1]
        return {"token": token, "expires": int(expires.timestamp()), "duration": TICKET_DURATION_MS}

    def _count_poll(self, user: LibreUser) -> None:
        moment = time.perf_counter()  # not frozen by time-machine, unlike monotonic
        with self._lock:
            recent = [t for t in self._polls.get(user.index, []) if t > moment - self.poll_window]
            if len(recent) >= self.poll_limit:
                self._polls[user.index] = recent
                wait = int(recent[0] + self.poll_window - moment) + 1
                raise HTTPError(429, {"message": "Too Many Requests"}, [("Retry-After", str(wait))])
            recent.append(moment)
            self._polls[user.index] = recent

    # ------------------------------------------------------------------------------ data

    def _item(self, user: LibreUser, slot: int, kind: int) -> dict[str, Any]:
        moment = cgm_data.slot_start(slot) + timedelta(seconds=40 + user.index % 15)
        value = cgm_data.glucose_mg_dl(self.seed, "libre", user.index, slot, user.utc_offset_hours)
        local = moment + timedelta(hours=user.utc_offset_hours)
        shown = value if user.mg_dl else round(value / MGDL_PER_MMOLL, 1)
        return {
            "FactoryTimestamp": _fmt(moment),
            "Timestamp": _fmt(local),
            "type": kind,
            "ValueInMgPerDl": value,
            "MeasurementColor": 1 if 70 <= value <= 180 else 2,
            "GlucoseUnits": 1 if user.mg_dl else 0,
            "Value": shown,
            "isHigh": value > 250,
            "isLow": value < 70,
        }

    def _graph(self, user: LibreUser, now: datetime) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        newest = cgm_data.slot_of(now - timedelta(seconds=40 + user.index % 15))
        first = newest - GRAPH_HOURS * 12 + 1
        points = [self._item(user, slot, 0) for slot in range(first, newest)]
        current = self._item(user, newest, 1)
        previous = cgm_data.glucose_mg_dl(self.seed, "libre", user.index, newest - 3, user.utc_offset_hours)
        delta = current["ValueInMgPerDl"] - previous  # over 15 minutes
        current["TrendArrow"] = (
            5 if delta > 30 else 4 if delta > 15 else 3 if delta >= -15 else 2 if delta >= -30 else 1
        )
        current["TrendMessage"] = None
        return points, current

    def _connection(
        self, user: LibreUser, now: datetime, current: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        if current is None:
            current = self._graph(user, now)[1]
        return {
            "id": str(uuid.uuid5(NAMESPACE, f"{self.seed}:{user.index}:connection")),
            "patientId": user.patient_id,
            "country": user.region.upper()[:2],
            "status": 2,
            "firstName": "Sandbox",
            "lastName": f"Patient {user.index}",
            "targetLow": 70,
            "targetHigh": 180,
            "uom": 1 if user.mg_dl else 0,
            "sensor": {
                "deviceId": "",
                "sn": user.sensor_serial,
                "a": 1700000000,
                "w": 60,
                "pt": 4,
                "s": False,
                "lj": False,
            },
            "glucoseMeasurement": current,
            "glucoseItem": current,
            "patientDevice": {
                "did": f"device-{user.index}",
                "dtid": 40068,
                "v": "3.6.5",
                "ll": 70,
                "hl": 250,
                "u": 0,
            },
            "created": 1700000000,
        }
