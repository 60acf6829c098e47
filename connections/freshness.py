"""How fresh the data is: per provider, the readings that arrived by push (webhooks) vs by the reconciling pull,
the freshness of pushed data (provider's signature timestamp -> committed), and the connections whose webhooks
went silent while the pull still finds data.

Minimal by design: the hot COPY path in readings/store.py is untouched. Each processed inbox event records the
rows it stored and when it committed (its freshness sample); each sync event records the rows the pull stored.
Window fetches that a webhook asked for (trigger `webhook`) count once, as push. A few grouped queries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import connection as db
from django.db.models import Sum
from django.utils import timezone

from connections.models import SyncEvent, SyncEventKind, SyncTrigger, WebhookStatus
from connections.providers.registry import PROVIDERS

WINDOW = timedelta(days=7)

_FRESHNESS = """
SELECT provider, sum(records_stored), count(*),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - sent_at)),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - sent_at))
FROM webhook_inbox
WHERE status = %(processed)s AND processed_at >= %(since)s AND sent_at IS NOT NULL
  AND (%(connection)s::bigint IS NULL OR connection_id = %(connection)s::bigint)
GROUP BY provider
"""

# Active connections that had deliveries, none since `silent_before`, and a pull after the last one that
# still stored rows: the provider stopped calling us (endpoint disabled after Svix's 5 days of failures, a
# changed secret, a revoked subscription) and only the daily pull keeps the data coming.
_SILENT = """
WITH last_hook AS (
    SELECT connection_id, max(received_at) AS at FROM webhook_inbox
    WHERE connection_id IS NOT NULL GROUP BY connection_id
)
SELECT c.id, c.provider, h.at FROM patient_connections c JOIN last_hook h ON h.connection_id = c.id
WHERE c.status = 'active' AND h.at < %(silent_before)s
  AND (%(connection)s::bigint IS NULL OR c.id = %(connection)s::bigint)
  AND EXISTS (
      SELECT 1 FROM wearable_sync e
      WHERE e.connection_id = c.id AND e.kind = %(sync)s AND e.trigger <> %(webhook)s
        AND e.started_at > h.at AND e.records_stored > 0)
ORDER BY c.id
"""


@dataclass
class Arrivals:
    provider: str
    pushed: int = 0
    pulled: int = 0
    events: int = 0
    freshness_p50_s: float | None = None
    freshness_p95_s: float | None = None
    silent_connections: list[int] = field(default_factory=list)

    @property
    def push_share(self) -> float | None:
        total = self.pushed + self.pulled
        return self.pushed / total if total else None


def _freshness(since: datetime, connection_id: int | None) -> dict[str, tuple[int, int, float, float]]:
    with db.cursor() as cursor:
        cursor.execute(
            _FRESHNESS, {"processed": WebhookStatus.PROCESSED, "since": since, "connection": connection_id}
        )
        return {p: (int(s or 0), int(n), float(p50), float(p95)) for p, s, n, p50, p95 in cursor.fetchall()}


def silent_since() -> timedelta:
    """Longer than any push provider goes without a delivery when its users' devices upload daily."""
    return max((p.cadence.stale_after for p in PROVIDERS.values()), default=timedelta(hours=30))


def silent_connections(now: datetime, connection_id: int | None = None) -> list[tuple[int, str, datetime]]:
    with db.cursor() as cursor:
        cursor.execute(
            _SILENT,
            {
                "silent_before": now - silent_since(),
                "connection": connection_id,
                "sync": SyncEventKind.SYNC,
                "webhook": SyncTrigger.WEBHOOK,
            },
        )
        return list(cursor.fetchall())


def arrivals(now: datetime | None = None) -> list[Arrivals]:
    """Per provider that pushed or pulled in the last 7 days."""
    now = now or timezone.now()
    since = now - WINDOW
    rows: dict[str, Arrivals] = {}
    for provider, (stored, events, p50, p95) in _freshness(since, None).items():
        rows[provider] = Arrivals(
            provider, pushed=stored, events=events, freshness_p50_s=p50, freshness_p95_s=p95
        )
    pulls = (
        SyncEvent.objects.filter(kind=SyncEventKind.SYNC, started_at__gte=since)
        .exclude(trigger=SyncTrigger.WEBHOOK)
        .values("provider")
        .annotate(stored=Sum("records_stored"))
    )
    for pull in pulls:
        rows.setdefault(pull["provider"], Arrivals(pull["provider"])).pulled = int(pull["stored"] or 0)
    for connection_id, provider, _ in silent_connections(now):
        rows.setdefault(provider, Arrivals(provider)).silent_connections.append(connection_id)
    return [rows[key] for key in sorted(rows)]


@dataclass
class ConnectionFreshness:
    pushed_7d: int = 0
    events_7d: int = 0
    freshness_p50_s: float | None = None
    freshness_p95_s: float | None = None
    last_webhook_at: datetime | None = None
    silent: bool = False


def connection_freshness(connection_id: int, now: datetime | None = None) -> ConnectionFreshness:
    """The connection admin page's figures."""
    from connections.models import WebhookEvent

    now = now or timezone.now()
    out = ConnectionFreshness()
    for stored, events, p50, p95 in _freshness(now - WINDOW, connection_id).values():
        out.pushed_7d, out.events_7d, out.freshness_p50_s, out.freshness_p95_s = stored, events, p50, p95
    out.last_webhook_at = (
        WebhookEvent.objects.filter(connection_id=connection_id)
        .order_by("-received_at")
        .values_list("received_at", flat=True)
        .first()
    )
    out.silent = bool(silent_connections(now, connection_id))
    return out
