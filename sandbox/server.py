"""The sandbox HTTP server: one loopback listener, providers routed by path prefix, a control API.

    with SandboxServer(port=0, users=20, seed=42) as srv:
        httpx.get(f"{srv.junction_url}/v2/user", headers={"x-vital-api-key": srv.api_key})

Routing: `/junction/...` -> JunctionSandbox (later `/whoop`, `/dexcom`, `/libre`, one module each, added with
`register()`); `/_sandbox/...` -> the control API (faults, request log, health; no auth).

Built on the standard library's ThreadingHTTPServer so it runs without Django and without extra dependencies.
HTTP/1.1 with Content-Length on every response keeps client connections alive, which matters when a benchmark
pulls hundreds of pages. Each response goes out in a single write (head + body) with Nagle disabled, which avoids
the 40 ms delayed-ACK stall a separate header write would cause on loopback.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator
from datetime import UTC, date, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from sandbox import junction_data
from sandbox.base import Provider, Request, Response, json_response
from sandbox.clerk import ClerkSandbox
from sandbox.dexcom import DexcomSandbox
from sandbox.faults import FaultError, FaultSet, retyped
from sandbox.junction import DEFAULT_API_KEY, JunctionSandbox
from sandbox.libre import LibreSandbox
from sandbox.webhooks import WebhookEmitter
from sandbox.whoop import WhoopSandbox

logger = logging.getLogger("sandbox")

CONTROL_PREFIX = "/_sandbox"


class RequestLog:
    """Thread-safe, bounded, list-like log of provider requests (control API calls are not logged).

    Entries: {"method", "path", "query", "status", "provider", "user_id", "at", "t", "fault"}. Header values (the
    API key, tokens) are never recorded. Indexing and iteration work on a snapshot.
    """

    def __init__(self, maxlen: int = 200_000) -> None:
        self._lock = threading.Lock()
        self._items: deque[dict[str, Any]] = deque(maxlen=maxlen)

    def append(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._items.append(entry)

    def clear(self) -> int:
        with self._lock:
            n = len(self._items)
            self._items.clear()
            return n

    def snapshot(
        self,
        *,
        provider: str | None = None,
        user_id: str | None = None,
        path_contains: str | None = None,
        method: str | None = None,
    ) -> list[dict[str, Any]]:
        with self._lock:
            items = list(self._items)
        return [
            e
            for e in items
            if (provider is None or e["provider"] == provider)
            and (user_id is None or e["user_id"] == user_id)
            and (path_contains is None or path_contains in e["path"])
            and (method is None or e["method"] == method.upper())
        ]

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.snapshot())

    def __getitem__(self, index: int | slice) -> Any:
        return self.snapshot()[index]

    def __bool__(self) -> bool:
        return len(self) > 0

    def __repr__(self) -> str:
        return f"<RequestLog {len(self)} entries>"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LoopSyncSandbox/1.0"
    disable_nagle_algorithm = True
    timeout = 120  # idle keep-alive connections give their thread back eventually
    server: SandboxServer

    def setup(self) -> None:
        super().setup()
        self.server._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server._track(self.connection, add=False)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            self._write(json_response(400, {"detail": "Malformed request body"}))
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        response = self.server.dispatch(self.command, self.path, headers, body)
        self._write(response)

    def _write(self, response: Response) -> None:
        try:
            phrase = HTTPStatus(response.status).phrase
        except ValueError:
            phrase = "Unknown"
        lines = [
            f"HTTP/1.1 {response.status} {phrase}",
            f"Server: {self.server_version}",
            f"Date: {self.date_time_string()}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
        ]
        lines.extend(f"{name}: {value}" for name, value in response.headers)
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            self.wfile.write(head + response.body)
        except (BrokenPipeError, ConnectionResetError):
            # Typical after a "timeout" fault: the client gave up before we answered.
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        if self.server.verbose:
            sys.stderr.write(f"sandbox: {format % args}\n")


class SandboxServer(ThreadingHTTPServer):
    """The provider sandbox on 127.0.0.1. Binds in the constructor (so `port`/`base_url` are known at once);
    `start()` serves from a daemon thread, `stop()` shuts down and drops open keep-alive connections."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        port: int = 0,
        users: int = 20,
        seed: int = 42,
        api_key: str = DEFAULT_API_KEY,
        page_size: int = 2000,
        *,
        data_start: date = junction_data.DEFAULT_DATA_START,
        verbose: bool = False,
        dev_clerk_key: bool = False,
    ) -> None:
        self.verbose = verbose
        self.api_key = api_key
        self.faults = FaultSet()
        self.requests = RequestLog()
        self.providers: dict[str, Provider] = {}
        self.junction = JunctionSandbox(
            users=users, seed=seed, api_key=api_key, page_size=page_size, data_start=data_start
        )
        self.register(self.junction)
        # The direct providers: same user count and seed, their own deterministic data and OAuth servers.
        self.whoop = WhoopSandbox(users=users, seed=seed)
        self.dexcom = DexcomSandbox(users=users, seed=seed)
        self.libre = LibreSandbox(users=users, seed=seed)
        for direct in (self.whoop, self.dexcom, self.libre):
            self.register(direct)
        # Clerk's JWKS, so the consumer API's token verification runs over real HTTP too. The command-line
        # sandbox signs with the published development key (a stable issuer for local work); tests do not.
        self.clerk = ClerkSandbox(dev_key=dev_clerk_key)
        self.register(self.clerk)
        # The webhook sender (sandbox/webhooks.py), when a demo, test or benchmark attaches one.
        self.webhooks: WebhookEmitter | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._stopped = False
        super().__init__(("127.0.0.1", port), _Handler)  # loopback only: this server has no real auth
        self.clerk.issuer = self.clerk_url

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can take seconds.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    # ------------------------------------------------------------------------------------ public API

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def junction_url(self) -> str:
        return self.base_url + self.junction.prefix

    @property
    def whoop_url(self) -> str:
        return self.base_url + self.whoop.prefix

    @property
    def dexcom_url(self) -> str:
        return self.base_url + self.dexcom.prefix

    @property
    def libre_url(self) -> str:
        return self.base_url + self.libre.prefix

    @property
    def clerk_url(self) -> str:
        return self.base_url + self.clerk.prefix

    def register(self, provider: Provider) -> None:
        """Mount a provider at its prefix (one path segment, e.g. "/whoop")."""
        if provider.prefix in self.providers:
            raise ValueError(f"a provider is already mounted at {provider.prefix}")
        self.providers[provider.prefix] = provider

    def reset(self) -> None:
        """Clear faults, the request log and provider state (rate-limit counters)."""
        self.faults.clear()
        self.requests.clear()
        for provider in self.providers.values():
            provider.reset()

    def start(self) -> SandboxServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"sandbox:{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
        # Keep-alive connections live in their own threads; close them so clients see the server go away.
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.server_close()

    def serve_forever_in_foreground(self) -> None:
        """Serve on the calling thread until KeyboardInterrupt / SIGTERM (handled by the CLI)."""
        try:
            self.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            pass
        finally:
            self._stopped = True
            self.server_close()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------ internals

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._connections_lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            return  # clients hanging up (timeouts, test teardown) are not sandbox errors
        super().handle_error(request, client_address)

    def dispatch(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> Response:
        """Answer one request (also usable without sockets, e.g. from a test)."""
        split = urlsplit(raw_path)
        path = split.path
        query_string = split.query
        query: dict[str, str] = {}
        for key, value in parse_qsl(query_string, keep_blank_values=True):
            query.setdefault(key, value)  # first value wins, like a scalar FastAPI parameter
        if path == CONTROL_PREFIX or path.startswith(CONTROL_PREFIX + "/"):
            return self._control(method, path, query, body)

        arrived = datetime.now(UTC)
        provider = self._provider_for(path)
        user_id: str | None = None
        fault = None
        if provider is None:
            response = json_response(404, {"detail": "Not Found"})
        else:
            subpath = path[len(provider.prefix) :] or "/"
            user_id = provider.user_id_for(method, subpath)
            if user_id is None and hasattr(provider, "user_id_from_headers"):
                # Token-authenticated providers (WHOOP, Dexcom, Libre) know the user from the bearer token.
                user_id = provider.user_id_from_headers(headers)
            fault = self.faults.match(provider.name, user_id, path, method, query_string)
            response = self._answer(provider, fault, method, path, subpath, query, headers, body)
        self.requests.append(
            {
                "method": method,
                "path": path,
                "query": query,
                "status": response.status,
                "provider": provider.name if provider else None,
                "user_id": user_id,
                "at": arrived.isoformat(),
                # Real seconds (not moved by time-machine), to count requests per rate-limit window.
                "t": time.perf_counter(),
                "fault": fault.id if fault else None,
            }
        )
        return response

    def _provider_for(self, path: str) -> Provider | None:
        segment = "/" + path.lstrip("/").split("/", 1)[0]
        return self.providers.get(segment)

    def _answer(
        self,
        provider: Provider,
        fault: Any,
        method: str,
        path: str,
        subpath: str,
        query: dict[str, str],
        headers: dict[str, str],
        body: bytes,
    ) -> Response:
        malformed: str | None = None
        if fault is not None:
            if fault.kind == "status":
                extra = [("Retry-After", h)] if (h := fault.retry_after_header()) else []
                detail = fault.detail if fault.detail is not None else HTTPStatus(fault.status).phrase
                body = fault.body if fault.body is not None else {"detail": detail}
                return json_response(fault.status, body, extra)
            if fault.kind in ("timeout", "slow"):
                time.sleep(fault.delay)
            elif fault.kind == "malformed":
                malformed = fault.mode or "auto"
        request = Request(
            method=method,
            path=path,
            subpath=subpath,
            query=query,
            headers=headers,
            body=body,
            now=datetime.now(UTC),  # read after any fault delay: the answer reflects the time it is sent
            malformed=None if malformed == "truncated" else _provider_mode(malformed, subpath),
        )
        try:
            response = provider.handle(request)
        except Exception:  # a sandbox bug must not look like a hung connection to the client under test
            traceback.print_exc()
            return json_response(500, {"detail": "Internal Server Error"})
        if malformed == "truncated" and response.status < 300:
            response.body = response.body[: len(response.body) // 2]
        if fault is not None and fault.kind == "lost":
            time.sleep(fault.delay)  # handled (and any rotation done); the answer arrives too late
        if fault is not None and fault.kind == "retype" and response.status < 300:
            response.body = orjson.dumps(retyped(orjson.loads(response.body), fault.path, fault.value))
        return response

    # ---------------------------------------------------------------------------------- control API

    def _control(self, method: str, path: str, query: dict[str, str], body: bytes) -> Response:
        route = path[len(CONTROL_PREFIX) :].rstrip("/")
        if route == "/health" and method == "GET":
            return json_response(200, {"ok": True})
        if route == "/faults":
            if method == "GET":
                return json_response(200, {"faults": self.faults.list()})
            if method == "DELETE":
                n = len(self.faults)
                self.faults.clear()
                return json_response(200, {"cleared": n})
            if method == "POST":
                try:
                    spec = orjson.loads(body or b"null")
                    if isinstance(spec, list):
                        return json_response(201, {"faults": [self.faults.add(s) for s in spec]})
                    return json_response(201, self.faults.add(spec))
                except orjson.JSONDecodeError:
                    return json_response(400, {"detail": "body must be JSON"})
                except FaultError as exc:
                    return json_response(400, {"detail": str(exc)})
        if route.startswith("/faults/") and method == "DELETE":
            try:
                removed = self.faults.remove(int(route.rsplit("/", 1)[1]))
            except ValueError:
                removed = False
            return json_response(200 if removed else 404, {"deleted": removed})
        if route == "/requests":
            if method == "GET":
                entries = self.requests.snapshot(
                    provider=query.get("provider"),
                    user_id=query.get("user_id"),
                    path_contains=query.get("path_contains"),
                    method=query.get("method"),
                )
                return json_response(200, {"requests": entries})
            if method == "DELETE":
                return json_response(200, {"cleared": self.requests.clear()})
        if route == "/webhooks/faults" and method == "POST":
            # The webhook sender's switches (sandbox/webhooks.py FAULTS): {"fault": "duplicate", "count": 2}.
            if self.webhooks is None:
                return json_response(409, {"detail": "no webhook sender is attached"})
            try:
                spec = orjson.loads(body or b"null")
                self.webhooks.fault(str(spec["fault"]), int(spec.get("count", 1)))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                return json_response(400, {"detail": f"body must be {{fault, count}}: {exc}"})
            return json_response(201, {"faults": self.webhooks.faults})
        if route == "/reset" and method == "POST":
            self.reset()
            return json_response(200, {"ok": True})
        return json_response(404, {"detail": "Not Found"})


def _provider_mode(mode: str | None, subpath: str) -> str | None:
    """Resolve the default corruption: a bad sample value for timeseries, a missing field for objects."""
    if mode != "auto":
        return mode
    return "value" if "/timeseries/" in subpath else "missing"
