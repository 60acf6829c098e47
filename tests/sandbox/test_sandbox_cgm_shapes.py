"""The Dexcom sandbox's CGM users have the shapes a clinician looks for (sandbox/cgm_data.py): nights below 54,
long highs, readings beyond the sensor's range (value null, status high/low), sensor changes with a warm-up
and signal-loss gaps, and integer mg/dL values labelled mmol/L."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sandbox import cgm_data
from sandbox.dexcom import DexcomSandbox

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
DAYS = 14


def egvs(user: int) -> list[dict]:
    sandbox = DexcomSandbox(users=20, seed=7)
    records: list[dict] = []
    for back in range(DAYS, 0, -7):
        records += sandbox.egvs(user, NOW - timedelta(days=back), NOW - timedelta(days=back - 7), NOW)
    return records


def at(record: dict) -> datetime:
    return datetime.fromisoformat(record["systemTime"].replace("Z", "+00:00"))


def local_hour(record: dict, offset: float) -> float:
    moment = at(record) + timedelta(hours=offset)
    return moment.hour + moment.minute / 60


def test_hypo_nights_go_below_54_and_beyond_the_sensor_floor_at_night_only() -> None:
    records = egvs(1)
    offset = 1.0  # sandbox.dexcom.OFFSETS[1]
    low = [r for r in records if r["status"] == "low"]
    below_54 = [r for r in records if r["value"] is not None and r["value"] < 54]
    assert low and below_54
    assert all(r["value"] is None for r in low)
    assert all(2.0 <= local_hour(r, offset) < 4.0 for r in low + below_54)
    nights = {(at(r) + timedelta(hours=offset)).date() for r in below_54 + low}
    assert len(nights) >= DAYS // 2  # most nights


def test_long_highs_last_hours_and_pass_the_sensor_ceiling_some_days() -> None:
    records = egvs(3)
    high = [r for r in records if r["status"] == "high"]
    assert high and all(r["value"] is None for r in high)
    above_250 = [r for r in records if r["status"] == "high" or (r["value"] or 0) > 250]
    per_day: dict = {}
    for r in above_250:
        per_day.setdefault(at(r).date(), []).append(r)
    # Every day has more than two hours above 250 (24 five-minute readings).
    assert len(per_day) >= DAYS - 1 and all(len(v) > 24 for v in per_day.values())


def test_sensor_changes_bring_a_warm_up_gap_and_a_new_transmitter() -> None:
    records = egvs(4)
    transmitters = []
    for r in records:
        if not transmitters or transmitters[-1][0] != r["transmitterId"]:
            transmitters.append((r["transmitterId"], at(r)))
    assert len(transmitters) >= 2  # at least one sensor change in 14 days
    times = [at(r) for r in records]
    gaps = [(b - a) for a, b in zip(times, times[1:], strict=False) if b - a > timedelta(minutes=6)]
    assert gaps and max(gaps) >= timedelta(hours=2)  # the warm-up after a change
    assert any(timedelta(minutes=15) <= g < timedelta(hours=2) for g in gaps)  # signal loss
    for _, started in transmitters[1:]:
        before = max(t for t in times if t < started)
        assert started - before >= timedelta(hours=2)
    assert len(records) < DAYS * 288 * 0.97


def test_a_user_labels_integer_mg_dl_values_mmol_per_litre() -> None:
    records = egvs(6)
    assert cgm_data.mislabelled_mmol(6)
    assert all(r["unit"] == "mmol/L" for r in records)
    values = [r["value"] for r in records if r["value"] is not None]
    assert all(isinstance(v, int) and v > 33 for v in values)


def test_ordinary_users_have_none_of_these_shapes() -> None:
    records = egvs(2)
    assert all(r["status"] is None for r in records)
    assert len({r["transmitterId"] for r in records}) == 1
    assert len(records) >= DAYS * 288 - 13  # all but the last hour (the data delay)
