"""The sandbox's webhook sender: signed deliveries as Junction (through Svix) and WHOOP send them.

Junction (junction_api.md §8): the envelope `{event_type, data, user_id, client_user_id, team_id}` POSTed with
`svix-id` (the same on every redelivery), `svix-timestamp` (unix seconds, re-stamped per attempt) and
`svix-signature: v1,<base64 HMAC-SHA256(key, f"{id}.{timestamp}.{body}")>`, the key being the base64 part of the
`whsec_` secret. Success is any 2xx; otherwise Svix retries immediately, then after 5 s, 5 min, 30 min, 2 h,
5 h, 10 h and 10 h (`retry_scale` compresses the schedule: 0.001 turns 5 min into 0.3 s).
WHOOP (provider_apis.md §1.4): `{user_id, id, type, trace_id}` with `X-WHOOP-Signature` = base64 HMAC-SHA256 of
timestamp + body under the app's client secret and `X-WHOOP-Signature-Timestamp` (milliseconds).

The signing is written out here with hmac, not with the svix package the receiver uses: the two sides are
independent, so a mistake in either shows.

Fault switches (`emitter.faults`, each a count of deliveries it affects, -1 = forever):
- "duplicate":    the delivery is sent twice (Svix delivers at least once);
- "out_of_order": `send_many` shuffles the deliveries (seeded) instead of sending them in order;
- "bad_signature": signed with the wrong key;
- "stale_timestamp": stamped 10 minutes in the past;
- "tampered":     the body is changed after signing.
A 5xx (or any non-2xx, or no answer) from the receiver is retried on the schedule, as Svix does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

# Svix's documented schedule: the delay before each retry after a failed attempt (seconds).
SVIX_RETRY_SCHEDULE: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
DEFAULT_JUNCTION_SECRET = "whsec_" + base64.b64encode(b"loopsync-sandbox-junction-webhooks").decode()
FAULTS = ("duplicate", "out_of_order", "bad_signature", "stale_timestamp", "tampered")
TEAM_ID = "6b74423d-0504-4470-9afb-477252ccf67a"


def svix_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_") + "==")
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def whoop_signature(client_secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(client_secret.encode(), timestamp.encode() + body, hashlib.sha256).digest()
    return base64.b64encode(mac).decode()


@dataclass
class Outbound:
    """One message and what happened to it."""

    provider: str
    message_id: str
    body: bytes
    created: float  # time.time() when the data "arrived" (the freshness clock starts here)
    statuses: list[int] = field(default_factory=list)

    @property
    def delivered(self) -> bool:
        return any(200 <= s < 300 for s in self.statuses)


class WebhookEmitter:
    """Sends signed deliveries to the configured receiver URLs; `sent` keeps every message and its answers."""

    def __init__(
        self,
        *,
        junction_url: str = "",
        whoop_url: str = "",
        junction_secret: str = DEFAULT_JUNCTION_SECRET,
        whoop_client_secret: str = "",
        retry_scale: float = 1.0,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
        timeout: float = 15.0,
    ) -> None:
        self.junction_url = junction_url
        self.whoop_url = whoop_url
        self.junction_secret = junction_secret
        self.whoop_client_secret = whoop_client_secret
        self.retry_scale = retry_scale
        self.clock = clock
        self.random = random.Random(seed)
        self.faults: dict[str, int] = {}
        self.sent: list[Outbound] = []
        self._lock = threading.Lock()
        # Svix gives up on a delivery after ~15 s without an answer.
        self.http = httpx.Client(timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def fault(self, name: str, count: int = 1) -> None:
        if name not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}")
        with self._lock:
            self.faults[name] = count

    def _take(self, name: str) -> bool:
        with self._lock:
            left = self.faults.get(name, 0)
            if left == 0:
                return False
            if left > 0:
                self.faults[name] = left - 1
            return True

    # --- messages ---

    def junction_message(self, event_type: str, user_id: str, data: dict[str, Any]) -> Outbound:
        envelope = {
            "event_type": event_type,
            "data": data,
            "user_id": user_id,
            "client_user_id": f"client-{user_id[:8]}",
            "team_id": TEAM_ID,
        }
        return Outbound(
            "junction",
            f"msg_{uuid.UUID(int=self.random.getrandbits(128)).hex}",
            orjson.dumps(envelope),
            self.clock(),
        )

    def whoop_message(self, event_type: str, whoop_user_id: int, record_id: str | int) -> Outbound:
        trace = str(uuid.UUID(int=self.random.getrandbits(128)))
        body = {"user_id": whoop_user_id, "id": record_id, "type": event_type, "trace_id": trace}
        return Outbound("whoop", trace, orjson.dumps(body), self.clock())

    # --- sending ---

    def send_many(self, messages: Iterable[Outbound], *, sleep: Callable[[float], None] = time.sleep) -> None:
        batch = list(messages)
        if self._take("out_of_order"):
            self.random.shuffle(batch)
        for message in batch:
            self.send(message, sleep=sleep)

    def send(self, message: Outbound, *, sleep: Callable[[float], None] = time.sleep) -> Outbound:
        """Deliver with retries on the (scaled) schedule until a 2xx or the schedule is used up."""
        self.sent.append(message)
        duplicate = self._take("duplicate")
        for delay in (0.0, *SVIX_RETRY_SCHEDULE):
            if delay:
                sleep(delay * self.retry_scale)
            status = self._attempt(message)
            message.statuses.append(status)
            if 200 <= status < 300:
                break
        if duplicate:
            message.statuses.append(self._attempt(message))
        return message

    def _attempt(self, message: Outbound) -> int:
        body = message.body
        now = self.clock()
        if self._take("stale_timestamp"):
            now -= 600
        if message.provider == "junction":
            secret = (
                "whsec_" + base64.b64encode(b"not-the-secret").decode()
                if self._take("bad_signature")
                else self.junction_secret
            )
            timestamp = int(now)
            headers = {
                "svix-id": message.message_id,
                "svix-timestamp": str(timestamp),
                "svix-signature": svix_signature(secret, message.message_id, timestamp, body),
            }
            url = self.junction_url
        else:
            secret = "not-the-secret" if self._take("bad_signature") else self.whoop_client_secret
            stamp = str(int(now * 1000))
            headers = {
                "X-WHOOP-Signature-Timestamp": stamp,
                "X-WHOOP-Signature": whoop_signature(secret, stamp, body),
            }
            url = self.whoop_url
        if self._take("tampered"):
            body = body.replace(b'"', b' "', 1)
        headers["content-type"] = "application/json"
        try:
            return self.http.post(url, content=body, headers=headers).status_code
        except httpx.HTTPError:
            return 0  # no answer: a failed attempt, retried like a 5xx


def utc_now() -> datetime:
    return datetime.now(UTC)


class WebhookFeed:
    """What the sandbox's providers send as their data arrives: every `tick(until)` delivers the events of
    what became available since the previous tick (Junction polls its providers about every 15 minutes and
    sends `daily.data.*`; WHOOP sends an id per changed record). `connect(user_id)` first announces a Junction
    user with `provider.connection.created`."""

    def __init__(
        self, sandbox: Any, emitter: WebhookEmitter, *, junction_users: list[str], whoop_users: list[int]
    ) -> None:
        self.sandbox = sandbox
        self.emitter = emitter
        self.junction_users = junction_users
        self.whoop_users = whoop_users
        self.last: datetime | None = None

    def connect_junction_users(self) -> list[Outbound]:
        messages = []
        for user_id in self.junction_users:
            user = self.sandbox.junction.user(user_id)
            data = {
                "user_id": user_id,
                "provider": {"name": user.provider, "slug": user.provider, "logo": ""},
                "source": {"name": user.provider, "slug": user.provider, "logo": ""},
                "external_user_id": f"ext-{user_id[:8]}",
                "resource_availability": {},
            }
            messages.append(self.emitter.junction_message("provider.connection.created", user_id, data))
        self.emitter.send_many(messages)
        return messages

    def messages(self, since: datetime, until: datetime) -> list[Outbound]:
        out = [
            self.emitter.junction_message(event_type, user_id, data)
            for user_id in self.junction_users
            for event_type, data in self.sandbox.junction.arrivals(user_id, since, until)
        ]
        out += [
            self.emitter.whoop_message(event_type, self.sandbox.whoop.whoop_user_id(user), record_id)
            for user in self.whoop_users
            for event_type, record_id in self.sandbox.whoop.arrivals(user, since, until)
        ]
        return out

    def tick(self, until: datetime, since: datetime | None = None) -> list[Outbound]:
        since = since or self.last or until
        self.last = until
        batch = self.messages(since, until)
        self.emitter.send_many(batch)
        return batch
