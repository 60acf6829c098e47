"""Generated data: deterministic per (seed, user, day, resource), plausible, internally consistent."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from sandbox import JunctionSandbox
from sandbox import junction_data as data

ROOT = Path(__file__).resolve().parents[2]
WEEK = (datetime(2025, 5, 5, tzinfo=UTC), datetime(2025, 5, 11, 23, 59, 59, tzinfo=UTC))


def _digest(sandbox: JunctionSandbox) -> str:
    h = hashlib.sha256()
    for uid in sandbox.user_ids[:3]:
        for resource in data.RESOURCES:
            h.update(repr(sandbox.samples(uid, resource, *WEEK)).encode())
        for kind in data.SUMMARY_KINDS:
            h.update(repr(sandbox.summaries(uid, kind, date(2025, 5, 5), date(2025, 5, 11))).encode())
    return h.hexdigest()


def test_data_is_deterministic_per_seed_and_user() -> None:
    assert _digest(JunctionSandbox(users=3, seed=42)) == _digest(JunctionSandbox(users=3, seed=42))
    assert _digest(JunctionSandbox(users=3, seed=42)) != _digest(JunctionSandbox(users=3, seed=43))
    a, b = JunctionSandbox(users=2, seed=42), JunctionSandbox(users=5, seed=42)
    # A user's data does not depend on how many users the server has.
    assert a.samples(a.user_ids[1], "heartrate", *WEEK) == b.samples(b.user_ids[1], "heartrate", *WEEK)
    assert a.samples(a.user_ids[0], "heartrate", *WEEK) != a.samples(a.user_ids[1], "heartrate", *WEEK)


def test_data_does_not_depend_on_the_process_hash_seed() -> None:
    """Benchmarks run the sandbox in another process: it must serve the same bytes there."""
    code = (
        "import hashlib; from datetime import date; from sandbox import junction_data as d;"
        "u = d.make_user(42, 3); s = d.series(u, date(2025, 5, 5), 'glucose');"
        "print(u.user_id, hashlib.sha256(s.blob).hexdigest())"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1
    user = data.make_user(42, 3)
    assert (
        outputs.pop().split()[1]
        == hashlib.sha256(data.series(user, date(2025, 5, 5), "glucose").blob).hexdigest()
    )


def test_user_ids_are_uuid5_of_seed_and_index() -> None:
    sandbox = JunctionSandbox(users=3, seed=7)
    assert sandbox.user_ids == [str(uuid.uuid5(data.NAMESPACE, f"7:{i}")) for i in (1, 2, 3)]
    assert [u.client_user_id for u in sandbox.users] == [
        "loopsync-demo-0001",
        "loopsync-demo-0002",
        "loopsync-demo-0003",
    ]


def test_users_cycle_zones_and_providers_and_every_second_has_a_cgm() -> None:
    users = JunctionSandbox(users=14, seed=1).users
    assert {u.time_zone for u in users} == set(data.TIME_ZONES)
    assert {u.provider for u in users} == set(data.WEARABLE_PROVIDERS)
    assert [u.cgm_provider is not None for u in users] == [True, False] * 7
    assert {u.cgm_provider for u in users} - {None} == set(data.CGM_PROVIDERS)


@pytest.fixture(scope="module")
def sandbox() -> JunctionSandbox:
    return JunctionSandbox(users=8, seed=42)


def test_values_are_physiologically_plausible(sandbox: JunctionSandbox) -> None:
    ranges = {
        "heartrate": (40, 200),
        "hrv": (20, 110),
        "respiratory_rate": (12, 18),
        "blood_oxygen": (93, 99),
        "steps": (0, 3000),
        "calories_active": (0, 300),
        "glucose": (3.5, 13.0),
    }
    for user in sandbox.users:
        for resource, (low, high) in ranges.items():
            values = [s["value"] for s in sandbox.samples(user.user_id, resource, *WEEK)]
            if resource == "glucose" and user.cgm_provider is None:
                assert values == []
                continue
            assert values, (user.index, resource)
            assert low <= min(values) and max(values) <= high, (
                user.index,
                resource,
                min(values),
                max(values),
            )
        glucose = [s["value"] for s in sandbox.samples(user.user_id, "glucose", *WEEK)]
        if glucose:
            assert max(glucose) - min(glucose) > 1.5  # meals show up as peaks
        for activity in sandbox.summaries(user.user_id, "activity", date(2025, 5, 5), date(2025, 5, 11)):
            assert 3000 <= activity["steps"] <= 20000


def test_sampling_intervals_match_the_resource(sandbox: JunctionSandbox) -> None:
    user = next(u for u in sandbox.users if u.cgm_provider)
    expected = {
        "heartrate": 60,
        "hrv": 300,
        "respiratory_rate": 300,
        "blood_oxygen": 300,
        "steps": 900,
        "glucose": 300,
    }
    for resource, step in expected.items():
        stamps = [
            datetime.fromisoformat(s["timestamp"]) for s in sandbox.samples(user.user_id, resource, *WEEK)
        ]
        gaps = {(b - a).total_seconds() for a, b in zip(stamps, stamps[1:], strict=False)}
        assert min(gaps) == step, resource
    night_only = len(sandbox.samples(user.user_id, "hrv", *WEEK)) / 7
    assert 60 < night_only < 120  # every 5 minutes of a 6-9 hour night, not all day


def test_heart_rate_is_lower_asleep_and_sleep_summary_agrees_with_samples(sandbox: JunctionSandbox) -> None:
    user = sandbox.users[4]
    for sleep in sandbox.summaries(user.user_id, "sleep", date(2025, 5, 6), date(2025, 5, 10)):
        start, stop = (
            datetime.fromisoformat(sleep["bedtime_start"]),
            datetime.fromisoformat(sleep["bedtime_stop"]),
        )
        night = [
            s["value"] for s in sandbox.samples(user.user_id, "heartrate", start, stop - timedelta(seconds=1))
        ]
        day = [
            s["value"]
            for s in sandbox.samples(
                user.user_id, "heartrate", stop + timedelta(hours=3), stop + timedelta(hours=10)
            )
        ]
        assert sleep["hr_lowest"] == min(night)
        assert sleep["hr_average"] == round(sum(night) / len(night))
        assert 48 <= sum(night) / len(night) <= 66
        assert 62 <= sum(day) / len(day) <= 100
        hrv = [s["value"] for s in sandbox.samples(user.user_id, "hrv", start, stop)]
        assert sleep["average_hrv"] == round(sum(hrv) / len(hrv), 1)


def test_steps_are_zero_while_asleep(sandbox: JunctionSandbox) -> None:
    user = sandbox.users[1]
    for sleep in sandbox.summaries(user.user_id, "sleep", date(2025, 5, 6), date(2025, 5, 10)):
        start = datetime.fromisoformat(sleep["bedtime_start"]) + timedelta(minutes=15)
        stop = datetime.fromisoformat(sleep["bedtime_stop"]) - timedelta(minutes=30)
        assert {s["value"] for s in sandbox.samples(user.user_id, "steps", start, stop)} == {0}


def test_workouts_come_about_every_third_day_and_raise_heart_rate(sandbox: JunctionSandbox) -> None:
    user = sandbox.users[0]
    workouts = sandbox.summaries(user.user_id, "workouts", date(2025, 1, 1), date(2025, 3, 31))
    assert 18 <= len(workouts) <= 42  # 90 days
    for w in workouts[:10]:
        start, end = datetime.fromisoformat(w["time_start"]), datetime.fromisoformat(w["time_end"])
        assert timedelta(minutes=25) <= end - start <= timedelta(minutes=90)
        assert w["calendar_date"] == start.astimezone(user.tz).date().isoformat()
        assert set(w["sport"]) == {"id", "name", "slug"}
        assert w["max_hr"] >= w["average_hr"] >= 90
        assert sum(w["hr_zones"]) == pytest.approx((end - start).total_seconds(), abs=60)


def test_body_weight_is_measured_most_days(sandbox: JunctionSandbox) -> None:
    user = sandbox.users[0]
    body = sandbox.summaries(user.user_id, "body", date(2025, 1, 1), date(2025, 1, 30))
    assert 20 <= len(body) <= 30
    weights = [b["weight"] for b in body]
    assert max(weights) - min(weights) < 4


def test_day_lengths_follow_dst(sandbox: JunctionSandbox) -> None:
    user = next(u for u in sandbox.users if u.time_zone == "America/New_York")
    assert len(data.series(user, date(2025, 3, 9), "heartrate")) == 23 * 60
    assert len(data.series(user, date(2025, 11, 2), "heartrate")) == 25 * 60
    assert len(data.series(user, date(2025, 11, 3), "steps")) == 96


def test_no_data_before_data_start() -> None:
    sandbox = JunctionSandbox(users=1, seed=42, data_start=date(2025, 1, 10))
    uid = sandbox.user_ids[0]
    samples = sandbox.samples(uid, "steps", datetime(2025, 1, 1), datetime(2025, 1, 12))
    assert samples and min(s["timestamp"] for s in samples) >= "2025-01-09"  # the local day, in UTC
    assert [
        s["calendar_date"] for s in sandbox.summaries(uid, "body", date(2024, 12, 1), date(2025, 1, 9))
    ] == []


def test_warm_generates_every_user_day(sandbox: JunctionSandbox) -> None:
    assert sandbox.warm(date(2025, 6, 1), date(2025, 6, 2), resources=("steps",)) == 8 * 2 * 96
