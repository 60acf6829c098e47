"""PostgreSQL range partitions of the raw reading tables, by `measured_at`, one per ISO week (Monday 00:00 UTC).

Layout (made by migration 0003): `patient_wearable_readings` and `patient_glucose_readings` are partitioned
tables; weekly partitions are named `<table>_pYYYYMMDD` after their Monday; a DEFAULT partition
`<table>_default` catches every row no weekly partition covers (a backfill from before the oldest partition, a
device clock in the future), so an insert never fails with "no partition of relation found for row".

`ensure_partitions` (run by the migration and by every `cleanup-wearable-data`) creates the weekly partitions
from the retention cutoff to `READING_PARTITION_PREMAKE_WEEKS` ahead. If the DEFAULT partition already holds
rows of a week being created, they are moved into the new partition in the same transaction (PostgreSQL
refuses to attach a range the DEFAULT partition has rows for).

Weekly, not monthly: at ~17M rows a day for 10k patients a week is ~120M rows, and the one partition that
straddles the retention cutoff is cleaned by DELETE, so smaller partitions keep that DELETE small.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db import connection as db

RAW_TABLES = ("patient_wearable_readings", "patient_glucose_readings")
_NAME = re.compile(r"^(?P<table>[a-z_]+)_p(?P<monday>\d{8})$")


@dataclass(frozen=True)
class Partition:
    table: str
    name: str
    start: datetime  # inclusive
    end: datetime  # exclusive


def week_start(moment: datetime) -> datetime:
    day = moment.astimezone(UTC).date()
    monday = day - timedelta(days=day.weekday())
    return datetime(monday.year, monday.month, monday.day, tzinfo=UTC)


def partition_name(table: str, start: datetime) -> str:
    return f"{table}_p{start:%Y%m%d}"


def is_partitioned(table: str) -> bool:
    with db.cursor() as cursor:
        cursor.execute(
            "SELECT c.relkind FROM pg_class c WHERE c.oid = to_regclass(%s)",
            [table],
        )
        row = cursor.fetchone()
    return bool(row) and row[0] == "p"


def list_partitions(table: str) -> list[Partition]:
    """The weekly partitions of `table`, oldest first (the DEFAULT partition is not listed)."""
    with db.cursor() as cursor:
        cursor.execute(
            """
            SELECT c.relname FROM pg_inherits i
            JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = to_regclass(%s)
            """,
            [table],
        )
        names = [row[0] for row in cursor.fetchall()]
    partitions = []
    for name in names:
        match = _NAME.match(name)
        if not match or match["table"] != table:
            continue
        monday = datetime.strptime(match["monday"], "%Y%m%d").replace(tzinfo=UTC)
        partitions.append(Partition(table, name, monday, monday + timedelta(days=7)))
    return sorted(partitions, key=lambda p: p.start)


def default_partition(table: str) -> str:
    return f"{table}_default"


def ensure_partitions(first: datetime, last: datetime) -> list[str]:
    """Create the weekly partitions covering [first, last] on both raw tables; return the names created.

    Needs a transaction (the move out of the DEFAULT partition and the ATTACH commit together).
    """
    created: list[str] = []
    for table in RAW_TABLES:
        if not is_partitioned(table):
            continue
        existing = {p.start for p in list_partitions(table)}
        start = week_start(first)
        while start <= last:
            if start not in existing:
                _create_partition(table, start, start + timedelta(days=7))
                created.append(partition_name(table, start))
            start += timedelta(days=7)
    return created


def _create_partition(table: str, start: datetime, end: datetime) -> None:
    name = partition_name(table, start)
    default = default_partition(table)
    with db.cursor() as cursor:
        cursor.execute(
            f'SELECT EXISTS (SELECT 1 FROM "{default}" WHERE measured_at >= %s AND measured_at < %s)',
            [start, end],
        )
        stranded = cursor.fetchone()[0]
        if not stranded:
            # The common case: ATTACH-free creation; PostgreSQL still checks the DEFAULT partition (cheap:
            # its measured_at index answers the range).
            cursor.execute(
                f'CREATE TABLE "{name}" PARTITION OF "{table}" FOR VALUES FROM (%s) TO (%s)', [start, end]
            )
            return
        # Rows of this week already sit in DEFAULT (the job had not run for a while, or a backfill/clock
        # skew): create the week detached, move them, then attach.
        cursor.execute(f'CREATE TABLE "{name}" (LIKE "{table}" INCLUDING DEFAULTS INCLUDING CONSTRAINTS)')
        cursor.execute(
            f"""
            WITH moved AS (
                DELETE FROM "{default}" WHERE measured_at >= %s AND measured_at < %s RETURNING *
            )
            INSERT INTO "{name}" SELECT * FROM moved
            """,
            [start, end],
        )
        cursor.execute(
            f'ALTER TABLE "{table}" ATTACH PARTITION "{name}" FOR VALUES FROM (%s) TO (%s)', [start, end]
        )


# --- Conversion (migration 0003) ------------------------------------------------------------------------


def convert_table(table: str, *, partitioned: bool) -> None:
    """Rebuild `table` as a range-partitioned table (or back to a plain one), keeping names and rows.

    Constraints and indexes are re-created from their own definitions (pg_get_constraintdef /
    pg_get_indexdef) under their original names, so Django's view of the schema does not change. The
    primary key (the natural key) contains measured_at, as PostgreSQL requires of a partitioned table's
    unique keys; ON CONFLICT on it then works through the parent.
    """
    old = f"{table}_before_conversion"
    with db.cursor() as cursor:
        cursor.execute(
            """
            SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
            WHERE conrelid = to_regclass(%s) AND contype IN ('p', 'u', 'f', 'c') ORDER BY contype DESC
            """,
            [table],
        )
        constraints = cursor.fetchall()
        cursor.execute(
            """
            SELECT i.relname, pg_get_indexdef(x.indexrelid) FROM pg_index x
            JOIN pg_class i ON i.oid = x.indexrelid
            WHERE x.indrelid = to_regclass(%s)
              AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)
            """,
            [table],
        )
        indexes = cursor.fetchall()
        cursor.execute(f'ALTER TABLE "{table}" RENAME TO "{old}"')
        for name, _ in constraints:
            cursor.execute(f'ALTER TABLE "{old}" RENAME CONSTRAINT "{name}" TO "{name}_old"')
        for name, _ in indexes:
            cursor.execute(f'ALTER INDEX "{name}" RENAME TO "{name}_old"')
        suffix = " PARTITION BY RANGE (measured_at)" if partitioned else ""
        cursor.execute(f'CREATE TABLE "{table}" (LIKE "{old}" INCLUDING DEFAULTS){suffix}')
        for name, definition in constraints:
            cursor.execute(f'ALTER TABLE "{table}" ADD CONSTRAINT "{name}" {definition}')
        for _, definition in indexes:
            cursor.execute(definition)
        if partitioned:
            cursor.execute(f'CREATE TABLE "{default_partition(table)}" PARTITION OF "{table}" DEFAULT')
    if partitioned:
        from django.conf import settings

        now = datetime.now(UTC)
        ensure_partitions(
            now - timedelta(days=settings.RAW_READING_RETENTION_DAYS),
            now + timedelta(weeks=settings.READING_PARTITION_PREMAKE_WEEKS),
        )
    with db.cursor() as cursor:
        cursor.execute(f'INSERT INTO "{table}" SELECT * FROM "{old}"')
        cursor.execute(f'DROP TABLE "{old}" CASCADE')
