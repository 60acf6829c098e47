"""The server itself: loopback binding, keep-alive, control API, request log, lifecycle, CLI."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from sandbox import SandboxServer

ROOT = Path(__file__).resolve().parents[2]


def test_server_binds_loopback_on_a_free_port_and_reports_urls(server: SandboxServer) -> None:
    assert server.server_address[0] == "127.0.0.1"
    assert server.port > 0
    assert server.base_url == f"http://127.0.0.1:{server.port}"
    assert server.junction_url == server.base_url + "/junction"


def test_health_is_ok(control: httpx.Client) -> None:
    assert control.get("/_sandbox/health").json() == {"ok": True}


def test_keep_alive_serves_many_requests_on_one_connection(server: SandboxServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("GET", "/_sandbox/health")
        first = conn.getresponse()
        assert first.read() == b'{"ok":true}'
        sock = conn.sock
        for _ in range(3):
            conn.request("GET", "/junction/v2/user?limit=1", headers={"x-vital-api-key": server.api_key})
            response = conn.getresponse()
            assert response.status == 200
            assert int(response.headers["Content-Length"]) == len(response.read())
        assert conn.sock is sock  # the connection was never closed and reopened
    finally:
        conn.close()


def test_unknown_provider_prefix_is_404(control: httpx.Client) -> None:
    response = control.get("/oura/v2/usercollection/sleep")  # /whoop is mounted since issue 3
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


def test_request_log_records_requests_but_never_header_values(
    client: httpx.Client, control: httpx.Client, server: SandboxServer
) -> None:
    uid = server.junction.user_ids[0]
    client.get(f"/v2/summary/sleep/{uid}", params={"start_date": "2025-04-01", "end_date": "2025-04-02"})
    client.get("/v2/user", headers={"x-vital-api-key": "sk_us_leaky"})
    control.get("/_sandbox/health")  # the control API is not logged
    body = control.get("/_sandbox/requests").json()
    first, second = body["requests"]
    assert first["method"] == "GET"
    assert first["path"] == f"/junction/v2/summary/sleep/{uid}"
    assert first["query"] == {"start_date": "2025-04-01", "end_date": "2025-04-02"}
    assert (first["status"], first["provider"], first["user_id"]) == (200, "junction", uid)
    assert first["at"].endswith("+00:00")
    assert second["status"] == 401 and second["user_id"] is None
    text = str(body)
    assert server.api_key not in text and "sk_us_leaky" not in text
    assert server.requests.snapshot(user_id=uid) == [first]
    assert list(server.requests) == body["requests"] and len(server.requests) == 2


def test_request_log_is_cleared_over_http(
    client: httpx.Client, control: httpx.Client, server: SandboxServer
) -> None:
    client.get("/v2/user")
    assert control.delete("/_sandbox/requests").json() == {"cleared": 1}
    assert control.get("/_sandbox/requests").json() == {"requests": []}
    assert len(server.requests) == 0


def test_reset_clears_faults_log_and_refresh_counters(
    client: httpx.Client, control: httpx.Client, server: SandboxServer
) -> None:
    uid = server.junction.user_ids[0]
    for _ in range(8):
        client.post(f"/v2/user/refresh/{uid}")
    server.faults.add({"status": 500, "path_contains": "/nothing-matches", "count": -1})
    assert control.post("/_sandbox/reset").json() == {"ok": True}
    assert len(server.faults) == 0 and len(server.requests) == 0
    assert client.post(f"/v2/user/refresh/{uid}").status_code == 200


def test_context_manager_starts_and_stop_closes_keep_alive_connections() -> None:
    with SandboxServer(port=0, users=1) as srv:
        c = httpx.Client(base_url=srv.base_url, timeout=2)
        assert c.get("/_sandbox/health").status_code == 200  # connection now pooled and kept alive
        port = srv.port
    with pytest.raises(httpx.TransportError):
        c.get("/_sandbox/health")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/_sandbox/health", timeout=2)
    c.close()


def test_stop_is_idempotent_and_works_without_start() -> None:
    srv = SandboxServer(port=0, users=1)
    srv.stop()
    srv.stop()


def test_cli_prints_the_base_url_and_serves_until_sigterm() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sandbox",
            "--port",
            "0",
            "--users",
            "3",
            "--seed",
            "5",
            "--api-key",
            "sk_us_cli",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": ""},  # proves it runs without Django configured
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        base_url = line.split()[-1]
        assert base_url.startswith("http://127.0.0.1:")
        response = httpx.get(
            f"{base_url}/junction/v2/user", headers={"x-vital-api-key": "sk_us_cli"}, timeout=5
        )
        assert response.json()["total"] == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_management_command_has_the_same_options() -> None:
    from sandbox.management.commands.sandbox import Command

    parser = Command().create_parser("manage.py", "sandbox")
    options = vars(parser.parse_args(["--port", "9000", "--users", "4", "--seed", "3", "--api-key", "k"]))
    assert (options["port"], options["users"], options["seed"], options["api_key"]) == (9000, 4, 3, "k")
