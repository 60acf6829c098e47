"""Dexcom API v3 client and EGV parsing (provider_apis.md §2).

OAuth stays under `/v2/oauth2/login|token` (scope `offline_access`) even with the v3 data API. EGVs come from
`/v3/users/self/egvs` with `startDate`/`endDate` as UTC without offset (`YYYY-MM-DDThh:mm:ss`), at most 30 days
per request; `systemTime` (UTC) is the key, never `displayTime` (user-settable, sometimes without an offset).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from connections.config import DirectProvidersConfig
from connections.providers.common import (
    as_dict,
    bearer,
    canonical,
    reading_instant,
    warn_invalid,
)
from connections.providers.contract import (
    GLUCOSE_HIGH_MGDL,
    GLUCOSE_LOW_MGDL,
    MGDL_PER_MMOLL,
    RANGE_ABOVE,
    RANGE_BELOW,
    GlucoseRow,
    InvalidPayload,
    InvalidRecord,
)
from connections.providers.oauth2 import OAuthClient

PROVIDER = "dexcom"
SOURCE = "dexcom"
# The reporting range of Dexcom sensors (G6, G7): beyond it the EGV comes with `value: null` and `status`
# `high`/`low`, and the reading is stored at the limit with a range flag (the receivers show HIGH/LOW).
SENSOR_LOW_MGDL, SENSOR_HIGH_MGDL = 40.0, 400.0
# No glucose is above 33 mmol/L (594 mg/dL) on a sensor that stops at 400 mg/dL: a value above it labelled
# mmol/L is an mg/dL value under the wrong label (seen with integer values such as 126).
MMOLL_LABEL_MAX = 33.0
logger = logging.getLogger("loopsync.providers")
MAX_WINDOW = timedelta(days=30)
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"


def dexcom_date(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(DATE_FORMAT)


def windows(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """[start, end] cut into windows of at most 30 days (Dexcom rejects longer ones)."""
    out = []
    cursor = start
    while cursor < end:
        upper = min(end, cursor + MAX_WINDOW)
        out.append((cursor, upper))
        cursor = upper
    return out


class DexcomClient(OAuthClient):
    provider = PROVIDER
    authorize_path = "/v2/oauth2/login"
    token_path = "/v2/oauth2/token"
    scope = "offline_access"

    @classmethod
    def from_config(cls, config: DirectProvidersConfig) -> DexcomClient:
        return cls(config.dexcom_api_url, config.dexcom_client_id, config.dexcom_client_secret)

    def data_range(self, access_token: str) -> dict[str, Any]:
        route = "/v3/users/self/dataRange"
        response = self.http.request("GET", route, headers=bearer(access_token), route=route)
        return as_dict(self.http.decode(route, response.content), "dataRange")

    def egvs(self, access_token: str, start: datetime, end: datetime) -> dict[str, Any]:
        """One window (<= 30 days) of EGVs: the v3 wrapper {recordType, recordVersion, userId, records}."""
        if end - start > MAX_WINDOW:
            raise ValueError("Dexcom windows are at most 30 days")
        route = "/v3/users/self/egvs"
        params = {"startDate": dexcom_date(start), "endDate": dexcom_date(end)}
        response = self.http.request("GET", route, params=params, headers=bearer(access_token), route=route)
        body = as_dict(self.http.decode(route, response.content), "egvs")
        if not isinstance(body.get("records"), list):
            raise InvalidPayload("egvs response has no records list")
        return body


def newest_egv(data_range: dict[str, Any]) -> datetime | None:
    """The end of the user's EGV data (dataRange times are UTC, with or without a zone)."""
    egvs = data_range.get("egvs")
    if not isinstance(egvs, dict) or not isinstance(egvs.get("end"), dict):
        return None
    try:
        # A future end (a broken receiver clock) would start the first sync in the future: treat it as unknown.
        return reading_instant(egvs["end"].get("systemTime"), "egvs.end.systemTime", naive_is_utc=True)
    except InvalidRecord:
        return None


@dataclass
class ParsedGlucose:
    glucose: list[GlucoseRow] = field(default_factory=list)
    skipped: int = 0
    newest: datetime | None = None


def parse_egvs(body: dict[str, Any], out: ParsedGlucose, *, since: datetime | None = None) -> None:
    """EGV records → glucose rows (mg/dL, original value and unit, trend, trend rate, device, range flag)."""
    for index, record in enumerate(body.get("records") or []):
        try:
            if not isinstance(record, dict):
                raise InvalidRecord("record is not an object")
            measured = reading_instant(record.get("systemTime"), "systemTime", naive_is_utc=True)
            unit = str(record.get("unit") or "mg/dL")
            raw = record.get("value")
            status = record.get("status")
            flag = RANGE_ABOVE if status == "high" else RANGE_BELOW if status == "low" else None
            if raw is None and flag is not None:
                # Beyond the sensor's range: Dexcom sends no number, only the direction. Kept at the limit.
                mg_dl = SENSOR_HIGH_MGDL if flag == RANGE_ABOVE else SENSOR_LOW_MGDL
                raw, unit = mg_dl, "mg/dL"
            elif isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
                raise InvalidRecord("value is not a number")
            elif unit.lower() == "mmol/l" and raw > MMOLL_LABEL_MAX:
                # Kept as the mg/dL value it is; logged without the value (PHI).
                logger.warning(
                    "glucose labelled mmol/L read as mg/dL",
                    extra={"provider": PROVIDER, "resource": "egvs", "index": index},
                )
                mg_dl, unit = float(raw), "mg/dL"
            elif unit.lower() == "mmol/l":
                mg_dl = round(float(raw) * MGDL_PER_MMOLL, 1)
            elif unit.lower() in ("mg/dl", "unknown"):
                # Tidepool tolerates "unknown"; v3 values are mg/dL unless the unit says otherwise.
                mg_dl = float(raw)
                unit = "mg/dL"
            else:
                raise InvalidRecord("unit is not mg/dL or mmol/L")
            if not GLUCOSE_LOW_MGDL <= mg_dl <= GLUCOSE_HIGH_MGDL:
                raise InvalidRecord("value is outside the plausible range")
            rate = record.get("trendRate")
            trend_rate = (
                float(rate)
                if isinstance(rate, int | float) and not isinstance(rate, bool) and math.isfinite(rate)
                else None
            )
        except InvalidRecord as exc:
            out.skipped += 1
            warn_invalid(PROVIDER, "egvs", index, exc)
            continue
        if since is not None and measured < since:
            continue
        device = "/".join(
            str(part)
            for part in (record.get("transmitterGeneration"), record.get("displayDevice"))
            if part not in (None, "", "unknown")
        )
        out.glucose.append(
            (
                SOURCE,
                canonical(measured),
                mg_dl,
                float(raw),
                unit[:16],
                str(record.get("trend") or "")[:32],
                trend_rate,
                device[:64],
                flag,
            )
        )
        if out.newest is None or measured > out.newest:
            out.newest = measured
