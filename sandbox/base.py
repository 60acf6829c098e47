"""Plumbing shared by every simulated provider: the request/response values and the provider protocol.

Providers never touch sockets. The server parses HTTP into a `Request`, picks the provider by path prefix
(`/junction`, later `/whoop`, `/dexcom`, `/libre`), and writes whatever `Response` comes back. That keeps each
provider a plain object that tests can also call directly, and keeps HTTP details in one place (server.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import orjson

JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str  # full path as received, without the query string, e.g. "/junction/v2/user"
    subpath: str  # path below the provider prefix, e.g. "/v2/user"
    query: Mapping[str, str]  # first value of each parameter, like FastAPI scalar params
    headers: Mapping[str, str]  # lower-cased names
    body: bytes
    # One "now" per request, read once when the request arrives, so every filter in it agrees
    # (and time-machine in tests moves it).
    now: datetime
    # Set when a "malformed" fault matched: the provider corrupts exactly one record of its payload.
    malformed: str | None = None


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = JSON


def json_response(status: int, payload: Any, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, orjson.dumps(payload), headers or [])


class HTTPError(Exception):
    """Raised inside a provider to answer with an error; rendered as FastAPI does: `{"detail": ...}`."""

    def __init__(self, status: int, detail: Any, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(f"{status}: {detail!r}")
        self.status = status
        self.detail = detail
        self.headers = headers or []

    def to_response(self) -> Response:
        return json_response(self.status, {"detail": self.detail}, self.headers)


class Provider(Protocol):
    """What the server needs from a simulated provider."""

    name: str  # "junction": used in the request log and to match faults
    prefix: str  # "/junction": requests whose path starts with it are routed here

    def user_id_for(self, method: str, subpath: str) -> str | None:
        """The user a request is about (for fault matching and the request log), without handling it."""
        ...

    def handle(self, request: Request) -> Response: ...

    def reset(self) -> None:
        """Forget per-run state (rate-limit counters); generated data is deterministic and stays."""
        ...
