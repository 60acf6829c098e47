"""Deterministic, plausible CGM glucose for the Dexcom and LibreLinkUp sandboxes.

A value is a pure function of (seed, provider, user, 5-minute slot): a daily rhythm with a dawn rise, three meal
peaks and small sensor noise, so any window can be served without generating the ones before it, and the same
seed serves the same readings in every process. Each generator draws from sha256 of its parts, never `hash()`.
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


@lru_cache(maxsize=65_536)
def _factor(seed: int, provider: str, user: int, *parts: object) -> float:
    return unit_random(seed, provider, user, *parts)


def glucose_mg_dl(seed: int, provider: str, user: int, slot: int, utc_offset_hours: float = 0.0) -> int:
    """mg/dL at a slot for one user, 40..400 like a sensor's reporting range."""
    baseline = 95 + 30 * _factor(seed, provider, user, "baseline")
    local_hour = ((slot * 5 / 60) + utc_offset_hours) % 24
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
    return int(round(min(400, max(40, baseline + dawn + meals + noise))))
