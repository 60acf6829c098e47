"""`cleanup-wearable-data` (weekly): retention, orphans and duplicates of the raw reading tables.

1. Partitions (PostgreSQL): the weekly partitions from the cutoff to READING_PARTITION_PREMAKE_WEEKS ahead
   exist (readings/partitions.py).
2. Retention: raw rows measured before `now - RAW_READING_RETENTION_DAYS` are removed. PostgreSQL drops every
   weekly partition that ends at or before the cutoff, DELETEs the older rows of the one partition that
   straddles it and of the DEFAULT partition.
   Daily statistics are never touched: they are the long-term record.
3. Orphans: readings of a connection deleted (a ConnectionRemoval tombstone, readings/signals.py) or
   deactivated more than ORPHANED_READING_GRACE_DAYS ago are removed. Their daily statistics stay.
4. Duplicates: one measurement stored twice, through two routes (Dexcom glucose via Junction and via the
   direct Dexcom connection) or with timestamps that differ only below the provider's precision. The copy
   kept is chosen by SOURCE PRIORITY (first wins):
     a. the route: a direct connection of the device's own provider (dexcom, libre, whoop), then junction,
        then a reading whose connection is unknown or gone;
     b. the most recently ingested copy (providers revise values: Dexcom smoothing, WHOOP scoring; Junction
        documents "latest value wins");
     c. the smallest (source, source type, timestamp), only to make the choice deterministic.
   "The same measurement" means: same patient, same metric, same device family (dexcom*, *libre*,
   whoop* are each one family whatever slug the route uses; any other source is its own family), same
   source type (ignored for those three families, whose routes label it differently), and the same
   timestamp at the provider's precision: the minute for glucose (Dexcom `systemTime` may lack seconds,
   CGMs sample every 1-15 minutes), the second for wearable samples. The days of removed duplicates are
   marked dirty, so the next aggregate-wearable-data recomputes them.

`dry_run=True` counts what each step would remove (rows and distinct patients per table) and changes nothing.
Every step is idempotent: a second run finds nothing to remove.
"""

from __future__ import annotations

import logging
import time as monotonic
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection as db
from django.db import transaction
from django.utils import timezone

from connections.models import Connection, ConnectionStatus
from readings.catalogue import day_zone_sql
from readings.locks import single_flight
from readings.models import ConnectionRemoval
from readings.partitions import (
    RAW_TABLES,
    default_partition,
    ensure_partitions,
    is_partitioned,
    list_partitions,
    partition_name,
    week_start,
)
from readings.resolution import device_families, family_sql, route_rank_sql

logger = logging.getLogger("loopsync.retention")

JOB_NAME = "cleanup-wearable-data"
WEARABLE_TABLE, GLUCOSE_TABLE = RAW_TABLES
_ADVISORY_LOCK = 0x4C53_434C  # "LSCL"

# Precision of the providers' timestamps, as the truncation that makes two copies one measurement.
PRECISION = {GLUCOSE_TABLE: "minute", WEARABLE_TABLE: "second"}


@dataclass
class Removal:
    table: str
    reason: str  # retention | orphan | duplicate
    rows: int
    patients: int | None  # None when not counted (expired fingerprints)


@dataclass
class CleanupResult:
    job: str = JOB_NAME
    status: str = "success"
    dry_run: bool = False
    cutoff: str = ""
    partitions_created: list[str] = field(default_factory=list)
    partitions_dropped: list[str] = field(default_factory=list)
    removals: list[Removal] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def rows_removed(self) -> int:
        return sum(r.rows for r in self.removals)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["rows_removed"] = self.rows_removed
        return data

    def table_lines(self) -> list[str]:
        verb = "would remove" if self.dry_run else "removed"
        lines = [f"{'table':<28} {'reason':<10} {'rows':>10} {'patients':>9}"]
        for r in self.removals:
            patients = "-" if r.patients is None else str(r.patients)
            lines.append(f"{r.table:<28} {r.reason:<10} {r.rows:>10} {patients:>9}")
        lines.append(f"{verb} {self.rows_removed} rows (cutoff {self.cutoff})")
        return lines


def retention_cutoff(now: datetime | None = None) -> datetime:
    return (now or timezone.now()) - timedelta(days=settings.RAW_READING_RETENTION_DAYS)


def run_cleanup(*, dry_run: bool = False, now: datetime | None = None) -> CleanupResult:
    started = monotonic.monotonic()
    now = now or timezone.now()
    cutoff = retention_cutoff(now)
    result = CleanupResult(dry_run=dry_run, cutoff=cutoff.isoformat())
    with single_flight(_ADVISORY_LOCK) as acquired:
        if not acquired:
            result.status = "skipped: another run holds the lock"
            return result
        result.partitions_created = _partitions_ahead(cutoff, now, dry_run)
        for table in RAW_TABLES:
            result.removals.append(_retention(table, cutoff, dry_run, result))
        for table in RAW_TABLES:
            result.removals.append(_orphans(table, now, dry_run))
        if not dry_run:
            _forget_tombstones(now)
        for table in RAW_TABLES:
            result.removals.append(_duplicates(table, cutoff, dry_run))
        result.removals.append(_expired_fingerprints(now, dry_run))
        result.removals.append(_stats_of_deleted_patients(dry_run))
        result.removals.append(_expired_webhook_events(now, dry_run))
    result.duration_s = round(monotonic.monotonic() - started, 3)
    logger.info(
        "%s finished",
        JOB_NAME,
        extra={
            "job": JOB_NAME,
            "dry_run": dry_run,
            "rows_removed": result.rows_removed,
            "partitions_dropped": len(result.partitions_dropped),
            "duration_s": result.duration_s,
        },
    )
    return result


def _expired_fingerprints(now: datetime, dry_run: bool) -> Removal:
    """Day fingerprints older than the sync's lookback are never consulted again (connections.providers.junction)."""
    from connections.models import SyncFingerprint

    oldest_used = (now - timedelta(days=settings.JUNCTION_SYNC.lookback_days + 1)).date()
    expired = SyncFingerprint.objects.filter(day__lt=oldest_used)
    rows = expired.count() if dry_run else expired.delete()[0]
    return Removal(table=SyncFingerprint._meta.db_table, reason="expired", rows=rows, patients=None)


def _expired_webhook_events(now: datetime, dry_run: bool) -> Removal:
    """Processed and ignored webhook deliveries past WEBHOOK_INBOX_RETENTION_DAYS (their data is in the readings;
    failed and unmatched ones stay for ops)."""
    from connections.inbox import remove_expired
    from connections.models import WebhookEvent

    rows = remove_expired(now, dry_run=dry_run)
    return Removal(table=WebhookEvent._meta.db_table, reason="expired", rows=rows, patients=None)


_STATS_WITHOUT_PATIENT = "FROM patient_wearable_daily_stats AS s WHERE NOT EXISTS (SELECT 1 FROM patients AS p WHERE p.id = s.patient_id)"


def _stats_of_deleted_patients(dry_run: bool) -> Removal:
    """Daily statistics carry no database constraint on their patient (readings.models.DailyStat): a patient
    deleted in SQL, not through Django's cascade, leaves them behind, and here they go."""
    with transaction.atomic(), db.cursor() as cursor:
        cursor.execute(f"SELECT count(*), count(DISTINCT s.patient_id) {_STATS_WITHOUT_PATIENT}")
        rows, patients = cursor.fetchone()
        if rows and not dry_run:
            cursor.execute(f"DELETE {_STATS_WITHOUT_PATIENT}")
    return Removal("patient_wearable_daily_stats", "orphan", rows, patients)


def _partitions_ahead(cutoff: datetime, now: datetime, dry_run: bool) -> list[str]:
    last = now + timedelta(weeks=settings.READING_PARTITION_PREMAKE_WEEKS)
    if dry_run:
        missing = []
        for table in RAW_TABLES:
            if not is_partitioned(table):
                continue
            existing = {p.start for p in list_partitions(table)}
            start = week_start(cutoff)
            while start <= last:
                if start not in existing:
                    missing.append(partition_name(table, start))
                start += timedelta(days=7)
        return missing
    with transaction.atomic():
        return ensure_partitions(cutoff, last)


# --- Retention ---------------------------------------------------------------------------------------------


def _count(table: str, where: str, params: list[Any]) -> tuple[int, int]:
    with db.cursor() as cursor:
        cursor.execute(f'SELECT count(*), count(DISTINCT patient_id) FROM "{table}" WHERE {where}', params)
        rows, patients = cursor.fetchone()
    return rows, patients


def _retention(table: str, cutoff: datetime, dry_run: bool, result: CleanupResult) -> Removal:
    if dry_run:
        return Removal(table, "retention", *_count(table, "measured_at < %s", [cutoff]))
    return _retention_by_partition(table, cutoff, result)


def _retention_by_partition(table: str, cutoff: datetime, result: CleanupResult) -> Removal:
    rows = 0
    patients: set[int] = set()
    with transaction.atomic(), db.cursor() as cursor:
        # DROP TABLE locks the parent exclusively: give up (the job fails, next week retries) rather than
        # queue every sync's insert behind a long-running reader.
        cursor.execute("SET LOCAL lock_timeout = '10s'")
        for part in list_partitions(table):
            if part.end <= cutoff:
                # Every row is past the cutoff: dropping the partition frees its files at once and leaves
                # no dead tuples for VACUUM. The report counts it exactly first (reltuples, the planner's
                # estimate, was off by a factor of five): one scan of a week about to go, under the lock
                # the DROP takes anyway, so no insert lands between the count and the drop.
                cursor.execute(f'LOCK TABLE "{part.name}" IN ACCESS EXCLUSIVE MODE')
                cursor.execute(
                    f"SELECT count(*), coalesce(array_agg(DISTINCT patient_id), '{{}}') FROM \"{part.name}\""
                )
                part_rows, part_patients = cursor.fetchone()
                rows += part_rows
                patients |= set(part_patients)
                cursor.execute(f'DROP TABLE "{part.name}"')
                result.partitions_dropped.append(part.name)
            elif part.start < cutoff:
                partial_rows, partial_patients = _delete_older(cursor, part.name, cutoff)
                rows += partial_rows
                patients |= partial_patients
        default_rows, default_patients = _delete_older(cursor, default_partition(table), cutoff)
    rows += default_rows
    patients |= default_patients
    return Removal(table, "retention", rows, len(patients))


def _delete_older(cursor: Any, relation: str, cutoff: datetime) -> tuple[int, set[int]]:
    cursor.execute(
        f'WITH gone AS (DELETE FROM "{relation}" WHERE measured_at < %s RETURNING patient_id) '
        "SELECT count(*), coalesce(array_agg(DISTINCT patient_id), '{}') FROM gone",
        [cutoff],
    )
    count, patients = cursor.fetchone()
    return count, set(patients)


# --- Orphans -----------------------------------------------------------------------------------------------


def orphaned_connections(now: datetime) -> list[tuple[int, int]]:
    """(patient_id, connection_id) of connections deleted or deactivated more than the grace period ago."""
    since = now - timedelta(days=settings.ORPHANED_READING_GRACE_DAYS)
    removed = ConnectionRemoval.objects.filter(removed_at__lt=since).values_list(
        "patient_id", "connection_id"
    )
    inactive = Connection.objects.filter(status=ConnectionStatus.INACTIVE, updated_at__lt=since).values_list(
        "patient_id", "pk"
    )
    return sorted(set(removed) | set(inactive))


def _orphans(table: str, now: datetime, dry_run: bool) -> Removal:
    pairs = orphaned_connections(now)
    if not pairs:
        return Removal(table, "orphan", 0, 0)
    rows = 0
    patients: set[int] = set()
    with transaction.atomic(), db.cursor() as cursor:
        # One statement per connection: the primary key starts with patient_id, so each is an index range.
        for patient_id, connection_id in pairs:
            if dry_run:
                cursor.execute(
                    f'SELECT count(*) FROM "{table}" WHERE patient_id = %s AND connection_id = %s',
                    [patient_id, connection_id],
                )
                count = cursor.fetchone()[0]
            else:
                cursor.execute(
                    f'DELETE FROM "{table}" WHERE patient_id = %s AND connection_id = %s',
                    [patient_id, connection_id],
                )
                count = cursor.rowcount
            rows += count
            if count:
                patients.add(patient_id)
    return Removal(table, "orphan", rows, len(patients))


def _forget_tombstones(now: datetime) -> None:
    # Their readings are gone now (same run, committed above); a tombstone has no other use.
    since = now - timedelta(days=settings.ORPHANED_READING_GRACE_DAYS)
    ConnectionRemoval.objects.filter(removed_at__lt=since).delete()


# --- Duplicates --------------------------------------------------------------------------------------------


def _family(column: str) -> str:
    return family_sql(column)


def _direct_families() -> list[str]:
    return [family for family, _ in device_families()]


def _route_rank() -> str:
    """The copy to keep is the one source resolution counts (readings/resolution.py): the route of the highest
    rank for the patient (their override, else the registry priority), so removing the others changes no
    statistic: cleanup only tidies storage."""
    return "-" + route_rank_sql("c.provider", "o.priority")


def _duplicates_query(table: str, cutoff_param: str) -> tuple[str, list[str]]:
    """A SELECT ranking every copy of every measurement (rn = 1 is kept), and the table's key columns."""
    family = _family("r.source")
    when = f"date_trunc('{PRECISION[table]}', r.measured_at)"
    direct = ", ".join(f"'{family}'" for family in _direct_families())
    if table == WEARABLE_TABLE:
        keys = ["patient_id", "metric", "source", "source_type", "measured_at"]
        # Routes label the same device's source type differently; other families keep it (phone vs watch).
        stype = f"CASE WHEN ({family}) IN ({direct}) THEN '' ELSE r.source_type END"
        group = f"r.patient_id, r.metric, {family}, {stype}, {when}"
        order = f"{_route_rank()}, r.ingested_at DESC, r.source, r.source_type, r.measured_at"
    else:
        keys = ["patient_id", "source", "measured_at"]
        group = f"r.patient_id, {family}, {when}"
        order = f"{_route_rank()}, r.ingested_at DESC, r.source, r.measured_at"
    ranked = f"""
        SELECT {", ".join("r." + k for k in keys)},
               row_number() OVER (PARTITION BY {group} ORDER BY {order}) AS rn
        FROM "{table}" r LEFT JOIN patient_connections c ON c.id = r.connection_id
        LEFT JOIN patient_route_priorities o
          ON o.patient_id = r.patient_id AND o.source_family = {family} AND o.provider = c.provider
        WHERE r.measured_at >= {cutoff_param}
    """
    return ranked, keys


def _duplicates(table: str, cutoff: datetime, dry_run: bool) -> Removal:
    ranked, keys = _duplicates_query(table, "%(cutoff)s")
    if dry_run:
        sql = f"SELECT count(*), count(DISTINCT patient_id) FROM ({ranked}) x WHERE rn > 1"
    else:
        match = " AND ".join(f"t.{k} = d.{k}" for k in keys)
        metric = "t.metric" if table == WEARABLE_TABLE else "'glucose'"
        # The removed copies' days are marked in the same statement, so the next aggregation recomputes them.
        sql = f"""
        WITH doomed AS (SELECT * FROM ({ranked}) x WHERE rn > 1),
        gone AS (
            DELETE FROM "{table}" t USING doomed d WHERE {match}
            RETURNING t.patient_id, {metric} AS metric, t.measured_at
        ),
        marked AS (
            INSERT INTO patient_wearable_daily_stats_dirty AS m (patient_id, metric, day, version, marked_at)
            SELECT DISTINCT g.patient_id, g.metric, (g.measured_at AT TIME ZONE {day_zone_sql("g.metric", "p.time_zone")})::date, 1, now()
            FROM gone g JOIN patients p ON p.id = g.patient_id
            ON CONFLICT (patient_id, metric, day) DO UPDATE
                SET version = m.version + 1, marked_at = EXCLUDED.marked_at
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM gone), (SELECT count(DISTINCT patient_id) FROM gone)
        """
    with transaction.atomic(), db.cursor() as cursor:
        cursor.execute(sql, {"cutoff": cutoff})
        rows, patients = cursor.fetchone()
    return Removal(table, "duplicate", rows, patients)
