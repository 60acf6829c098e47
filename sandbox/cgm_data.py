"""Deterministic, plausible CGM glucose for the Dexcom and LibreLinkUp sandboxes.

A value is a pure function of (seed, provider, user, 5-minute slot): a daily rhythm with a dawn rise, three meal
peaks and small sensor noise, so any window can be served without generating the ones before it, and the same
seed serves the same readings in every process. Each generator draws from sha256 of its parts, never `hash()`.

Some users have the shapes a clinician looks for (chosen by `user % 6`, the same for Dexcom and Libre):
- HYPO_NIGHTS (1): most nights a dip between 02:00 and 04:00 local below 54 mg/dL, one night in four below the
  sensor's 40 mg/dL floor (Dexcom then sends `value: null`, `status: "low"`);
- LONG_HIGHS (3): every afternoon hours above 250, every third day above the sensor's 400 mg/dL ceiling
  (`status: "high"`);
- SENSOR_CHANGES (4): a new sensor every 10 days with a 2-hour warm-up without readings, and signal-loss gaps of
  15 to 75 minutes (`has_reading`); Dexcom serves a new transmitter id per sensor.
Dexcom users 6, 16, ... label their EGVs mmol/L while sending integer mg/dL values (`mislabelled_mmol`).
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime, timedelta
from functools import lru_cache

SLOT = timedelta(minutes=5)
SLOT_SECONDS = 300
EPOCH = datetime(2020, 1, 1, tzinfo=UTC)


def unit_random(*parts: object) -> float:
    """A uniform number in [0, 1) from the parts (stable across processes)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def slot_of(moment: datetime) -> int:
    return int((moment - EPOCH).total_seconds() // SLOT_SECONDS)


def slot_start(slot: int) -> datetime:
    return EPOCH + timedelta(seconds=slot * SLOT_SECONDS)


HYPO_NIGHTS, LONG_HIGHS, SENSOR_CHANGES = 1, 3, 4
SENSOR_DAYS = 10
WARM_UP_SLOTS = 24  # 2 hours (Dexcom G6)
SENSOR_SLOTS = SENSOR_DAYS * 288


def shape(user: int) -> int:
    return user % 6


def mislabelled_mmol(user: int) -> bool:
    return user % 10 == 6


@lru_cache(maxsize=65_536)
def _factor(seed: int, provider: str, user: int, *parts: object) -> float:
    return unit_random(seed, provider, user, *parts)


def true_glucose(seed: int, provider: str, user: int, slot: int, utc_offset_hours: float = 0.0) -> float:
    """The wearer's glucose at a slot, before the sensor clips it to its reporting range."""
    baseline = 95 + 30 * _factor(seed, provider, user, "baseline")
    local_hour = ((slot * 5 / 60) + utc_offset_hours) % 24
    day = int((slot + utc_offset_hours * 12) // 288)
    dawn = 15 * math.exp(-(((local_hour - 6.5) / 1.5) ** 2))
    meals = 0.0
    for meal_hour, size in ((7.5, 45), (12.5, 55), (19.0, 65)):
        since = local_hour - meal_hour
        if 0 <= since < 4:
            meals += (
                size
                * (since / 0.75)
                * math.exp(1 - since / 0.75)
                * (0.6 + 0.8 * unit_random(seed, provider, user, slot // 288, meal_hour))
            )
    noise = 8 * (unit_random(seed, provider, user, slot) - 0.5)
    value = baseline + dawn + meals + noise
    kind = shape(user)
    if kind == HYPO_NIGHTS and day % 3 != 2 and 2.0 <= local_hour < 4.0:
        # A smooth dip to ~48 mg/dL (to ~32, under the sensor's floor, one night in four).
        trough = 32.0 if day % 4 == 0 else 48.0
        depth = math.sin(math.pi * (local_hour - 2.0) / 2.0)
        value = value + (trough - value) * min(1.0, 1.6 * depth)
    elif kind == LONG_HIGHS and 13.0 <= local_hour < 18.0:
        peak = 470.0 if day % 3 == 0 else 290.0
        rise = math.sin(math.pi * (local_hour - 13.0) / 5.0)
        value = value + (peak - value) * min(1.0, 1.4 * rise)
    return value


def glucose_mg_dl(seed: int, provider: str, user: int, slot: int, utc_offset_hours: float = 0.0) -> int:
    """mg/dL at a slot for one user, 40..400 like a sensor's reporting range."""
    return int(round(min(400, max(40, true_glucose(seed, provider, user, slot, utc_offset_hours)))))


def sensor_number(user: int, slot: int) -> int:
    """Which sensor session of the user a slot falls in (only SENSOR_CHANGES users change sensors)."""
    if shape(user) != SENSOR_CHANGES:
        return 0
    return (slot + user * 97) // SENSOR_SLOTS


def has_reading(seed: int, provider: str, user: int, slot: int) -> bool:
    """False in a sensor's warm-up and in signal-loss gaps (SENSOR_CHANGES users only)."""
    if shape(user) != SENSOR_CHANGES:
        return True
    if (slot + user * 97) % SENSOR_SLOTS < WARM_UP_SLOTS:
        return False
    block = slot // 72  # 6-hour blocks: in about a third of them a gap of 3 to 15 slots
    if unit_random(seed, provider, user, "gap", block) < 0.35:
        start = int(unit_random(seed, provider, user, "gap-start", block) * 57)
        length = 3 + int(unit_random(seed, provider, user, "gap-length", block) * 13)
        return not start <= slot % 72 < start + length
    return True
