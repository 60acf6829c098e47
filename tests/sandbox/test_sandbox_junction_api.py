"""The Junction sandbox speaks the real API: paths, auth header, envelopes, field names, errors, pagination."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, date, datetime, timedelta

import httpx
import orjson
import pytest
import time_machine

from sandbox import SandboxServer

ISO_UTC = "%Y-%m-%dT%H:%M:%S+00:00"


def _user(server: SandboxServer, *, cgm: bool | None = None, zone: str | None = None):
    return next(
        u
        for u in server.junction.users
        if (cgm is None or (u.cgm_provider is not None) == cgm) and (zone is None or u.time_zone == zone)
    )


def _parse(ts: str) -> datetime:
    return datetime.strptime(ts, ISO_UTC).replace(tzinfo=UTC)


# ------------------------------------------------------------------------------------------------- auth


def test_missing_api_key_is_401(server: SandboxServer) -> None:
    response = httpx.get(f"{server.junction_url}/v2/user")
    assert response.status_code == 401
    assert isinstance(response.json()["detail"], str)


def test_wrong_api_key_is_401_and_the_key_is_not_echoed(server: SandboxServer) -> None:
    response = httpx.get(f"{server.junction_url}/v2/user", headers={"x-vital-api-key": "sk_us_wrong_key_123"})
    assert response.status_code == 401
    assert "sk_us_wrong_key_123" not in response.text
    assert server.api_key not in response.text


def test_api_key_header_name_is_case_insensitive(server: SandboxServer) -> None:
    response = httpx.get(f"{server.junction_url}/v2/user", headers={"X-Vital-API-Key": server.api_key})
    assert response.status_code == 200


def test_unknown_route_is_404_not_found_even_without_a_key(server: SandboxServer) -> None:
    for path in ("/v2/nope", "/v2/timeseries/x/not_a_resource/grouped", "/v1/user"):
        response = httpx.get(server.junction_url + path)
        assert response.status_code == 404
        assert response.json() == {"detail": "Not Found"}


def test_wrong_method_is_405(client: httpx.Client) -> None:
    assert client.delete("/v2/user").status_code == 405


# ------------------------------------------------------------------------------------------------ users


def test_list_users_pages_with_offset_and_limit(client: httpx.Client, server: SandboxServer) -> None:
    body = client.get("/v2/user", params={"offset": 2, "limit": 3}).json()
    assert body["total"] == len(server.junction.users)
    assert (body["offset"], body["limit"]) == (2, 3)
    assert [u["user_id"] for u in body["users"]] == server.junction.user_ids[2:5]
    assert client.get("/v2/user").json()["limit"] == 100


def test_list_users_limit_above_500_is_422(client: httpx.Client) -> None:
    response = client.get("/v2/user", params={"limit": 501})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["query", "limit"]
    assert error["type"] == "less_than_equal"


def test_get_user_has_the_reference_fields(client: httpx.Client, server: SandboxServer) -> None:
    user = server.junction.users[0]
    body = client.get(f"/v2/user/{user.user_id}").json()
    assert set(body) >= {
        "user_id", "team_id", "client_user_id", "created_on", "connected_sources", "fallback_time_zone",
        "fallback_birth_date", "ingestion_start", "ingestion_end",
    }  # fmt: skip
    assert body["client_user_id"] == "loopsync-demo-0001"
    # Object on output, string on input (reference section 3).
    assert body["fallback_time_zone"]["id"] == user.time_zone
    assert set(body["fallback_time_zone"]) == {"id", "source_slug", "updated_at"}
    assert [s["provider"]["slug"] for s in body["connected_sources"]] == list(user.providers)
    _parse(body["created_on"])


def test_unknown_user_is_404_user_not_found(client: httpx.Client) -> None:
    unknown = str(uuid.uuid4())
    for path in (f"/v2/user/{unknown}", f"/v2/user/providers/{unknown}"):
        response = client.get(path)
        assert response.status_code == 404
        assert response.json() == {"detail": "User not found"}
    response = client.get(f"/v2/summary/sleep/{unknown}", params={"start_date": "2025-01-01"})
    assert response.status_code == 404


def test_malformed_user_id_is_422_pydantic_style(client: httpx.Client) -> None:
    response = client.get("/v2/user/not-a-uuid")
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["type"] == "uuid_parsing"
    assert error["loc"] == ["path", "user_id"]
    assert error["input"] == "not-a-uuid"
    assert error["msg"].startswith("Input should be a valid UUID")


def test_connected_providers_list_the_wearable_and_the_cgm(
    client: httpx.Client, server: SandboxServer
) -> None:
    user = _user(server, cgm=True)
    body = client.get(f"/v2/user/providers/{user.user_id}").json()
    slugs = [p["slug"] for p in body["providers"]]
    assert slugs == [user.provider, user.cgm_provider]
    for p in body["providers"]:
        assert {"name", "slug", "logo", "created_on", "status", "resource_availability"} <= set(p)
        assert p["status"] == "connected"
    assert "glucose" in body["providers"][1]["resource_availability"]


def test_refresh_reports_refreshed_sources(client: httpx.Client, server: SandboxServer) -> None:
    user = _user(server, cgm=True)
    response = client.post(f"/v2/user/refresh/{user.user_id}", params={"timeout": 10})
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True
    assert body["user_id"] == user.user_id
    assert f"{user.provider}/sleep" in body["refreshed_sources"]
    assert f"{user.cgm_provider}/vitals/glucose" in body["refreshed_sources"]
    assert body["in_progress_sources"] == [] and body["failed_sources"] == []


def test_refresh_is_limited_to_8_an_hour(client: httpx.Client, server: SandboxServer) -> None:
    user, other = server.junction.users[0], server.junction.users[1]
    with time_machine.travel(datetime(2025, 6, 1, 12, 0, tzinfo=UTC), tick=False) as traveller:
        for _ in range(8):
            assert client.post(f"/v2/user/refresh/{user.user_id}").status_code == 200
            traveller.shift(timedelta(minutes=1))
        ninth = client.post(f"/v2/user/refresh/{user.user_id}")
        assert ninth.status_code == 429
        assert ninth.json() == {"detail": "Too many requests"}
        # The first call (12:00) leaves the window at 13:00; it is now 12:08.
        assert ninth.headers["Retry-After"] == str(52 * 60)
        # The limit is per user.
        assert client.post(f"/v2/user/refresh/{other.user_id}").status_code == 200
        # Rolling window: an hour after the first call one slot frees up, and only one.
        traveller.move_to(datetime(2025, 6, 1, 13, 0, 1, tzinfo=UTC))
        assert client.post(f"/v2/user/refresh/{user.user_id}").status_code == 200
        assert client.post(f"/v2/user/refresh/{user.user_id}").status_code == 429


def test_refresh_timeout_outside_5_to_60_is_422(client: httpx.Client, server: SandboxServer) -> None:
    response = client.post(f"/v2/user/refresh/{server.junction.user_ids[0]}", params={"timeout": 61})
    assert response.status_code == 422


# -------------------------------------------------------------------------------------------- summaries

SUMMARY_FIELDS = {
    "sleep": {
        "id", "user_id", "date", "calendar_date", "bedtime_start", "bedtime_stop", "type", "timezone_offset",
        "duration", "total", "awake", "light", "rem", "deep", "score", "hr_lowest", "hr_average", "hr_resting",
        "efficiency", "latency", "average_hrv", "respiratory_rate", "source", "created_at", "updated_at",
    },
    "activity": {
        "id", "user_id", "date", "calendar_date", "calories_total", "calories_active", "steps", "distance", "low",
        "medium", "high", "floors_climbed", "time_zone", "timezone_offset", "heart_rate", "source", "created_at",
        "updated_at",
    },
    "workouts": {
        "id", "user_id", "title", "timezone_offset", "average_hr", "max_hr", "distance", "calendar_date",
        "time_start", "time_end", "calories", "sport", "hr_zones", "moving_time", "provider_id", "source",
        "created_at", "updated_at",
    },
    "body": {"id", "user_id", "date", "calendar_date", "weight", "fat", "body_mass_index", "source", "created_at", "updated_at"},
}  # fmt: skip


@pytest.mark.parametrize("kind", ["sleep", "activity", "workouts", "body"])
def test_summary_envelope_and_fields_follow_the_reference(
    client: httpx.Client, server: SandboxServer, kind: str
) -> None:
    user = server.junction.users[0]
    response = client.get(
        f"/v2/summary/{kind}/{user.user_id}", params={"start_date": "2025-04-01", "end_date": "2025-04-30"}
    )
    assert response.status_code == 200
    body = response.json()
    assert list(body) == [kind]  # one list key, no pagination
    records = body[kind]
    assert records, kind
    for record in records:
        assert SUMMARY_FIELDS[kind] <= set(record), SUMMARY_FIELDS[kind] - set(record)
        assert uuid.UUID(record["id"]) and record["user_id"] == user.user_id
        assert set(record["source"]) == {"provider", "type", "app_id", "device_id"}
        assert record["source"]["provider"] == user.provider
        _parse(record["created_at"]), _parse(record["updated_at"])
    assert [r["calendar_date"] for r in records] == sorted(r["calendar_date"] for r in records)
    assert len({r["id"] for r in records}) == len(records)


def test_summaries_filter_on_calendar_date_inclusive(client: httpx.Client, server: SandboxServer) -> None:
    uid = server.junction.user_ids[1]
    records = client.get(
        f"/v2/summary/sleep/{uid}", params={"start_date": "2025-04-10", "end_date": "2025-04-12"}
    ).json()["sleep"]
    assert [r["calendar_date"] for r in records] == ["2025-04-10", "2025-04-11", "2025-04-12"]
    # ISO datetimes work too; the calendar date of the instant is what counts.
    same = client.get(
        f"/v2/summary/sleep/{uid}",
        params={"start_date": "2025-04-10T18:00:00+00:00", "end_date": "2025-04-12T01:00:00Z"},
    ).json()["sleep"]
    assert same == records


def test_sleep_summary_is_dated_by_wake_day_and_stages_add_up(
    client: httpx.Client, server: SandboxServer
) -> None:
    user = server.junction.users[2]
    records = client.get(
        f"/v2/summary/sleep/{user.user_id}", params={"start_date": "2025-05-01", "end_date": "2025-05-14"}
    ).json()["sleep"]
    assert len(records) == 14
    for s in records:
        start, stop = _parse(s["bedtime_start"]), _parse(s["bedtime_stop"])
        local_start, local_stop = start.astimezone(user.tz), stop.astimezone(user.tz)
        assert local_stop.date().isoformat() == s["calendar_date"]
        assert local_start.hour in (22, 23, 0) and 6 <= local_stop.hour <= 8
        assert s["duration"] == (stop - start).total_seconds()
        assert s["total"] == s["light"] + s["rem"] + s["deep"] == s["duration"] - s["awake"]
        assert 0 < s["efficiency"] <= 1
        assert s["type"] == "long_sleep"
        assert s["hr_lowest"] <= s["hr_resting"] <= s["hr_average"]
        assert s["timezone_offset"] == int(local_stop.utcoffset().total_seconds())


def test_summary_without_start_date_is_422(client: httpx.Client, server: SandboxServer) -> None:
    uid = server.junction.user_ids[0]
    for path in (f"/v2/summary/activity/{uid}", f"/v2/timeseries/{uid}/heartrate/grouped"):
        response = client.get(path)
        assert response.status_code == 422
        assert response.json() == {
            "detail": [
                {"type": "missing", "loc": ["query", "start_date"], "msg": "Field required", "input": None}
            ]
        }


def test_unparseable_date_is_422(client: httpx.Client, server: SandboxServer) -> None:
    uid = server.junction.user_ids[0]
    response = client.get(
        f"/v2/summary/sleep/{uid}", params={"start_date": "2025-01-01", "end_date": "yesterday"}
    )
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["query", "end_date"]
    assert error["input"] == "yesterday"


def test_provider_filter_excludes_other_providers(client: httpx.Client, server: SandboxServer) -> None:
    user = _user(server, cgm=True)
    params = {"start_date": "2025-04-01", "end_date": "2025-04-02"}
    assert client.get(
        f"/v2/summary/sleep/{user.user_id}", params={**params, "provider": user.provider}
    ).json()["sleep"]
    assert client.get(
        f"/v2/summary/sleep/{user.user_id}", params={**params, "provider": "whoop_v2"}
    ).json() == {"sleep": []}
    glucose = f"/v2/timeseries/{user.user_id}/glucose/grouped"
    assert list(client.get(glucose, params={**params, "provider": user.cgm_provider}).json()["groups"]) == [
        user.cgm_provider
    ]
    assert client.get(glucose, params={**params, "provider": user.provider}).json()["groups"] == {}


def test_activity_steps_match_the_step_timeseries(
    client: httpx.Client, server: SandboxServer, all_pages
) -> None:
    user = server.junction.users[3]  # Sydney: its local day straddles two UTC dates
    day = date(2025, 5, 20)
    (activity,) = client.get(
        f"/v2/summary/activity/{user.user_id}",
        params={"start_date": day.isoformat(), "end_date": day.isoformat()},
    ).json()["activity"]
    local_start = datetime.combine(day, datetime.min.time(), tzinfo=user.tz)
    start, end = (
        local_start.astimezone(UTC),
        (local_start + timedelta(days=1)).astimezone(UTC) - timedelta(seconds=1),
    )
    steps, _ = all_pages(
        client,
        f"/v2/timeseries/{user.user_id}/steps/grouped",
        {"start_date": start.isoformat(), "end_date": end.isoformat()},
    )
    assert len(steps) == 96
    assert activity["steps"] == sum(s["value"] for s in steps)
    assert 3000 <= activity["steps"] <= 20000
    assert activity["calories_total"] > activity["calories_active"] > 0
    assert set(activity["heart_rate"]) >= {"avg_bpm", "min_bpm", "max_bpm", "resting_bpm"}


def test_unknown_summary_kinds_that_exist_upstream_are_empty(
    client: httpx.Client, server: SandboxServer
) -> None:
    uid = server.junction.user_ids[0]
    assert client.get(f"/v2/summary/meal/{uid}", params={"start_date": "2025-01-01"}).json() == {"meals": []}


# ------------------------------------------------------------------------------------------- timeseries

RESOURCE_UNITS = {
    "heartrate": "bpm", "hrv": "rmssd", "respiratory_rate": "bpm", "blood_oxygen": "%", "steps": "count",
    "calories_active": "kcal", "glucose": "mmol/L",
}  # fmt: skip


@pytest.mark.parametrize("resource", sorted(RESOURCE_UNITS))
def test_grouped_timeseries_shape_per_resource(
    client: httpx.Client, server: SandboxServer, resource: str
) -> None:
    user = _user(server, cgm=True)
    body = client.get(
        f"/v2/timeseries/{user.user_id}/{resource}/grouped",
        params={"start_date": "2025-04-01", "end_date": "2025-04-01"},
    ).json()
    assert set(body) == {"groups", "next", "next_cursor"}
    slug = user.cgm_provider if resource == "glucose" else user.provider
    (group,) = body["groups"][slug]
    assert group["source"]["provider"] == slug
    assert set(group["source"]) == {"provider", "type", "app_id", "device_id"}
    for sample in group["data"]:
        keys = {"id", "timezone_offset", "type", "unit", "timestamp", "value"}
        interval = resource in ("steps", "calories_active")
        assert set(sample) == (keys | {"start", "end"} if interval else keys)
        assert sample["unit"] == RESOURCE_UNITS[resource]
        assert sample["id"] is None and sample["type"] is None
        assert isinstance(sample["value"], int | float)
        if interval:
            assert sample["timestamp"] == sample["start"]
            assert _parse(sample["end"]) - _parse(sample["start"]) == timedelta(minutes=15)


def test_timeseries_pages_until_next_cursor_is_null(
    client: httpx.Client, server: SandboxServer, all_pages
) -> None:
    uid = server.junction.user_ids[0]
    params = {"start_date": "2025-04-01", "end_date": "2025-04-03"}
    samples, pages = all_pages(client, f"/v2/timeseries/{uid}/heartrate/grouped", params)
    assert len(samples) == 3 * 1440  # a minute series over three whole UTC days
    assert len(pages) == -(-len(samples) // server.junction.page_size)
    for page in pages[:-1]:
        assert page["next"] == page["next_cursor"] is not None
        assert sum(len(g["data"]) for gs in page["groups"].values() for g in gs) == server.junction.page_size
    assert pages[-1]["next"] is None and pages[-1]["next_cursor"] is None
    timestamps = [s["timestamp"] for s in samples]
    assert timestamps == sorted(timestamps) and len(set(timestamps)) == len(timestamps)
    assert timestamps[0] == "2025-04-01T00:00:00+00:00" and timestamps[-1] == "2025-04-03T23:59:00+00:00"


def test_cursor_is_opaque_base64_and_bound_to_its_query(client: httpx.Client, server: SandboxServer) -> None:
    uid = server.junction.user_ids[0]
    path = f"/v2/timeseries/{uid}/heartrate/grouped"
    cursor = client.get(path, params={"start_date": "2025-04-01", "end_date": "2025-04-02"}).json()[
        "next_cursor"
    ]
    base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    # Changing the query while keeping the cursor is a client bug: refuse it instead of serving wrong data.
    response = client.get(
        path, params={"start_date": "2025-04-01", "end_date": "2025-04-05", "next_cursor": cursor}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "next_cursor"]
    assert client.get(path, params={"start_date": "2025-04-01", "next_cursor": "%%%"}).status_code == 422


def test_timeseries_range_bounds_are_inclusive_and_date_only_end_is_end_of_day(
    client: httpx.Client, server: SandboxServer
) -> None:
    uid = server.junction.user_ids[1]
    path = f"/v2/timeseries/{uid}/steps/grouped"
    data = client.get(
        path, params={"start_date": "2025-04-01T10:00:00+00:00", "end_date": "2025-04-01T11:00:00+00:00"}
    ).json()
    (group,) = next(iter(data["groups"].values()))
    assert [s["timestamp"][11:16] for s in group["data"]] == ["10:00", "10:15", "10:30", "10:45", "11:00"]
    day = client.get(path, params={"start_date": "2025-04-01", "end_date": "2025-04-01"}).json()
    (group,) = next(iter(day["groups"].values()))
    assert group["data"][-1]["timestamp"] == "2025-04-01T23:45:00+00:00"


def test_users_without_a_cgm_get_empty_glucose_groups(client: httpx.Client, server: SandboxServer) -> None:
    user = _user(server, cgm=False)
    body = client.get(
        f"/v2/timeseries/{user.user_id}/glucose/grouped", params={"start_date": "2025-04-01"}
    ).json()
    assert body == {"groups": {}, "next": None, "next_cursor": None}


def test_resources_we_do_not_generate_answer_with_empty_groups(
    client: httpx.Client, server: SandboxServer
) -> None:
    body = client.get(
        f"/v2/timeseries/{server.junction.user_ids[0]}/distance/grouped", params={"start_date": "2025-04-01"}
    ).json()
    assert body == {"groups": {}, "next": None, "next_cursor": None}


def test_timezone_offset_follows_dst(client: httpx.Client, server: SandboxServer) -> None:
    user = _user(server, zone="America/New_York")
    body = client.get(
        f"/v2/timeseries/{user.user_id}/steps/grouped",
        params={"start_date": "2025-03-08", "end_date": "2025-03-10"},
    ).json()
    offsets = {
        s["timestamp"][:13]: s["timezone_offset"] for g in body["groups"][user.provider] for s in g["data"]
    }
    assert offsets["2025-03-09T06"] == -5 * 3600  # 01:00 EST
    assert offsets["2025-03-09T07"] == -4 * 3600  # 03:00 EDT: the clocks went forward


def test_nothing_after_now_is_served(client: httpx.Client, server: SandboxServer, all_pages) -> None:
    user = _user(server, cgm=True)
    now = datetime(2025, 3, 15, 10, 7, 30, tzinfo=UTC)
    with time_machine.travel(now, tick=False):
        for resource in ("heartrate", "steps", "glucose"):
            samples, _ = all_pages(
                client,
                f"/v2/timeseries/{user.user_id}/{resource}/grouped",
                {"start_date": "2025-03-14", "end_date": "2025-03-20"},
            )
            assert samples
            for s in samples:
                assert _parse(s["timestamp"]) <= now
                if "end" in s:
                    assert _parse(s["end"]) <= now  # an interval is only served once it has ended
            # ...but today is there, up to now: the last minute, 5-minute reading or 15-minute interval.
            assert _parse(samples[-1]["timestamp"]) > now - timedelta(minutes=30)
        for kind in ("sleep", "activity", "workouts", "body"):
            records = client.get(
                f"/v2/summary/{kind}/{user.user_id}", params={"start_date": "2025-03-01"}
            ).json()[kind]
            for r in records:
                assert _parse(r["created_at"]) <= now and _parse(r["updated_at"]) <= now
                assert r["calendar_date"] <= "2025-03-15"
                for field in ("bedtime_stop", "time_end"):
                    if field in r:
                        assert _parse(r[field]) <= now


def test_todays_activity_is_partial_and_grows(client: httpx.Client, server: SandboxServer) -> None:
    user = _user(server, zone="UTC")
    path = f"/v2/summary/activity/{user.user_id}"
    params = {"start_date": "2025-03-15", "end_date": "2025-03-15"}
    with time_machine.travel(datetime(2025, 3, 15, 12, 0, tzinfo=UTC), tick=False) as traveller:
        (noon,) = client.get(path, params=params).json()["activity"]
        traveller.move_to(datetime(2025, 3, 15, 20, 0, tzinfo=UTC))
        (evening,) = client.get(path, params=params).json()["activity"]
        traveller.move_to(datetime(2025, 3, 17, tzinfo=UTC))
        (final,) = client.get(path, params=params).json()["activity"]
    assert noon["id"] == evening["id"] == final["id"]  # same record, newer versions: upsert by id
    assert noon["steps"] <= evening["steps"] <= final["steps"]
    assert noon["updated_at"] == "2025-03-15T12:00:00+00:00" < evening["updated_at"] < final["updated_at"]


def test_python_helpers_return_exactly_what_http_serves(
    client: httpx.Client, server: SandboxServer, all_pages
) -> None:
    user = _user(server, cgm=True)
    start, end = datetime(2025, 2, 27, 6, 30, tzinfo=UTC), datetime(2025, 3, 2, 18, 0, tzinfo=UTC)
    for resource in ("heartrate", "glucose", "hrv"):
        served, _ = all_pages(
            client,
            f"/v2/timeseries/{user.user_id}/{resource}/grouped",
            {"start_date": start.isoformat(), "end_date": end.isoformat()},
        )
        assert server.junction.samples(user.user_id, resource, start, end) == served
    for kind in ("sleep", "activity", "workouts", "body"):
        served = client.get(
            f"/v2/summary/{kind}/{user.user_id}",
            params={"start_date": "2025-02-01", "end_date": "2025-02-28"},
        ).json()[kind]
        assert server.junction.summaries(user.user_id, kind, date(2025, 2, 1), date(2025, 2, 28)) == served


def test_samples_are_encoded_as_orjson_would(server: SandboxServer) -> None:
    """Samples are written with a fast template; make sure it is byte-identical to real JSON encoding."""
    user = _user(server, cgm=True)
    for resource in RESOURCE_UNITS:
        for sample in server.junction.samples(
            user.user_id, resource, datetime(2025, 1, 5), datetime(2025, 1, 6)
        ):
            assert orjson.loads(orjson.dumps(sample)) == sample
    from sandbox import junction_data

    day = junction_data.series(user, date(2025, 1, 5), "calories_active")
    for i in range(len(day)):
        raw = day.sample(i)
        assert orjson.dumps(orjson.loads(raw)) == raw
