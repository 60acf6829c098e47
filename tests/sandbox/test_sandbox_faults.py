"""Fault injection: status faults with Retry-After, timeouts, slow answers, corrupt payloads, counts, matching."""

from __future__ import annotations

import time

import httpx
import orjson
import pytest

from sandbox import SandboxServer

PARAMS = {"start_date": "2025-04-01", "end_date": "2025-04-01"}


def _heartrate(server: SandboxServer, index: int = 0) -> str:
    return f"/v2/timeseries/{server.junction.user_ids[index]}/heartrate/grouped"


def test_429_fault_carries_retry_after_then_clears(
    client: httpx.Client, control: httpx.Client, server: SandboxServer
) -> None:
    uid = server.junction.user_ids[0]
    created = control.post(
        "/_sandbox/faults",
        json={
            "provider": "junction",
            "user_id": uid,
            "path_contains": "heartrate",
            "status": 429,
            "retry_after": 1,
            "count": 2,
        },
    )
    assert created.status_code == 201
    assert created.json()["id"] and created.json()["kind"] == "status"
    for _ in range(2):
        response = client.get(_heartrate(server), params=PARAMS)
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "1"
        assert isinstance(response.json()["detail"], str)
    assert client.get(_heartrate(server), params=PARAMS).status_code == 200
    assert control.get("/_sandbox/faults").json() == {"faults": []}  # used up faults disappear


@pytest.mark.parametrize("status", [500, 503, 401])
def test_status_faults_answer_with_a_json_detail(
    client: httpx.Client, server: SandboxServer, status: int
) -> None:
    server.faults.add({"status": status})
    response = client.get("/v2/user")
    assert response.status_code == status
    assert "detail" in response.json()
    assert "Retry-After" not in response.headers
    assert client.get("/v2/user").status_code == 200


def test_fault_matches_only_its_user_path_and_method(client: httpx.Client, server: SandboxServer) -> None:
    target, other = server.junction.user_ids[0], server.junction.user_ids[1]
    server.faults.add(
        {"user_id": target, "path_contains": "/steps/", "method": "GET", "status": 503, "count": -1}
    )
    assert client.get(f"/v2/timeseries/{other}/steps/grouped", params=PARAMS).status_code == 200
    assert client.get(f"/v2/timeseries/{target}/heartrate/grouped", params=PARAMS).status_code == 200
    assert client.post(f"/v2/user/refresh/{target}").status_code == 200
    assert client.get(f"/v2/timeseries/{target}/steps/grouped", params=PARAMS).status_code == 503


def test_fault_with_count_minus_one_lasts_until_deleted(
    client: httpx.Client, control: httpx.Client, server: SandboxServer
) -> None:
    control.post("/_sandbox/faults", json={"status": 503, "count": -1})
    for _ in range(5):
        assert client.get("/v2/user").status_code == 503
    (fault,) = control.get("/_sandbox/faults").json()["faults"]
    assert fault["hits"] == 5 and fault["count"] == -1
    assert control.delete("/_sandbox/faults").json() == {"cleared": 1}
    assert client.get("/v2/user").status_code == 200


def test_a_single_fault_can_be_deleted_by_id(client: httpx.Client, control: httpx.Client) -> None:
    fault = control.post("/_sandbox/faults", json={"status": 500, "count": -1}).json()
    assert control.delete(f"/_sandbox/faults/{fault['id']}").json() == {"deleted": True}
    assert client.get("/v2/user").status_code == 200


def test_timeout_fault_makes_a_shorter_client_timeout_fire(server: SandboxServer) -> None:
    server.faults.add({"kind": "timeout", "delay": 1.0, "path_contains": "/v2/user"})
    with httpx.Client(
        base_url=server.junction_url, headers={"x-vital-api-key": server.api_key}, timeout=0.2
    ) as c:
        with pytest.raises(httpx.TimeoutException):
            c.get("/v2/user")
        # The next request is unaffected (count defaults to 1), even on a fresh connection.
        assert c.get("/v2/user").status_code == 200


def test_slow_fault_delays_but_answers_normally(client: httpx.Client, server: SandboxServer) -> None:
    server.faults.add({"kind": "slow", "delay": 0.3})
    started = time.monotonic()
    response = client.get("/v2/user")
    assert response.status_code == 200 and response.json()["users"]
    assert time.monotonic() - started >= 0.3


def test_malformed_fault_corrupts_exactly_one_sample(client: httpx.Client, server: SandboxServer) -> None:
    clean = client.get(_heartrate(server), params=PARAMS).json()
    server.faults.add({"kind": "malformed", "path_contains": "heartrate"})
    bad = client.get(_heartrate(server), params=PARAMS).json()  # still valid JSON
    clean_data = next(iter(clean["groups"].values()))[0]["data"]
    bad_data = next(iter(bad["groups"].values()))[0]["data"]
    differing = [i for i, (a, b) in enumerate(zip(clean_data, bad_data, strict=True)) if a != b]
    assert len(differing) == 1
    assert bad_data[differing[0]]["value"] == "abc"
    assert bad["next_cursor"] == clean["next_cursor"]


@pytest.mark.parametrize(("mode", "check"), [
    ("timestamp", lambda s: s["timestamp"] == "not-a-timestamp"),
    ("missing", lambda s: "value" not in s),
])  # fmt: skip
def test_malformed_modes_for_samples(client: httpx.Client, server: SandboxServer, mode: str, check) -> None:
    server.faults.add({"kind": "malformed", "mode": mode})
    data = next(iter(client.get(_heartrate(server), params=PARAMS).json()["groups"].values()))[0]["data"]
    assert sum(1 for s in data if check(s)) == 1


def test_malformed_fault_on_a_summary_drops_one_required_field(
    client: httpx.Client, server: SandboxServer
) -> None:
    path = f"/v2/summary/sleep/{server.junction.user_ids[0]}"
    params = {"start_date": "2025-04-01", "end_date": "2025-04-07"}
    server.faults.add({"kind": "malformed"})
    records = client.get(path, params=params).json()["sleep"]
    assert sum(1 for r in records if "calendar_date" not in r) == 1


def test_malformed_fault_does_not_poison_cached_data(client: httpx.Client, server: SandboxServer) -> None:
    path = f"/v2/summary/body/{server.junction.user_ids[0]}"
    params = {"start_date": "2025-04-01", "end_date": "2025-04-07"}
    before = client.get(path, params=params).json()
    server.faults.add({"kind": "malformed", "mode": "value"})
    assert client.get(path, params=params).json() != before
    assert client.get(path, params=params).json() == before
    assert (
        client.get(_heartrate(server), params=PARAMS).json()
        == client.get(_heartrate(server), params=PARAMS).json()
    )


def test_truncated_mode_breaks_the_json(client: httpx.Client, server: SandboxServer) -> None:
    server.faults.add({"kind": "malformed", "mode": "truncated"})
    response = client.get(_heartrate(server), params=PARAMS)
    assert response.status_code == 200
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(response.content)


def test_invalid_fault_specs_are_400(control: httpx.Client) -> None:
    for spec in (
        {"kind": "explode"},
        {"status": "429"},
        {"status": 429, "count": 0},
        {"status": 429, "colour": "red"},
    ):
        response = control.post("/_sandbox/faults", json=spec)
        assert response.status_code == 400, spec
    assert control.post("/_sandbox/faults", content=b"{nope").status_code == 400


def test_status_fault_does_not_count_against_the_refresh_limit(
    client: httpx.Client, server: SandboxServer
) -> None:
    uid = server.junction.user_ids[0]
    server.faults.add({"path_contains": "/refresh/", "status": 503, "count": 3})
    assert [client.post(f"/v2/user/refresh/{uid}").status_code for _ in range(3)] == [503] * 3
    assert [client.post(f"/v2/user/refresh/{uid}").status_code for _ in range(9)] == [200] * 8 + [429]


def test_faulted_requests_are_logged_with_the_fault_id(client: httpx.Client, server: SandboxServer) -> None:
    fault = server.faults.add({"status": 429, "retry_after": 2})
    client.get("/v2/user")
    (entry,) = server.requests.snapshot()
    assert entry["status"] == 429 and entry["fault"] == fault["id"]
