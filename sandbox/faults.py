"""Fault injection: make chosen requests fail, stall or return corrupt data, a given number of times.

A fault is a small dict, added over HTTP (`POST /_sandbox/faults`) or in Python (`srv.faults.add({...})`):

    {"provider": "junction", "user_id": "...", "path_contains": "heartrate", "method": "GET",   # match (all optional)
     "status": 429, "retry_after": 1, "count": 2}                                              # effect

Kinds (`kind` may be left out when `status` is given):
- "status":    answer `status` with `{"detail": ...}` and `Retry-After` when `retry_after` is set; the provider
               never sees the request (so a 429 here does not count against the refresh limit).
- "timeout":   sleep `delay` seconds (default 10), then answer normally: a client with a shorter timeout times out.
- "slow":      sleep `delay` seconds (default 0.5), then answer normally.
- "malformed": answer normally but corrupt exactly one record; `mode` picks how:
               "value" (a sample value becomes "abc"), "timestamp" (a garbage timestamp), "missing" (a required
               field is dropped), or "truncated" (the body is cut in half: the only mode that breaks the JSON);
               and well-formed but impossible times, as a device with a broken clock sends them (Dexcom,
               Libre, WHOOP, Junction samples): "future" (its time of day, on the day after now), "ancient"
               (1970-01-01, an unset clock), "year_9999" and "year_1" (the calendar's edges).
               Default: "value" for timeseries, "missing" for summaries and other objects.
- "lost":      the provider handles the request (a token endpoint rotates the pair), then the answer is held
               `delay` seconds (default 10): a client with a shorter timeout never sees it, as when a response
               is lost on the way back.
- "status" with `body`: the error answer carries that JSON instead of {"detail": ...} (an OAuth error body,
               {"error": "invalid_request"}, or none of the fields a client expects).
- "retype":    answer normally, then set the JSON value at `path` (dotted keys and list indexes, "" for the whole
               body) to `value`: a field of the wrong type, as a provider's bug or an API change sends it, e.g.
               {"kind": "retype", "provider": "whoop", "path": "next_token", "value": {"a": 1}}.
`count` is how many matching requests the fault affects (default 1, -1 = forever); a used-up fault disappears.
When several faults match, the oldest wins and only it is used up.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

KINDS = ("status", "timeout", "slow", "malformed", "retype", "lost")
MALFORMED_MODES = ("value", "timestamp", "missing", "truncated", "future", "ancient", "year_9999", "year_1")
DEFAULT_DELAY = {"timeout": 10.0, "slow": 0.5, "lost": 10.0}
_FIELDS = {
    "kind",
    "provider",
    "user_id",
    "path_contains",
    "method",
    "status",
    "retry_after",
    "delay",
    "count",
    "detail",
    "mode",
    "path",
    "value",
    "body",
}


class FaultError(ValueError):
    """The fault spec is invalid (answered with 400 by the control API)."""


@dataclass(slots=True)
class Fault:
    id: int
    kind: str
    provider: str | None = None
    user_id: str | None = None
    path_contains: str | None = None
    method: str | None = None
    status: int | None = None
    retry_after: float | str | None = None
    delay: float = 0.0
    count: int = 1  # remaining uses; -1 = forever
    detail: Any = None
    mode: str | None = None
    path: str | None = None
    value: Any = None
    body: Any = None
    hits: int = 0  # how many requests it has affected so far

    def matches(self, provider: str | None, user_id: str | None, target: str, method: str) -> bool:
        return (
            (self.provider is None or self.provider == provider)
            and (self.user_id is None or self.user_id == user_id)
            and (self.path_contains is None or self.path_contains in target)
            and (self.method is None or self.method == method)
        )

    def retry_after_header(self) -> str | None:
        if self.retry_after is None:
            return None
        if isinstance(self.retry_after, float) and self.retry_after.is_integer():
            return str(int(self.retry_after))
        return str(self.retry_after)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _parse(fault_id: int, spec: Mapping[str, Any]) -> Fault:
    if not isinstance(spec, Mapping):
        raise FaultError("a fault must be a JSON object")
    unknown = set(spec) - _FIELDS - {"id", "hits"}
    if unknown:
        raise FaultError(f"unknown fault fields: {sorted(unknown)}")
    kind = spec.get("kind") or ("status" if spec.get("status") is not None else None)
    if kind not in KINDS:
        raise FaultError(f"kind must be one of {list(KINDS)} (or give a status)")
    status = spec.get("status")
    if kind == "status":
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
            raise FaultError("a status fault needs an integer status between 100 and 599")
    elif status is not None:
        raise FaultError(f"status is only valid for status faults, not {kind!r}")
    count = spec.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count == 0 or count < -1:
        raise FaultError("count must be a positive integer or -1 (forever)")
    delay = spec.get("delay", DEFAULT_DELAY.get(kind, 0.0))
    if not isinstance(delay, int | float) or isinstance(delay, bool) or delay < 0:
        raise FaultError("delay must be a non-negative number of seconds")
    retry_after = spec.get("retry_after")
    if retry_after is not None and (
        isinstance(retry_after, bool) or not isinstance(retry_after, int | float | str)
    ):
        raise FaultError("retry_after must be a number of seconds or an HTTP date string")
    mode = spec.get("mode")
    if mode is not None and (kind != "malformed" or mode not in MALFORMED_MODES):
        raise FaultError(
            f"mode is only valid for malformed faults and must be one of {list(MALFORMED_MODES)}"
        )
    if kind == "retype" and not isinstance(spec.get("path"), str):
        raise FaultError('a retype fault needs a path (dotted keys and list indexes, or "" for the body)')
    if kind != "retype" and ("path" in spec or "value" in spec):
        raise FaultError("path and value are only valid for retype faults")
    if kind != "status" and "body" in spec:
        raise FaultError("body is only valid for status faults")
    for key in ("provider", "user_id", "path_contains", "method"):
        if spec.get(key) is not None and not isinstance(spec[key], str):
            raise FaultError(f"{key} must be a string")
    user_id = spec.get("user_id")
    method = spec.get("method")
    return Fault(
        id=fault_id,
        kind=kind,
        provider=spec.get("provider"),
        user_id=user_id.lower() if user_id else None,  # user ids are matched in canonical lower-case form
        path_contains=spec.get("path_contains"),
        method=method.upper() if method else None,
        status=status,
        retry_after=float(retry_after) if isinstance(retry_after, int) else retry_after,
        delay=float(delay),
        count=count,
        detail=spec.get("detail"),
        mode=mode,
        path=spec.get("path"),
        value=spec.get("value"),
        body=spec.get("body"),
    )


class FaultSet:
    """Thread-safe, ordered set of active faults. `match` both finds and uses up a fault, atomically,
    so two concurrent requests can never both consume the last use of a count=1 fault."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._ids = itertools.count(1)

    def add(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Validate and add a fault; returns it as a dict including its `id`. Raises FaultError."""
        with self._lock:
            fault = _parse(next(self._ids), spec)
            self._faults.append(fault)
            return fault.to_dict()

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def remove(self, fault_id: int) -> bool:
        with self._lock:
            before = len(self._faults)
            self._faults = [f for f in self._faults if f.id != fault_id]
            return len(self._faults) != before

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.to_dict() for f in self._faults]

    def __len__(self) -> int:
        with self._lock:
            return len(self._faults)

    def match(
        self, provider: str | None, user_id: str | None, path: str, method: str, query_string: str = ""
    ) -> Fault | None:
        """The oldest fault matching this request, used up by one; None if nothing matches.

        `path_contains` is tested against the path plus "?query" (so a fault can target e.g. "next_cursor=").
        Returns a copy so the caller can read it after the live fault has been removed.
        """
        target = f"{path}?{query_string}" if query_string else path
        method = method.upper()
        with self._lock:
            for i, fault in enumerate(self._faults):
                if not fault.matches(provider, user_id, target, method):
                    continue
                fault.hits += 1
                if fault.count > 0:
                    fault.count -= 1
                    if fault.count == 0:
                        del self._faults[i]
                return Fault(**fault.to_dict())
        return None


TIME_MODES = ("future", "ancient", "year_9999", "year_1")


def shifted_time(original: datetime, mode: str, now: datetime) -> datetime:
    """The impossible instant a time-shifting malformed mode puts in place of a record's real one."""
    if mode == "future":
        # A clock a day ahead: the record's time of day, on the day after the sandbox's now.
        return original + ((now - original) // timedelta(days=1) + 1) * timedelta(days=1)
    if mode == "ancient":
        return datetime(1970, 1, 1, 0, 5, tzinfo=UTC)
    if mode == "year_9999":
        return datetime(9999, 12, 31, 23, 55, tzinfo=UTC)
    return datetime(1, 1, 1, 0, 5, tzinfo=UTC)


def retyped(body: Any, path: str, value: Any) -> Any:
    """`body` with the value at the dotted `path` replaced (list indexes as numbers); "" replaces it all."""
    if not path:
        return value
    *parents, last = path.split(".")
    node = body
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return body
