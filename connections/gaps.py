"""The gap ledger and targeted repair.

A gap (`DataGap`) is recorded when
- `detect_gaps`: a run of the connection's patient-local days is below GAP_DAY_SHARE of what a worn device sends
  (readings/completeness.py, the provider's main kind), from the connection's first day to yesterday;
- `record_reconnect_gap`: a connection is connected again after a pause longer than GAP_RECONNECT_AFTER_HOURS
  (from its newest reading to now).

`repair_gap` re-fetches exactly the gap's window (a window fetch: the cursor and the regular lookback are left
alone), stores it like a sync, and closes the gap when its days reach the share, or marks it "not available at
the provider" when the provider had no more (or the window is older than the history it holds, in which case
nothing is asked). Admin: Repair button (connections.actions.do_repair_gap); job: connections.tasks.repair_gap_task.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from connections.engine import UserSyncSummary, run_with_retries, store_batch_and_cursor
from connections.models import (
    Connection,
    ConnectionStatus,
    DataGap,
    GapCause,
    GapStatus,
    SyncTrigger,
)
from connections.providers.contract import Batch, PartialFetch, SyncProvider
from connections.providers.registry import PROVIDERS, open_provider
from connections.tokens import TokenSession
from readings.completeness import daily_shares

logger = logging.getLogger("loopsync.gaps")


def primary_kind(connection: Connection) -> str:
    provider = PROVIDERS.get(connection.provider)
    return provider.completeness_kinds[0] if provider and provider.completeness_kinds else ""


def _local_midnight(day: date, tz: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(ZoneInfo("UTC"))


def _overlaps(connection: Connection, kind: str, start: datetime, end: datetime) -> bool:
    return (
        DataGap.objects.filter(connection=connection, kind=kind, start__lt=end, end__gt=start)
        .exclude(status=GapStatus.CLOSED)
        .exists()
    )


def detect_gaps(connection: Connection, now: datetime | None = None) -> list[DataGap]:
    """Record the runs of low days of the last GAP_SCAN_DAYS (not today, not before the connection existed)
    that no open or unavailable gap covers yet; returns the new gaps."""
    kind = primary_kind(connection)
    if not kind:
        return []
    now = now or timezone.now()
    patient = connection.patient
    tz = ZoneInfo(patient.time_zone)
    today = timezone.localtime(now, tz).date()
    # From the first whole local day the connection could have data for: a part day is no gap.
    first = max(
        today - timedelta(days=int(settings.GAP_SCAN_DAYS)),
        timezone.localtime(_first_known(connection), tz).date() + timedelta(days=1),
    )
    last = today - timedelta(days=1)
    if first > last:
        return []
    runs: list[tuple[date, date]] = []
    for share in daily_shares(patient.pk, patient.time_zone, kind, first, last):
        if share.expected and share.share < float(settings.GAP_DAY_SHARE):
            if runs and runs[-1][1] == share.day - timedelta(days=1):
                runs[-1] = (runs[-1][0], share.day)
            else:
                runs.append((share.day, share.day))
    created = []
    for low, high in runs:
        start, end = _local_midnight(low, tz), _local_midnight(high + timedelta(days=1), tz)
        gap = _record(connection, kind, start, end, GapCause.LOW_COMPLETENESS)
        if gap is not None:
            created.append(gap)
    return created


def _first_known(connection: Connection) -> datetime:
    """Since when the connection could have data: its backfill's range, else its creation."""
    backfill = getattr(connection, "backfill", None)
    return backfill.range_start if backfill is not None else connection.created_at


def _record(connection: Connection, kind: str, start: datetime, end: datetime, cause: str) -> DataGap | None:
    if _overlaps(connection, kind, start, end):
        return None
    try:
        with transaction.atomic():
            gap = DataGap.objects.create(connection=connection, kind=kind, start=start, end=end, cause=cause)
    except IntegrityError:
        return None  # recorded by a concurrent detection
    logger.info("data gap recorded", extra={"connection_id": connection.pk, "cause": cause})
    return gap


def record_reconnect_gap(connection: Connection, now: datetime | None = None) -> DataGap | None:
    """A reconnect after a pause: the window from the newest reading to now, if longer than the threshold."""
    now = now or timezone.now()
    paused_since = connection.latest_reading_at or connection.last_sync_at
    if paused_since is None or now - paused_since < timedelta(
        hours=float(settings.GAP_RECONNECT_AFTER_HOURS)
    ):
        return None
    return _record(connection, primary_kind(connection), paused_since, now, GapCause.RECONNECT)


def repair_gap(
    gap_id: int, *, provider: SyncProvider | None = None, sleep: Callable[[float], None] = time.sleep
) -> DataGap:
    """Re-fetch exactly the gap's window and close it, or mark it not available at the provider."""
    with transaction.atomic():
        gap = DataGap.objects.select_for_update().select_related("connection__patient").get(pk=gap_id)
        if gap.status in (GapStatus.CLOSED, GapStatus.REPAIRING):
            return gap
        DataGap.objects.filter(pk=gap_id).update(
            status=GapStatus.REPAIRING, repair_attempts=F("repair_attempts") + 1
        )
    connection = gap.connection
    if connection.status != ConnectionStatus.ACTIVE:
        return _set(gap, GapStatus.OPEN, "the connection is inactive")
    now = timezone.now()
    limit = PROVIDERS[connection.provider].history_limit
    start = gap.start
    if limit is not None:
        if gap.end <= now - limit:
            return _set(gap, GapStatus.UNAVAILABLE, f"older than the {_span(limit)} the provider holds")
        start = max(start, now - limit)
    if provider is not None:
        return _repair(gap, connection, provider, (start, gap.end), sleep)
    with open_provider(connection.provider) as opened:
        return _repair(gap, connection, opened, (start, gap.end), sleep)


def _repair(
    gap: DataGap,
    connection: Connection,
    provider: SyncProvider,
    window: tuple[datetime, datetime],
    sleep: Callable[[float], None],
) -> DataGap:
    refresher = provider.refresher()
    summary = UserSyncSummary(user_id=provider.user_label(connection))

    def fetch() -> Batch:
        session = (
            TokenSession(connection, refresher, margin=provider.token_margin(), trigger=SyncTrigger.ADMIN)
            if refresher is not None
            else None
        )
        try:
            return provider.fetch(connection, None, session=session, window=window, force=True)
        except PartialFetch as partial:
            raise partial.cause from None

    batch = run_with_retries(summary, fetch, sleep=sleep)
    if batch is None:
        return _set(gap, GapStatus.OPEN, summary.errors[-1] if summary.errors else "the provider failed")
    with transaction.atomic():
        written = store_batch_and_cursor(connection, batch, provider.writer(), complete=False)
        DataGap.objects.filter(pk=gap.pk).update(rows_repaired=F("rows_repaired") + written)
    if _filled(gap, connection):
        return _set(gap, GapStatus.CLOSED, f"{batch.fetched} records fetched again")
    return _set(gap, GapStatus.UNAVAILABLE, "the provider holds no more data for this window")


def _filled(gap: DataGap, connection: Connection) -> bool:
    """Every whole local day of the gap now at the share (a gap of no whole day: filled once fetched)."""
    if not gap.kind:
        return True
    patient = connection.patient
    tz = ZoneInfo(patient.time_zone)
    first = timezone.localtime(gap.start, tz).date() + timedelta(days=1)
    last = timezone.localtime(gap.end, tz).date() - timedelta(days=1)
    if gap.cause == GapCause.LOW_COMPLETENESS:
        first -= timedelta(days=1)  # its bounds are local midnights: the first day is whole
    if first > last:
        return True
    shares = daily_shares(patient.pk, patient.time_zone, gap.kind, first, last)
    return all(s.share >= float(settings.GAP_DAY_SHARE) for s in shares if s.expected)


def _set(gap: DataGap, status: str, note: str) -> DataGap:
    DataGap.objects.filter(pk=gap.pk).update(
        status=status,
        note=note[:500],
        closed_at=timezone.now() if status in (GapStatus.CLOSED, GapStatus.UNAVAILABLE) else None,
    )
    gap.refresh_from_db()
    logger.info("data gap repair", extra={"gap_id": gap.pk, "status": status})
    return gap


def _span(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:g} h" if hours < 48 else f"{hours / 24:g} days"
