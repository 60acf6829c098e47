"""LibreLinkUp (the unofficial FreeStyle Libre follower API) client and graph parsing (provider_apis.md §3).

Login with email/password on the global host; a `redirect: true` answer names the account's region, and the
client logs in again on `api-{region}` (as DiaKEM's client does). Every request carries `product` and `version`
(a config value: LibreLinkUp raises its minimum from time to time and answers 403 `{"status": 920}` to older
ones); after login also `Authorization: Bearer <authTicket.token>` and `account-id: sha256_hex(user.id)`.
`FactoryTimestamp` is UTC and is the key; `Timestamp` is the wearer's wall clock, never used.
"""

from __future__ import annotations

import hashlib
import math
import threading
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from connections.config import DirectProvidersConfig
from connections.providers.base import ProviderHTTP, ProviderRequestError
from connections.providers.common import as_dict, canonical, http_for, warn_invalid
from connections.providers.contract import (
    GLUCOSE_HIGH_MGDL,
    GLUCOSE_LOW_MGDL,
    MGDL_PER_MMOLL,
    CredentialsRefused,
    GlucoseRow,
    InvalidPayload,
    InvalidRecord,
    plausible_instant,
)

PROVIDER = "libre"
# Our own name for the direct route, not Junction's `freestyle_libre` slug: the glucose key is (patient, source,
# measured_at), so sharing the slug made a direct and a relayed copy of one instant a single row whose value
# flipped with every sync of either route. Two names keep both copies; source resolution picks the one counted.
SOURCE = "librelinkup"
TREND_ARROWS = {1: "singleDown", 2: "fortyFiveDown", 3: "flat", 4: "fortyFiveUp", 5: "singleUp"}


class LibreLoginRefused(CredentialsRefused):
    """Credentials rejected (status 2) or an action is required in the app (status 4): the patient must act."""


class LibreVersionRejected(ProviderRequestError):
    """403 status 920: LIBRE_VERSION is below the server's minimum; an operator must raise it."""


@dataclass(frozen=True)
class LibreSession:
    token: str = field(repr=False)
    expires_at: datetime
    user_id: str
    region: str

    @property
    def account_id(self) -> str:
        return hashlib.sha256(self.user_id.encode()).hexdigest()


class LibreClient:
    provider = PROVIDER

    def __init__(self, config: DirectProvidersConfig) -> None:
        self.config = config
        self._headers = {
            "product": config.libre_product,
            "version": config.libre_version,
            "content-type": "application/json",
            "cache-control": "no-cache",
        }
        self._hosts: dict[str, ProviderHTTP] = {}
        self._hosts_lock = threading.Lock()

    def close(self) -> None:
        for http in self._hosts.values():
            http.close()

    def __enter__(self) -> LibreClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def host(self, region: str) -> ProviderHTTP:
        """The global host for "" (and for "us", which it serves), else api-{region}."""
        key = "" if region in ("", "us") else region
        with self._hosts_lock:
            return self._host(key)

    def _host(self, key: str) -> ProviderHTTP:
        http = self._hosts.get(key)
        if http is None:
            url = (
                self.config.libre_regional_url_template.format(region=key)
                if key
                else self.config.libre_api_url
            )
            http = self._hosts[key] = http_for(PROVIDER, url, headers=self._headers)
        return http

    def _call(self, region: str, method: str, path: str, *, route: str, **kwargs: Any) -> dict[str, Any]:
        http = self.host(region)
        response = http.request(method, path, route=route, accept=frozenset({403}), **kwargs)
        body = as_dict(http.decode(route, response.content), route)
        if response.status_code == 403:
            if body.get("status") == 920:
                raise LibreVersionRejected(
                    PROVIDER,
                    f"{method} {route} answered 403 status 920 (LIBRE_VERSION is too old)",
                    status=403,
                )
            raise ProviderRequestError(PROVIDER, f"{method} {route} answered 403", status=403)
        return body

    def login(self, email: str, password: str, region: str = "") -> LibreSession:
        # LibreLinkUp locks an account after 3 failed logins in 60 s: the shared login guard refuses a login
        # (with the wait) once 2 of this account's logins failed within the minute, whichever worker sent them.
        guard = getattr(self.host(region).gate, "guard_login", None)
        with guard(email) if guard is not None else nullcontext():
            body = self._call(
                region,
                "POST",
                "/llu/auth/login",
                route="/llu/auth/login",
                json={"email": email, "password": password},
                idempotent=True,  # a login has no side effect a retry could double
            )
            data = body.get("data") if isinstance(body.get("data"), dict) else {}
            status = body.get("status")
            if status == 2:
                raise LibreLoginRefused(PROVIDER, "login refused: the email or password is wrong", status=200)
            if status == 4:
                step = (
                    (data.get("step") or {}).get("type", "unknown")
                    if isinstance(data.get("step"), dict)
                    else "unknown"
                )
                raise LibreLoginRefused(
                    PROVIDER, f"login needs an action in the LibreLinkUp app ({str(step)[:20]})", status=200
                )
        if status == 0 and data.get("redirect"):
            target = str(data.get("region") or "")
            if not target or target == region or region not in ("", "us"):
                raise InvalidPayload("LibreLinkUp redirected the login more than once")
            return self.login(email, password, target)
        ticket = data.get("authTicket")
        user = data.get("user")
        if (
            status != 0
            or not isinstance(ticket, dict)
            or not isinstance(user, dict)
            or not ticket.get("token")
        ):
            raise InvalidPayload("LibreLinkUp login answered without an authTicket")
        try:
            expires = datetime.fromtimestamp(int(ticket["expires"]), tz=UTC)
        except (KeyError, TypeError, ValueError):
            raise InvalidPayload("LibreLinkUp authTicket has no expires") from None
        return LibreSession(str(ticket["token"]), expires, str(user.get("id") or ""), region or "us")

    def _auth(self, session: LibreSession) -> dict[str, str]:
        return {"authorization": f"Bearer {session.token}", "account-id": session.account_id}

    def connections(self, session: LibreSession) -> list[dict[str, Any]]:
        body = self._call(
            session.region,
            "GET",
            "/llu/connections",
            route="/llu/connections",
            headers=self._auth(session),
            account=session.account_id,
        )
        data = body.get("data")
        if not isinstance(data, list):
            raise InvalidPayload("connections response has no data list")
        return [c for c in data if isinstance(c, dict)]

    def graph(self, session: LibreSession, patient_id: str) -> dict[str, Any]:
        route = "/llu/connections/{patientId}/graph"
        body = self._call(
            session.region,
            "GET",
            f"/llu/connections/{patient_id}/graph",
            route=route,
            headers=self._auth(session),
            account=session.account_id,
        )
        if body.get("status") == 4:
            raise ProviderRequestError(PROVIDER, "graph: couldNotLoadPatient", status=200)
        data = body.get("data")
        if (
            body.get("status") != 0
            or not isinstance(data, dict)
            or not isinstance(data.get("graphData"), list)
        ):
            raise InvalidPayload("graph response has no graphData list")
        return data


def parse_factory_timestamp(raw: object) -> datetime:
    """`M/D/YYYY h:mm:ss AM` (UTC). Hand-parsed: strptime was most of a 30-minute run's parsing time."""
    if not isinstance(raw, str) or not raw:
        raise InvalidRecord("FactoryTimestamp is missing")
    try:
        date_part, clock, meridiem = raw.split(" ")
        month, day, year = date_part.split("/")
        hour, minute, second = clock.split(":")
        h = int(hour)
        if meridiem not in ("AM", "PM") or not 1 <= h <= 12:
            raise ValueError(meridiem)
        h = h % 12 + (12 if meridiem == "PM" else 0)
        moment = datetime(int(year), int(month), int(day), h, int(minute), int(second), tzinfo=UTC)
    except ValueError:
        raise InvalidRecord("FactoryTimestamp is not M/D/YYYY h:mm:ss AM") from None
    return plausible_instant(moment, "FactoryTimestamp")


@dataclass
class ParsedLibre:
    glucose: list[GlucoseRow] = field(default_factory=list)
    skipped: int = 0
    newest: datetime | None = None


def parse_graph(data: dict[str, Any], *, since: datetime | None, device: str = "") -> ParsedLibre:
    """graphData (+ the current measurement, which carries the trend arrow) → glucose rows."""
    out = ParsedLibre()
    connection = data.get("connection") if isinstance(data.get("connection"), dict) else {}
    current = connection.get("glucoseMeasurement")
    items: list[Any] = list(data.get("graphData") or [])
    if isinstance(current, dict):
        items.append(current)
    sensor = connection.get("sensor") if isinstance(connection.get("sensor"), dict) else {}
    device = device or ("libre" + (f"/{sensor.get('pt')}" if sensor.get("pt") is not None else ""))
    by_time: dict[str, GlucoseRow] = {}
    for index, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise InvalidRecord("item is not an object")
            measured = parse_factory_timestamp(item.get("FactoryTimestamp"))
            mg = item.get("ValueInMgPerDl")
            if isinstance(mg, bool) or not isinstance(mg, int | float) or not math.isfinite(mg):
                raise InvalidRecord("ValueInMgPerDl is not a number")
            if not GLUCOSE_LOW_MGDL <= mg <= GLUCOSE_HIGH_MGDL:
                raise InvalidRecord("ValueInMgPerDl is outside the plausible range")
            mmol = item.get("GlucoseUnits") == 0
            shown = item.get("Value")
            if isinstance(shown, int | float) and not isinstance(shown, bool) and math.isfinite(shown):
                original, unit = float(shown), "mmol/L" if mmol else "mg/dL"
            else:
                original, unit = float(mg), "mg/dL"
            if mmol and not GLUCOSE_LOW_MGDL <= original * MGDL_PER_MMOLL <= GLUCOSE_HIGH_MGDL + 20:
                raise InvalidRecord("Value does not match ValueInMgPerDl")
        except InvalidRecord as exc:
            out.skipped += 1
            warn_invalid(PROVIDER, "graph", index, exc)
            continue
        if since is not None and measured < since:
            continue
        arrow = item.get("TrendArrow")
        if "TrendArrow" in item and not (isinstance(arrow, int) and not isinstance(arrow, bool)):
            # The reading is good; only its arrow is unreadable: kept without one, the arrow's field named.
            warn_invalid(PROVIDER, "graph", index, InvalidRecord("TrendArrow is not a number"))
            arrow = None
        trend = TREND_ARROWS.get(arrow, "notComputable") if "TrendArrow" in item else ""
        at = canonical(measured)
        by_time[at] = (SOURCE, at, float(mg), original, unit, trend, None, device[:64])
        if out.newest is None or measured > out.newest:
            out.newest = measured
    out.glucose = list(by_time.values())
    return out
