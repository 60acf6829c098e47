"""The WHOOP, Dexcom and LibreLinkUp sandboxes answer as the real APIs do (plain HTTP, no database)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import httpx

from sandbox import SandboxServer


def whoop_tokens(server: SandboxServer) -> dict:
    return server.whoop.oauth.issue_tokens(1)


def test_whoop_limit_over_25_is_400_and_pages_follow_next_token(server: SandboxServer) -> None:
    token = whoop_tokens(server)["access_token"]
    headers = {"authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.whoop_url, headers=headers, timeout=10) as client:
        assert client.get("/developer/v2/cycle", params={"limit": 26}).status_code == 400
        first = client.get("/developer/v2/cycle", params={"limit": 25})
        assert first.status_code == 200 and first.headers["X-RateLimit-Remaining"]
        body = first.json()
        assert len(body["records"]) == 25 and body["next_token"]
        starts = [r["start"] for r in body["records"]]
        assert starts == sorted(starts, reverse=True)
        second = client.get("/developer/v2/cycle", params={"limit": 25, "nextToken": body["next_token"]})
        assert second.json()["records"][0]["start"] < starts[-1]
        assert client.get("/developer/v2/recovery/123").status_code == 404  # no such route in v2


def test_whoop_refresh_rotates_and_kills_the_old_token_at_once(server: SandboxServer) -> None:
    pair = whoop_tokens(server)
    form = {
        "grant_type": "refresh_token",
        "refresh_token": pair["refresh_token"],
        "client_id": server.whoop.oauth.client_id,
        "client_secret": server.whoop.oauth.client_secret,
        "scope": "offline",
    }
    first = httpx.post(f"{server.whoop_url}/oauth/oauth2/token", data=form)
    again = httpx.post(f"{server.whoop_url}/oauth/oauth2/token", data=form)
    assert first.status_code == 200 and first.json()["refresh_token"] != pair["refresh_token"]
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert server.whoop.oauth.refresh_calls() == 2


def test_whoop_answers_429_past_the_per_minute_limit(server: SandboxServer) -> None:
    server.whoop.per_minute = 3
    token = whoop_tokens(server)["access_token"]
    with httpx.Client(base_url=server.whoop_url, headers={"authorization": f"Bearer {token}"}) as client:
        statuses = [client.get("/developer/v2/user/profile/basic").status_code for _ in range(4)]
        limited = client.get("/developer/v2/user/profile/basic")
    assert statuses == [200, 200, 200, 429]
    assert int(limited.headers["X-RateLimit-Reset"]) >= 1 and limited.headers["X-RateLimit-Remaining"] == "0"


def test_dexcom_rejects_long_windows_and_offsets_and_delays_data(server: SandboxServer) -> None:
    token = server.dexcom.oauth.issue_tokens(2)["access_token"]
    now = datetime.now(UTC).replace(microsecond=0)
    fmt = "%Y-%m-%dT%H:%M:%S"
    with httpx.Client(base_url=server.dexcom_url, headers={"authorization": f"Bearer {token}"}) as client:
        long = {"startDate": (now - timedelta(days=31)).strftime(fmt), "endDate": now.strftime(fmt)}
        assert client.get("/v3/users/self/egvs", params=long).status_code == 400
        offset = {"startDate": "2026-01-01T00:00:00+01:00", "endDate": "2026-01-02T00:00:00"}
        assert client.get("/v3/users/self/egvs", params=offset).status_code == 400
        ok = client.get(
            "/v3/users/self/egvs",
            params={"startDate": (now - timedelta(hours=3)).strftime(fmt), "endDate": now.strftime(fmt)},
        )
    body = ok.json()
    assert body["recordType"] == "egv" and body["recordVersion"] == "3.0" and body["userId"]
    newest = max(r["systemTime"] for r in body["records"])
    assert newest <= (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%MZ")  # the one-hour delay
    assert 20 <= len(body["records"]) <= 25
    assert httpx.get(f"{server.dexcom_url}/v3/users/self/egvs").status_code == 401


def libre_headers(version: str = "4.16.0") -> dict[str, str]:
    return {"product": "llu.android", "version": version}


def test_libre_redirects_by_region_and_rejects_an_old_version(server: SandboxServer) -> None:
    user = server.libre.user(1)
    creds = {"email": user.email, "password": user.password}
    old = httpx.post(f"{server.libre_url}/llu/auth/login", json=creds, headers=libre_headers("4.12.0"))
    assert old.status_code == 403 and old.json() == {"status": 920, "data": {"minimumVersion": "4.16.0"}}
    redirect = httpx.post(f"{server.libre_url}/llu/auth/login", json=creds, headers=libre_headers()).json()
    assert redirect == {"status": 0, "data": {"redirect": True, "region": user.region}}
    regional = f"{server.libre_url}/api-{user.region}"
    login = httpx.post(f"{regional}/llu/auth/login", json=creds, headers=libre_headers()).json()
    ticket = login["data"]["authTicket"]
    assert login["status"] == 0 and ticket["duration"] == 15_552_000_000
    auth = {**libre_headers(), "authorization": f"Bearer {ticket['token']}"}
    missing = httpx.get(f"{regional}/llu/connections", headers=auth)
    assert missing.json() == {"message": "RequiredHeaderMissing"}
    account = hashlib.sha256(login["data"]["user"]["id"].encode()).hexdigest()
    graph = httpx.get(
        f"{regional}/llu/connections/{user.patient_id}/graph", headers={**auth, "account-id": account}
    ).json()
    assert graph["status"] == 0 and 130 <= len(graph["data"]["graphData"]) <= 145
    assert "TrendArrow" in graph["data"]["connection"]["glucoseMeasurement"]


def test_libre_locks_an_account_after_three_failed_logins(server: SandboxServer) -> None:
    user = server.libre.user(2)
    url = f"{server.libre_url}/api-{user.region}/llu/auth/login"
    bad = {"email": user.email, "password": "nope"}
    bodies = [httpx.post(url, json=bad, headers=libre_headers()).json()["status"] for _ in range(3)]
    locked = httpx.post(url, json={"email": user.email, "password": user.password}, headers=libre_headers())
    assert bodies == [2, 2, 2]
    assert locked.status_code == 429 and locked.json()["data"]["message"] == "locked"
