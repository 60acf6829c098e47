"""Deterministic, physiologically plausible wearable and CGM data for the Junction sandbox.

Everything here is a pure function of (seed, user index, local date, resource): each generator draws from its
own `random.Random` seeded with a sha256 of those parts (never `hash()`, which is salted per process), so the
same seed serves byte-identical data in every process and on every run. Generated days are cached with
`functools.lru_cache`, so paging through a range costs a slice, not a regeneration.

The model, per user and local day D (in the user's fallback time zone):
- `night(D)` is the sleep that ends on the morning of D (bedtime ~22:30-00:30 on D-1, wake ~06:00-08:00 on D).
  Its minute heart rate and 5-minute HRV / respiratory rate / SpO2 are generated once per night, and the day
  series take the part that falls on their day, so the sleep summary's hr_lowest, average_hrv, ... are computed
  from exactly the samples the timeseries serve.
- `day_plan(D)`: wake/bed times, an optional workout (about every third day), a step target, meals, a weigh-in.
- Steps and active calories come in 15-minute intervals (zero while asleep), heart rate every minute (higher with
  steps and during the workout), glucose every 5 minutes for users with a CGM (meal peaks, dawn rise).
- Summaries (sleep, activity, workouts, body) are derived from the plan and the series, so totals agree.

"Now" is not part of the cache key: full days are generated and cached, and the provider cuts them at request
time (nothing after now is served; today is partial).
"""

from __future__ import annotations

import hashlib
import math
import random
import threading
import uuid
from array import array
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

# Fixed forever: every user id, record id and device id is derived from it, so changing it would change all
# ids the sync has stored.
NAMESPACE = uuid.UUID("3c8f6f0e-2b9a-5d0c-8e1f-6a4b7c9d0e21")

# Cycled over users. Several observe DST (including the southern hemisphere), so days of 23 and 25 hours
# and changing `timezone_offset` values show up in any multi-month range.
TIME_ZONES: tuple[str, ...] = (
    "America/New_York",
    "Europe/London",
    "Europe/Berlin",
    "Australia/Sydney",
    "Asia/Tokyo",
    "America/Los_Angeles",
    "UTC",
)
WEARABLE_PROVIDERS: tuple[str, ...] = ("oura", "garmin", "fitbit", "apple_health_kit")
CGM_PROVIDERS: tuple[str, ...] = ("freestyle_libre", "dexcom_v3")

PROVIDER_NAMES: dict[str, str] = {
    "oura": "Oura",
    "garmin": "Garmin",
    "fitbit": "Fitbit",
    "apple_health_kit": "Apple HealthKit",
    "freestyle_libre": "Freestyle Libre",
    "dexcom_v3": "Dexcom",
}
# Same URL pattern as the logos in Junction's own examples.
PROVIDER_LOGOS: dict[str, str] = {
    "oura": "https://storage.googleapis.com/vital-assets/oura.png",
    "garmin": "https://storage.googleapis.com/vital-assets/garmin.png",
    "fitbit": "https://storage.googleapis.com/vital-assets/fitbit.png",
    "apple_health_kit": "https://storage.googleapis.com/vital-assets/apple_health.png",
    "freestyle_libre": "https://storage.googleapis.com/vital-assets/libre.png",
    "dexcom_v3": "https://storage.googleapis.com/vital-assets/dexcom.png",
}
SOURCE_TYPES: dict[str, str] = {
    "oura": "ring",
    "garmin": "watch",
    "fitbit": "watch",
    "apple_health_kit": "watch",
    "freestyle_libre": "automatic",
    "dexcom_v3": "automatic",
}
# HealthKit data carries the bundle id of the app that wrote it; cloud providers have none.
APP_IDS: dict[str, str] = {"apple_health_kit": "com.apple.health"}

DEFAULT_DATA_START = date(2024, 1, 1)


@dataclass(frozen=True, slots=True)
class ResourceSpec:
    name: str
    unit: str
    interval: int  # seconds per sample for interval resources (start/end), 0 for discrete samples
    cgm: bool = False  # served by the user's CGM provider instead of the wearable


RESOURCES: dict[str, ResourceSpec] = {
    "heartrate": ResourceSpec("heartrate", "bpm", 0),
    "hrv": ResourceSpec("hrv", "rmssd", 0),
    "respiratory_rate": ResourceSpec("respiratory_rate", "bpm", 0),
    "blood_oxygen": ResourceSpec("blood_oxygen", "%", 0),
    "steps": ResourceSpec("steps", "count", 900),
    "calories_active": ResourceSpec("calories_active", "kcal", 900),
    "glucose": ResourceSpec("glucose", "mmol/L", 0, cgm=True),
}

SUMMARY_KINDS: tuple[str, ...] = ("sleep", "activity", "workouts", "body")


@dataclass(frozen=True, slots=True)
class Sport:
    id: int
    name: str
    slug: str
    cadence: int  # steps per minute (0 when steps are not the point)
    speed: float  # m/s, 0 without distance
    kcal_per_min: float
    hr_fraction: float  # typical average HR as a fraction of max HR


SPORTS: tuple[Sport, ...] = (
    Sport(1, "Running", "running", 162, 2.9, 11.5, 0.80),
    Sport(2, "Cycling", "cycling", 0, 6.5, 9.0, 0.72),
    Sport(3, "Walking", "walking", 112, 1.4, 4.5, 0.60),
    Sport(4, "Strength Training", "strength_training", 8, 0.0, 6.0, 0.65),
    Sport(5, "Swimming", "swimming", 0, 0.7, 9.5, 0.70),
    Sport(6, "Hiking", "hiking", 98, 1.1, 6.5, 0.66),
    Sport(7, "Yoga", "yoga", 0, 0.0, 3.5, 0.52),
)


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _uuid(*parts: object) -> str:
    return str(uuid.uuid5(NAMESPACE, ":".join(str(p) for p in parts)))


_EPOCH_DATE = date(1970, 1, 1)
# Formatting timestamps dominated generation time; a table of "HH:MM" strings plus a per-day cache of the date
# part makes it a dict lookup and an f-string.
_HHMM = tuple(f"{m // 60:02d}:{m % 60:02d}" for m in range(1440))
_SS = tuple(f"{s:02d}" for s in range(60))


@lru_cache(maxsize=8192)
def _day_str(days_since_epoch: int) -> str:
    return (_EPOCH_DATE + timedelta(days=days_since_epoch)).isoformat()


def iso(epoch: int) -> str:
    """`YYYY-MM-DDTHH:MM:SS+00:00` (UTC), the only timestamp form Junction emits."""
    days, secs = divmod(epoch, 86400)
    minutes, seconds = divmod(secs, 60)
    return f"{_day_str(days)}T{_HHMM[minutes]}:{_SS[seconds]}+00:00"


def offset_at(tz: ZoneInfo, epoch: int) -> int:
    """Seconds east of UTC in `tz` at that instant (what Junction calls `timezone_offset`)."""
    off = datetime.fromtimestamp(epoch, tz).utcoffset()
    return int(off.total_seconds()) if off is not None else 0


def local_midnight(tz: ZoneInfo, day: date) -> int:
    return int(datetime.combine(day, time(0), tzinfo=tz).timestamp())


def local_date(tz: ZoneInfo, epoch: int) -> date:
    return datetime.fromtimestamp(epoch, tz).date()


def _clamp(value: float, low: float, high: float) -> float:
    return low if value < low else high if value > high else value


# Per-sample noise: the sum of two uniforms (triangular, scaled to standard deviation 1). `random.gauss` is
# pure Python and was the largest cost of generating a day; this looks the same at a glance and is ~10x cheaper.
_TRI_SCALE = math.sqrt(6)


def _noise(rnd: Callable[[], float], sd: float) -> float:
    return (rnd() + rnd() - 1.0) * _TRI_SCALE * sd


def _overlap(a0: int, a1: int, b0: int, b1: int) -> int:
    return max(0, min(a1, b1) - max(a0, b0))


# --------------------------------------------------------------------------------------------------- users


@dataclass(frozen=True, slots=True)
class JunctionUser:
    seed: int
    index: int  # 1-based, matches client_user_id "loopsync-demo-0001"
    user_id: str
    client_user_id: str
    team_id: str
    time_zone: str
    provider: str  # the wearable
    cgm_provider: str | None  # every second user (odd index) also wears a CGM
    data_start: date  # first local day with data (also when the providers were connected)
    birth_date: date
    sex: str
    height_cm: int
    base_weight_kg: float
    base_fat_pct: float
    resting_hr: int
    hrv_base: float
    rr_base: float
    step_goal: int
    stride_m: float
    bmr_kcal: int
    glucose_base: float

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    @property
    def providers(self) -> tuple[str, ...]:
        return (self.provider, self.cgm_provider) if self.cgm_provider else (self.provider,)

    @property
    def created_on(self) -> datetime:
        return datetime.combine(self.data_start, time(0), tzinfo=UTC)

    @property
    def max_hr(self) -> int:
        return 220 - (self.data_start.year - self.birth_date.year)

    def source(self, provider: str) -> dict[str, object]:
        return {
            "provider": provider,
            "type": SOURCE_TYPES.get(provider, "unknown"),
            "app_id": APP_IDS.get(provider),
            "device_id": _uuid(self.seed, self.index, "device", provider),
        }

    def provider_for(self, resource: str) -> str | None:
        """Which connected provider serves a timeseries resource (None: nobody, e.g. glucose without CGM)."""
        spec = RESOURCES.get(resource)
        if spec is None:
            return None
        return self.cgm_provider if spec.cgm else self.provider


def make_user(seed: int, index: int, data_start: date = DEFAULT_DATA_START) -> JunctionUser:
    rng = _rng(seed, index, "profile")
    sex = rng.choice(("female", "male"))
    height = rng.randint(158, 176) if sex == "female" else rng.randint(168, 192)
    bmi = rng.uniform(20.5, 29.0)
    weight = round(bmi * (height / 100) ** 2, 1)
    birth = date(rng.randint(1958, 2002), rng.randint(1, 12), rng.randint(1, 28))
    age = data_start.year - birth.year
    cgm = CGM_PROVIDERS[((index - 1) // 2) % len(CGM_PROVIDERS)] if index % 2 == 1 else None
    return JunctionUser(
        seed=seed,
        index=index,
        user_id=str(uuid.uuid5(NAMESPACE, f"{seed}:{index}")),
        client_user_id=f"loopsync-demo-{index:04d}",
        team_id=str(uuid.uuid5(NAMESPACE, f"{seed}:team")),
        time_zone=TIME_ZONES[(index - 1) % len(TIME_ZONES)],
        provider=WEARABLE_PROVIDERS[(index - 1) % len(WEARABLE_PROVIDERS)],
        cgm_provider=cgm,
        data_start=data_start,
        birth_date=birth,
        sex=sex,
        height_cm=height,
        base_weight_kg=weight,
        base_fat_pct=round(rng.uniform(24, 34) if sex == "female" else rng.uniform(14, 26), 1),
        resting_hr=rng.randint(52, 64),
        hrv_base=rng.uniform(35, 80),
        rr_base=rng.uniform(13.0, 16.0),
        step_goal=rng.randint(6000, 10500),
        stride_m=round(height * 0.0043, 3),
        bmr_kcal=int(10 * weight + 6.25 * height - 5 * age + (5 if sex == "male" else -161)),
        glucose_base=rng.uniform(4.9, 5.8),
    )


# -------------------------------------------------------------------------------------------------- nights


@dataclass(frozen=True, slots=True)
class Night:
    """The sleep that ends on local date `wake_date`, with its in-bed samples."""

    wake_date: date
    start: int
    stop: int
    latency: int
    awake: int
    light: int
    rem: int
    deep: int
    score: int
    readiness: int
    temperature_delta: float
    hr_first: int  # epoch of hr[0]; one sample per minute
    hr: tuple[int, ...]
    five_first: int  # epoch of hrv[0] / rr[0] / spo2[0]; one sample per 5 minutes
    hrv: tuple[float, ...]
    rr: tuple[float, ...]
    spo2: tuple[int, ...]

    @property
    def hr_lowest(self) -> int:
        return min(self.hr)

    @property
    def hr_average(self) -> int:
        return round(sum(self.hr) / len(self.hr))

    @property
    def hr_resting(self) -> int:
        # Oura-style resting HR: a low percentile rather than the single lowest minute.
        return sorted(self.hr)[len(self.hr) // 10]


@lru_cache(maxsize=16384)
def night(user: JunctionUser, wake_date: date) -> Night:
    rng = _rng(user.seed, user.index, wake_date.isoformat(), "night")
    tz = user.tz
    bed_local = datetime.combine(wake_date - timedelta(days=1), time(22, 30), tzinfo=tz)
    wake_local = datetime.combine(wake_date, time(6, 0), tzinfo=tz)
    # Offsets are added to the UTC instant (not the wall clock) so a DST night is still a real duration.
    start = int(bed_local.timestamp()) + rng.randint(0, 120) * 60 + rng.randint(0, 59)
    stop = int(wake_local.timestamp()) + rng.randint(0, 120) * 60 + rng.randint(0, 59)
    duration = stop - start

    lowest_target = user.resting_hr - 3 + rng.gauss(0, 1.5)
    phase = rng.uniform(0, 2 * math.pi)
    rnd = rng.random
    hr_first = -(-start // 60) * 60
    hr: list[int] = []
    for t in range(hr_first, stop, 60):
        el = t - start
        v = (
            lowest_target
            + 9 * math.exp(-el / 2400)  # falls asleep: HR settles over the first hour
            + 3 * el / duration  # and drifts up towards the morning
            + 1.8 * math.sin(2 * math.pi * el / 5400 + phase)  # ~90-minute sleep cycles
            + _noise(rnd, 1.0)
        )
        hr.append(round(_clamp(v, 46, 72)))

    hrv_base = user.hrv_base * rng.uniform(0.85, 1.15)
    rr_base = user.rr_base + rng.gauss(0, 0.3)
    five_first = -(-start // 300) * 300
    hrv: list[float] = []
    rr: list[float] = []
    spo2: list[int] = []
    for t in range(five_first, stop, 300):
        el = t - start
        cycle = math.sin(2 * math.pi * el / 5400 + phase)
        hrv.append(round(_clamp(hrv_base - 10 * cycle + 8 * el / duration + _noise(rnd, 5), 20, 110), 1))
        rr.append(round(_clamp(rr_base + 0.3 * cycle + _noise(rnd, 0.35), 12, 18), 1))
        spo2.append(round(_clamp(96.6 + _noise(rnd, 0.9), 93, 99)))

    latency = rng.randint(300, 1500)
    awake = latency + int(duration * rng.uniform(0.03, 0.08))
    total = duration - awake
    deep = int(total * rng.uniform(0.13, 0.23))
    rem = int(total * rng.uniform(0.18, 0.25))
    light = total - deep - rem
    score = round(
        _clamp(
            40 + 45 * min(total / 27000, 1.0) + 10 * (total / duration - 0.88) / 0.1 + rng.gauss(0, 4), 30, 99
        )
    )
    return Night(
        wake_date=wake_date,
        start=start,
        stop=stop,
        latency=latency,
        awake=awake,
        light=light,
        rem=rem,
        deep=deep,
        score=score,
        readiness=round(_clamp(score + rng.gauss(0, 8), 20, 100)),
        temperature_delta=round(rng.gauss(0, 0.25), 2),
        hr_first=hr_first,
        hr=tuple(hr),
        five_first=five_first,
        hrv=tuple(hrv),
        rr=tuple(rr),
        spo2=tuple(spo2),
    )


# ---------------------------------------------------------------------------------------------- day plans


@dataclass(frozen=True, slots=True)
class Workout:
    sport: Sport
    start: int
    end: int
    intensity: float  # 0.9-1.1 scaling of HR, pace and calories


@dataclass(frozen=True, slots=True)
class DayPlan:
    day: date
    start: int  # local midnight (epoch)
    end: int  # next local midnight: 23 or 25 hours later on DST days
    night: Night  # ends this morning
    next_night: Night  # starts this evening (or just after midnight)
    workout: Workout | None
    step_target: int
    floors: int
    meals: tuple[tuple[int, float, float], ...]  # (epoch, peak mmol/L above base, time constant seconds)
    weigh_in: int | None
    weight: float
    fat: float

    @property
    def wake(self) -> int:
        return self.night.stop

    @property
    def bed(self) -> int:
        return self.next_night.start

    def asleep(self, t: int) -> bool:
        return self.night.start <= t < self.night.stop or self.next_night.start <= t < self.next_night.stop


@lru_cache(maxsize=8192)
def day_plan(user: JunctionUser, day: date) -> DayPlan:
    rng = _rng(user.seed, user.index, day.isoformat(), "plan")
    tz = user.tz
    start, end = local_midnight(tz, day), local_midnight(tz, day + timedelta(days=1))
    n0, n1 = night(user, day), night(user, day + timedelta(days=1))

    workout = None
    if rng.random() < 0.34:
        sport = rng.choice(SPORTS)
        minutes = rng.randint(25, 90)
        earliest = max(n0.stop + 45 * 60, local_midnight(tz, day) + int(7.5 * 3600))
        latest = min(n1.start - 90 * 60, local_midnight(tz, day) + 19 * 3600) - minutes * 60
        if latest > earliest:
            ws = rng.randint(earliest, latest)
            workout = Workout(sport, ws, ws + minutes * 60, rng.uniform(0.9, 1.1))

    midday = start + 12 * 3600
    meals = (
        (n0.stop + rng.randint(20, 60) * 60, rng.uniform(1.5, 3.0), rng.uniform(2400, 3300)),
        (midday + rng.randint(0, 90) * 60, rng.uniform(1.5, 3.5), rng.uniform(2400, 3300)),
        (midday + int(6.5 * 3600) + rng.randint(0, 90) * 60, rng.uniform(2.0, 4.0), rng.uniform(2700, 3600)),
    )
    weighed = rng.random() < 0.85
    ordinal = day.toordinal()
    return DayPlan(
        day=day,
        start=start,
        end=end,
        night=n0,
        next_night=n1,
        workout=workout,
        step_target=int(_clamp(user.step_goal * rng.uniform(0.55, 1.35), 3800, 14500)),
        floors=rng.randint(2, 18),
        meals=meals,
        weigh_in=n0.stop + rng.randint(5, 40) * 60 if weighed else None,
        weight=round(
            user.base_weight_kg
            + 0.8 * math.sin(2 * math.pi * ordinal / 45 + user.index)
            + rng.gauss(0, 0.25),
            1,
        ),
        fat=round(user.base_fat_pct + rng.gauss(0, 0.3), 1),
    )


# -------------------------------------------------------------------------------------------------- series


@dataclass(frozen=True, slots=True)
class SeriesDay:
    """One local day of one resource: sorted sample start epochs, raw values and the encoded samples.

    The samples are encoded once into one blob, each followed by a comma, with `offsets[i]` the start of
    sample i (and `offsets[n]` the end). A page is then one slice per day instead of a join of thousands of
    small bytes objects, and a day costs ~140 bytes a sample instead of ~230.
    """

    starts: array[int]  # 'q' epoch seconds of `timestamp`, ascending
    values: tuple[float, ...]
    blob: bytes
    offsets: array[int]  # 'q', len(starts) + 1
    interval: int  # seconds per interval sample, 0 for discrete samples

    def __len__(self) -> int:
        return len(self.starts)

    def chunk(self, lo: int, hi: int) -> bytes:
        """Samples lo..hi-1 as comma-separated JSON (no trailing comma); b"" when empty."""
        return self.blob[self.offsets[lo] : self.offsets[hi] - 1] if hi > lo else b""

    def sample(self, i: int) -> bytes:
        return self.chunk(i, i + 1)

    @property
    def nbytes(self) -> int:
        return len(self.blob) + 16 * len(self.starts) + 8 * len(self.values) + 200


EMPTY_SERIES = SeriesDay(array("q"), (), b"", array("q", [0]), 0)


def sample_unit(user: JunctionUser, spec: ResourceSpec) -> str:
    """The unit a sample carries. HRV's unit names its statistic: Apple Health measures SDNN, not RMSSD, and
    Junction relays it as such."""
    if spec.name == "hrv" and user.provider == "apple_health_kit":
        return "sdnn"
    return spec.unit


def _encode(user: JunctionUser, spec: ResourceSpec, starts: list[int], values: list[float]) -> SeriesDay:
    """Encode each sample once. A fixed template is ~3x faster than a dict through orjson; the values are plain
    ints and short floats whose repr() is valid JSON (tests check the output against orjson's)."""
    tz = user.tz
    if not starts:
        return SeriesDay(array("q"), (), b"", array("q", [0]), spec.interval)
    # A day has at most one DST change: only compute offsets per sample when the day has one.
    first, last = offset_at(tz, starts[0]), offset_at(tz, starts[-1])
    head = '{"id":null,"timezone_offset":'
    unit = f',"type":null,"unit":"{sample_unit(user, spec)}","timestamp":"'
    parts: list[str] = []
    offsets = array("q", [0])
    pos = 0
    for t, v in zip(starts, values, strict=True):
        off = first if first == last else offset_at(tz, t)
        ts = iso(t)
        if spec.interval:
            tail = f'","value":{v!r},"start":"{ts}","end":"{iso(t + spec.interval)}"}},'
        else:
            tail = f'","value":{v!r}}},'
        text = f"{head}{off}{unit}{ts}{tail}"
        parts.append(text)
        pos += len(text)  # ASCII only, so characters == bytes
        offsets.append(pos)
    return SeriesDay(
        array("q", starts), tuple(values), "".join(parts).encode("ascii"), offsets, spec.interval
    )


class _ByteBudgetCache:
    """LRU cache of generated days bounded by memory, not entry count: a heart-rate day is ~200 KB, a sleep-only
    HRV day ~15 KB, so a count bound either thrashes on long ranges or balloons on heart rate. Generation runs
    outside the lock (concurrent requests do not queue behind each other); a rare duplicate generation of the
    same day is harmless because generation is pure."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[object, ...], SeriesDay] = OrderedDict()
        self._bytes = 0

    def get(self, key: tuple[object, ...]) -> SeriesDay | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple[object, ...], value: SeriesDay) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._items[key] = value
            self._bytes += value.nbytes
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= evicted.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    @property
    def nbytes(self) -> int:
        return self._bytes


# ~1 GiB holds ~7M samples: several benchmark runs' worth. Tune with set_series_cache_bytes().
_SERIES_CACHE = _ByteBudgetCache(1 << 30)


def set_series_cache_bytes(max_bytes: int) -> None:
    _SERIES_CACHE.max_bytes = max_bytes


def clear_caches() -> None:
    """Drop every generated day (tests that measure generation; nothing else needs this)."""
    _SERIES_CACHE.clear()
    for fn in (night, day_plan, _steps_raw, sleep_summary, workout_summary, body_summary, _activity_complete):
        fn.cache_clear()


def _night_part(plan: DayPlan, first_attr: str, values_attr: str, step: int) -> tuple[list[int], list[float]]:
    starts: list[int] = []
    values: list[float] = []
    for n in (plan.night, plan.next_night):
        first: int = getattr(n, first_attr)
        for i, v in enumerate(getattr(n, values_attr)):
            t = first + i * step
            if plan.start <= t < plan.end:
                starts.append(t)
                values.append(v)
    return starts, values


@lru_cache(maxsize=4096)
def _steps_raw(user: JunctionUser, day: date) -> tuple[tuple[int, ...], tuple[int, ...], tuple[float, ...]]:
    """15-minute slots: (slot starts, steps, active kcal). Zero while asleep; bursts by day; the workout adds.
    Cached because heart rate (which rises with steps) and both interval series are built from it."""
    plan = day_plan(user, day)
    rng = _rng(user.seed, user.index, plan.day.isoformat(), "steps")
    slots = list(range(plan.start, plan.end, 900))
    awake = [
        1
        - (
            _overlap(s, s + 900, plan.night.start, plan.night.stop)
            + _overlap(s, s + 900, plan.next_night.start, plan.next_night.stop)
        )
        / 900
        for s in slots
    ]
    weights = []
    for s, a in zip(slots, awake, strict=True):
        hour = (s - plan.start) / 3600
        circadian = max(
            0.0, math.sin(math.pi * (hour - 6) / 16)
        )  # 0 at 06:00 and 22:00, peak early afternoon
        weights.append(a * (0.15 + circadian) * rng.uniform(0.3, 1.7))
    awake_slots = [i for i, a in enumerate(awake) if a > 0.5]
    for _ in range(rng.randint(2, 6) if awake_slots else 0):  # walks: commute, errands, the dog
        i = rng.choice(awake_slots)
        boost = rng.uniform(12, 35)
        for j in (i, i + 1):
            if j < len(weights):
                weights[j] += boost * awake[j]

    w = plan.workout
    workout_steps = [0.0] * len(slots)
    workout_kcal = [0.0] * len(slots)
    if w is not None:
        for i, s in enumerate(slots):
            minutes = _overlap(s, s + 900, w.start, w.end) / 60
            if minutes:
                workout_steps[i] = minutes * w.sport.cadence * w.intensity * rng.uniform(0.92, 1.05)
                workout_kcal[i] = minutes * w.sport.kcal_per_min * w.intensity
                weights[i] *= 0.1
    other = max(plan.step_target - sum(workout_steps), plan.step_target * 0.3)
    total_w = sum(weights) or 1.0
    steps = [round(wt / total_w * other + ws) for wt, ws in zip(weights, workout_steps, strict=True)]
    kcal = [
        round(st * 0.04 + (a * rng.uniform(0.8, 2.5) if a > 0 else 0.0) + wk, 1)
        for st, a, wk in zip(steps, awake, workout_kcal, strict=True)
    ]
    return tuple(slots), tuple(steps), tuple(kcal)


def _heartrate_raw(user: JunctionUser, plan: DayPlan) -> tuple[list[int], list[float]]:
    rng = _rng(user.seed, user.index, plan.day.isoformat(), "heartrate")
    rnd = rng.random
    slots, steps, _ = _steps_raw(user, plan.day)
    n0, n1 = plan.night, plan.next_night
    w = plan.workout
    awake_base = user.resting_hr + 14
    workout_target = (user.max_hr * w.sport.hr_fraction * w.intensity) if w else 0.0
    # Awake HR level per 15-minute slot: circadian (peak mid-afternoon) plus a rise with that slot's steps.
    # Computed per slot, not per minute, because this loop is the bulk of generating a day.
    slot_level = []
    for s, st in zip(slots, steps, strict=True):
        hour = (s + 450 - plan.start) / 3600
        circadian = math.sin(math.pi * (hour - 7) / 14) if 7 <= hour <= 21 else 0.0
        slot_level.append(awake_base + 8 * circadian + min(28.0, st / 40))
    starts = list(range(plan.start, plan.end, 60))
    values: list[float] = []
    append = values.append
    for t in starts:
        if n0.start <= t < n0.stop or n1.start <= t < n1.stop:
            n = n0 if t < n0.stop else n1
            i = (t - n.hr_first) // 60
            append(n.hr[min(max(i, 0), len(n.hr) - 1)])
        elif w is not None and w.start <= t < w.end:
            warm = min(1.0, (t - w.start) / 300)  # five-minute warm-up, then effort with intervals
            v = (
                awake_base
                + (workout_target - awake_base) * warm
                + 6 * math.sin((t - w.start) / 240)
                + _noise(rnd, 3)
            )
            append(round(_clamp(v, 70, user.max_hr)))
        else:
            v = slot_level[(t - plan.start) // 900] + _noise(rnd, 2.5)
            append(round(58 if v < 58 else 118 if v > 118 else v))
    return starts, values


def _glucose_raw(user: JunctionUser, plan: DayPlan) -> tuple[list[int], list[float]]:
    rng = _rng(user.seed, user.index, plan.day.isoformat(), "glucose")
    rnd = rng.random
    starts = list(range(plan.start, plan.end, 300))
    values: list[float] = []
    noise = 0.0
    w = plan.workout
    for t in starts:
        hour = (t - plan.start) / 3600
        v = user.glucose_base
        if 4 <= hour <= 9:  # dawn phenomenon: cortisol raises fasting glucose towards waking
            v += 0.45 * math.sin(math.pi * (hour - 4) / 5)
        for meal_t, peak, tau in plan.meals:
            x = (t - meal_t) / tau
            if x > 0:
                v += peak * x * math.exp(1 - x)  # gamma-shaped: peak ~45 min after the meal, back by ~3 h
        if w is not None and w.start <= t < w.end + 1800:
            v -= 0.6
        noise = 0.85 * noise + _noise(rnd, 0.12)  # sensor noise is smooth (AR(1)), not white
        values.append(round(_clamp(v + noise, 3.6, 13.0), 1))
    return starts, values


def series(user: JunctionUser, day: date, resource: str) -> SeriesDay:
    """All samples of `resource` whose timestamp falls on local `day` (ignoring "now"), cached."""
    spec = RESOURCES[resource]
    if day < user.data_start or (spec.cgm and user.cgm_provider is None):
        return EMPTY_SERIES
    key = (user, day, resource)
    cached = _SERIES_CACHE.get(key)
    if cached is None:
        cached = _generate(user, day, spec)
        _SERIES_CACHE.put(key, cached)
    return cached


def _generate(user: JunctionUser, day: date, spec: ResourceSpec) -> SeriesDay:
    resource = spec.name
    plan = day_plan(user, day)
    if resource == "heartrate":
        starts, values = _heartrate_raw(user, plan)
    elif resource == "hrv":
        starts, values = _night_part(plan, "five_first", "hrv", 300)
    elif resource == "respiratory_rate":
        starts, values = _night_part(plan, "five_first", "rr", 300)
    elif resource == "blood_oxygen":
        starts, values = _night_part(plan, "five_first", "spo2", 300)
    elif resource == "steps":
        slots, steps, _ = _steps_raw(user, day)
        starts, values = list(slots), list(steps)
    elif resource == "calories_active":
        slots, _, kcal = _steps_raw(user, day)
        starts, values = list(slots), list(kcal)
    elif resource == "glucose":
        starts, values = _glucose_raw(user, plan)
    else:  # pragma: no cover - RESOURCES and this switch are kept in step
        raise KeyError(resource)
    return _encode(user, spec, starts, values)


# ------------------------------------------------------------------------------------------------ summaries


def _common(user: JunctionUser, kind: str, day: date) -> dict[str, object]:
    return {
        "id": _uuid(user.seed, user.index, kind, day.isoformat()),
        "user_id": user.user_id,
        "date": f"{day.isoformat()}T00:00:00+00:00",  # deprecated field: the calendar date at 00:00 UTC
        "calendar_date": day.isoformat(),
    }


@lru_cache(maxsize=8192)
def sleep_summary(user: JunctionUser, day: date) -> dict[str, object] | None:
    if day < user.data_start:
        return None
    n = night(user, day)
    tz = user.tz
    return {
        **_common(user, "sleep", day),
        "bedtime_start": iso(n.start),
        "bedtime_stop": iso(n.stop),
        "type": "long_sleep",
        "timezone_offset": offset_at(tz, n.stop),
        "duration": n.stop - n.start,
        "total": n.light + n.rem + n.deep,
        "awake": n.awake,
        "light": n.light,
        "rem": n.rem,
        "deep": n.deep,
        "score": n.score,
        "recovery_readiness_score": n.readiness if user.provider in ("oura", "garmin") else None,
        "hr_lowest": n.hr_lowest,
        "hr_average": n.hr_average,
        "hr_resting": n.hr_resting,
        "efficiency": round((n.light + n.rem + n.deep) / (n.stop - n.start), 2),
        "latency": n.latency,
        "temperature_delta": n.temperature_delta if user.provider == "oura" else None,
        "skin_temperature": None,
        "hr_dip": round(100 * (1 - n.hr_lowest / (user.resting_hr + 14)), 1)
        if user.provider == "garmin"
        else None,
        "state": "confirmed" if user.provider == "garmin" else None,
        "average_hrv": round(sum(n.hrv) / len(n.hrv), 1),
        "respiratory_rate": round(sum(n.rr) / len(n.rr), 1),
        "source": user.source(user.provider),
        "sleep_stream": None,
        "created_at": iso(n.stop),
        "updated_at": iso(n.stop),
    }


@lru_cache(maxsize=8192)
def workout_summary(user: JunctionUser, day: date) -> dict[str, object] | None:
    if day < user.data_start:
        return None
    plan = day_plan(user, day)
    w = plan.workout
    if w is None:
        return None
    hr = series(user, day, "heartrate")
    in_workout = [v for t, v in zip(hr.starts, hr.values, strict=True) if w.start <= t < w.end]
    zones = [0] * 6
    for v in in_workout:  # Junction's zones: <50, 50-60, 60-70, 70-80, 80-90, 90+ % of max HR, in seconds
        pct = v / user.max_hr
        zones[0 if pct < 0.5 else min(5, int((pct - 0.4) * 10))] += 60
    seconds = w.end - w.start
    distance = round(w.sport.speed * seconds * w.intensity, 1) if w.sport.speed else None
    steps = series(user, day, "steps")
    slot_steps = sum(
        round(s * _overlap(t, t + 900, w.start, w.end) / 900)
        for t, s in zip(steps.starts, steps.values, strict=True)
    )
    rng = _rng(user.seed, user.index, day.isoformat(), "workout")
    outdoor = w.sport.slug in ("running", "cycling", "walking", "hiking")
    elev_low = round(rng.uniform(5, 400), 1) if outdoor else None
    gain = round(rng.uniform(10, 250), 1) if outdoor else None
    return {
        "id": _uuid(user.seed, user.index, "workout", day.isoformat()),
        "user_id": user.user_id,
        "title": w.sport.name if rng.random() < 0.5 else None,
        "timezone_offset": offset_at(user.tz, w.start),
        "average_hr": round(sum(in_workout) / len(in_workout)) if in_workout else None,
        "max_hr": max(in_workout) if in_workout else None,
        "distance": distance,
        "calendar_date": day.isoformat(),
        "time_start": iso(w.start),
        "time_end": iso(w.end),
        "calories": round(seconds / 60 * w.sport.kcal_per_min * w.intensity, 1),
        "sport": {"id": w.sport.id, "name": w.sport.name, "slug": w.sport.slug},
        "hr_zones": zones,
        "moving_time": int(seconds * rng.uniform(0.85, 0.98)),
        "total_elevation_gain": gain,
        "elev_high": round(elev_low + gain * rng.uniform(0.4, 0.9), 1)
        if elev_low is not None and gain
        else None,
        "elev_low": elev_low,
        "average_speed": round(w.sport.speed * w.intensity, 3) if w.sport.speed else None,
        "max_speed": round(w.sport.speed * w.intensity * rng.uniform(1.3, 2.2), 3) if w.sport.speed else None,
        "average_watts": None,
        "device_watts": None,
        "max_watts": None,
        "weighted_average_watts": None,
        "steps": slot_steps if w.sport.cadence else None,
        "map": None,
        "provider_id": str(rng.randint(10**9, 10**10 - 1)),
        "source": user.source(user.provider),
        "created_at": iso(w.end),
        "updated_at": iso(w.end),
    }


@lru_cache(maxsize=8192)
def body_summary(user: JunctionUser, day: date) -> dict[str, object] | None:
    if day < user.data_start:
        return None
    plan = day_plan(user, day)
    if plan.weigh_in is None:
        return None
    return {
        **_common(user, "body", day),
        "weight": plan.weight,
        "fat": plan.fat,
        "water_percentage": None,
        "muscle_mass_percentage": None,
        "visceral_fat_index": None,
        "bone_mass_percentage": None,
        "body_mass_index": round(plan.weight / (user.height_cm / 100) ** 2, 1),
        "lean_body_mass_kilogram": round(plan.weight * (1 - plan.fat / 100), 1),
        "waist_circumference_centimeter": None,
        "source": user.source(user.provider),
        "created_at": iso(plan.weigh_in),
        "updated_at": iso(plan.weigh_in),
    }


def activity_summary(user: JunctionUser, day: date, now_epoch: int) -> dict[str, object] | None:
    """The daily activity summary as of `now_epoch`: today's is partial (only 15-minute slots that have
    ended), earlier days are complete. Not cached as a whole: it is cheap given the cached series."""
    if day < user.data_start:
        return None
    plan = day_plan(user, day)
    if now_epoch < plan.start + 900:
        return None  # not a single slot of the day has ended yet
    if now_epoch >= plan.end:
        return _activity_complete(user, day)
    return _activity(user, plan, now_epoch)


@lru_cache(maxsize=8192)
def _activity_complete(user: JunctionUser, day: date) -> dict[str, object]:
    plan = day_plan(user, day)
    return _activity(user, plan, plan.end)


def _activity(user: JunctionUser, plan: DayPlan, cutoff: int) -> dict[str, object]:
    day = plan.day
    steps = series(user, day, "steps")
    kcal = series(user, day, "calories_active")
    hr = series(user, day, "heartrate")
    step_vals = [v for t, v in zip(steps.starts, steps.values, strict=True) if t + 900 <= cutoff]
    kcal_vals = [v for t, v in zip(kcal.starts, kcal.values, strict=True) if t + 900 <= cutoff]
    hr_vals = [v for t, v in zip(hr.starts, hr.values, strict=True) if t <= cutoff]
    total_steps = int(sum(step_vals))
    last_slot_end = plan.start + 900 * len(step_vals)
    elapsed = (last_slot_end - plan.start) / (plan.end - plan.start)
    low = medium = high = 0
    for v in (
        step_vals
    ):  # intensity minutes from the cadence of each 15-minute slot (pottering about is not "low")
        spm = v / 15
        if spm >= 100:
            high += 15
        elif spm >= 60:
            medium += 15
        elif spm >= 15:
            low += 15
    w = plan.workout
    distance = total_steps * user.stride_m
    if w is not None and not w.sport.cadence and w.sport.speed and w.end <= cutoff:
        distance += (
            w.sport.speed * (w.end - w.start) * w.intensity
        )  # cycling/swimming: distance without steps
    active = round(sum(kcal_vals), 1)
    return {
        **_common(user, "activity", day),
        "calories_total": round(active + user.bmr_kcal * elapsed, 1),
        "calories_active": active,
        "steps": total_steps,
        "daily_movement": round(distance, 1),
        "distance": round(distance, 1),
        "low": low,
        "medium": medium,
        "high": high,
        "floors_climbed": round(plan.floors * elapsed),
        "time_zone": user.time_zone,
        "timezone_offset": offset_at(user.tz, plan.start + (plan.end - plan.start) // 2),
        "heart_rate": {
            "avg_bpm": round(sum(hr_vals) / len(hr_vals), 1) if hr_vals else None,
            "min_bpm": min(hr_vals) if hr_vals else None,
            "max_bpm": max(hr_vals) if hr_vals else None,
            "resting_bpm": plan.night.hr_resting,
            "avg_walking_bpm": None,
        },
        "wheelchair_use": None,
        "wheelchair_push": None,
        "source": user.source(user.provider),
        "created_at": iso(plan.start + 900),
        # Changes while the day is in progress, so an upsert keyed on `id` sees a newer version.
        "updated_at": iso(last_slot_end),
    }


def summary_available_at(kind: str, record: dict[str, object]) -> str:
    """The instant (ISO string, comparable as text since the format is fixed) from which a record is served."""
    if kind == "sleep":
        return str(record["bedtime_stop"])
    if kind == "workouts":
        return str(record["time_end"])
    return str(record["created_at"])
