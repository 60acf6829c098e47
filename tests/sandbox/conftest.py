"""Fixtures for the provider sandbox tests: one server per module on a free loopback port, reset per test.

No database and no Django settings are needed: the sandbox is plain Python over real HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from sandbox import SandboxServer

API_KEY = "sk_us_loopsync_sandbox"
SEED = 42
PAGE_SIZE = 500


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    with SandboxServer(port=0, users=8, seed=SEED, api_key=API_KEY, page_size=PAGE_SIZE) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _clean_server(request: pytest.FixtureRequest) -> Iterator[None]:
    """Faults, the request log and refresh counters never leak from one test into the next."""
    if "server" in request.fixturenames:
        srv: SandboxServer = request.getfixturevalue("server")
        srv.reset()
        yield
        srv.reset()
    else:
        yield


@pytest.fixture
def client(server: SandboxServer) -> Iterator[httpx.Client]:
    """An authenticated client rooted at the Junction prefix, as our Junction client would be configured."""
    with httpx.Client(base_url=server.junction_url, headers={"x-vital-api-key": API_KEY}, timeout=10) as c:
        yield c


@pytest.fixture
def control(server: SandboxServer) -> Iterator[httpx.Client]:
    """A client for the sandbox control API (no auth)."""
    with httpx.Client(base_url=server.base_url, timeout=10) as c:
        yield c


@pytest.fixture
def all_pages() -> Callable[[httpx.Client, str, dict[str, str]], tuple[list[dict], list[dict]]]:
    """Follow next_cursor to the end, as our sync must; returns (merged samples, raw page bodies)."""
    return _all_pages


def _all_pages(client: httpx.Client, path: str, params: dict[str, str]) -> tuple[list[dict], list[dict]]:
    samples: list[dict] = []
    pages: list[dict] = []
    cursor = None
    while True:
        query = dict(params, next_cursor=cursor) if cursor else params
        response = client.get(path, params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body)
        for groups in body["groups"].values():
            for group in groups:
                samples.extend(group["data"])
        cursor = body["next_cursor"]
        if cursor is None:
            return samples, pages
        assert len(pages) < 10_000, "pagination does not terminate"
