"""Plain-SQL reads for the hottest request paths, where the ORM's query compilation costs more than the
indexed read itself. Values come back as Django would return them on either database."""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from datetime import UTC, date, datetime
from functools import cache, lru_cache
from typing import Any, TypeVar

import psycopg
from django.conf import settings
from django.db import connection
from django.db.models import DateField, DateTimeField, Field, Model
from psycopg import pq
from psycopg.adapt import PyFormat, Transformer
from psycopg.types.numeric import Int8Dumper

M = TypeVar("M", bound=Model)


def aware_utc(value: Any) -> Any:
    """A datetime column's value: SQLite hands it back naive UTC (as Django stores it), as text or parsed by
    its declared type; PostgreSQL already returns it aware."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def as_date(value: Any) -> Any:
    """A date column's value: text on SQLite, a date on PostgreSQL."""
    return date.fromisoformat(value) if isinstance(value, str) else value


def from_db(field: Field[Any, Any]) -> Any:
    """The converter a raw value of `field` needs, or None (PostgreSQL returns dates and aware datetimes)."""
    if connection.vendor == "postgresql":
        return None
    if isinstance(field, DateTimeField):
        return aware_utc
    if isinstance(field, DateField):
        return as_date
    return None


def to_db(field: Field[Any, Any]) -> Any:
    """The adapter a parameter compared with `field` needs (SQLite: naive UTC text), or None."""
    if connection.vendor == "postgresql":
        return None  # psycopg binds dates and aware datetimes as they are
    if isinstance(field, DateTimeField):
        return connection.ops.adapt_datetimefield_value
    if isinstance(field, DateField):
        return connection.ops.adapt_datefield_value
    return None


def select_fields(model: type[Model]) -> str:
    """`SELECT <every concrete column> FROM <table>`, for first_instance()."""
    return _select_fields(model, connection.vendor)


@cache
def _select_fields(model: type[Model], vendor: str) -> str:
    quote = connection.ops.quote_name
    columns = ", ".join(quote(f.column) for f in model._meta.concrete_fields)
    return f"SELECT {columns} FROM {quote(model._meta.db_table)}"


def fetch_rows(sql: str, params: Sequence[Any], *, prepare: bool = True) -> list[tuple[Any, ...]]:
    """Every row of a read on the default connection (its transaction, if one is open). `sql` takes `%s`
    placeholders (`%%` for a literal percent sign).

    On PostgreSQL, a statement prepared once per connection (unless DB_PREPARED_STATEMENTS is off) and run
    straight through libpq (see `_ConnectionReads`): it reaches the server with typed parameters, and is
    parsed and planned once. The daily-stats page costs PostgreSQL 0.30 ms unprepared and 0.13 ms prepared
    (pgbench, same query). Callers bind every value that varies (limits included), so one statement serves
    every request of a shape; constants stay literals in the text, where the planner can match them against
    partial indexes. `prepare=False` for reads of the partitioned reading tables: before PostgreSQL 17 a
    generic plan locks every partition (and its indexes) on each execution, where a custom plan locks only
    the weeks it reads.
    """
    if connection.vendor != "postgresql":
        with connection.cursor() as db:
            db.execute(sql, params)
            return db.fetchall()
    prepared = prepare and settings.DB_PREPARED_STATEMENTS
    connection.ensure_connection()
    with connection.wrap_database_errors:
        try:
            return _rows(sql, params, prepared)
        except psycopg.OperationalError:
            if (
                connection.in_atomic_block
                or not connection.get_autocommit()
                or not connection.connection.closed
            ):
                raise
        # Connections are kept between requests (DB_CONN_MAX_AGE), and this is often a request's only query:
        # after a server restart or an idle timeout it would fail every request of this worker until the
        # connection ages out. A read outside a transaction is safe to run again; Django's own per-request
        # health check would cost a round trip on every request instead.
        connection.close()
        connection.ensure_connection()
        return _rows(sql, params, prepared)


def execute_bound(sql: str, params: Any) -> Any:
    """PostgreSQL: run one statement with its parameters sent apart from the text (a named parameter used
    several times travels once; Django's own cursor pastes every use in as a literal); returns the cursor."""
    connection.ensure_connection()
    with connection.wrap_database_errors:
        cursor = _reads().cursor
        cursor.execute(sql, params)
        return cursor


def _rows(sql: str, params: Sequence[Any], prepared: bool) -> list[tuple[Any, ...]]:
    reads = _reads()
    if not prepared or (
        not reads.raw.autocommit and reads.raw.pgconn.transaction_status == pq.TransactionStatus.IDLE
    ):
        # Unprepared; or Django opened a transaction (atomic) and nothing has run in it yet: psycopg sends the
        # BEGIN with the first statement it runs itself, and this read must be inside that transaction.
        return reads.cursor.execute(sql, params).fetchall()
    return reads.prepared_rows(sql, params)


def _reads() -> _ConnectionReads:
    """The plain-SQL state of the connection's current psycopg connection, kept on that connection: its
    statements exist there and nowhere else (a connection from a pool keeps them between checkouts), and
    the two are freed together when Django drops the connection. These reads bypass Django's cursor wrapper:
    no execute_wrappers, not in `connection.queries`."""
    raw = connection.connection
    reads = getattr(raw, "_loopsync_reads", None)
    if reads is None:
        reads = _ConnectionReads(raw)
        raw._loopsync_reads = reads
    return reads


# Statement names are unique in the process, not only per connection: a name can then never meet a connection
# that already has it, whatever keeps our state.
_statement_numbers = itertools.count(1)


class _ConnectionReads:
    """One psycopg connection's reused server-side-binding cursor, and the statements fetch_rows prepared on
    it, run with libpq's PQexecPrepared.

    A psycopg cursor spends about as much client CPU per call on its generators, query conversion and
    prepared-statement bookkeeping as the server spends on the whole prepared daily-stats read (about 40 µs
    each, in a tight loop); run this way, the daily-stats and manual-sync requests cost the worker 30-45 µs
    less CPU each. `prepared_rows` is that path without the generality: one dump of the parameters, one libpq
    call (which releases the GIL while it waits), one load of the rows, with psycopg's own adapters, so values
    are exactly what a psycopg cursor returns.

    Names are ours (`loopsync_N`). psycopg deallocates only what it prepared itself, and it prepares nothing
    while its `prepare_threshold` is None (Django's default; a system check keeps it so). Protocol-level
    statements outlive a rollback; one that is gone anyway (a pooler's DISCARD ALL) or whose result type a
    migration changed ("cached plan must not change result type") is prepared again, and the read run again
    when no transaction was open. Statements are never evicted: callers pass fixed SQL texts (no
    variable-length IN lists), a handful of them, and they live as long as the connection.
    """

    __slots__ = ("raw", "cursor", "transformer", "names")

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw
        # Made once (a cursor made per call cost more client CPU than a prepared read). Its adapters bind ints
        # as bigint: psycopg types an int by its size (smallint, integer, bigint), the types are part of a
        # statement's key (patient 40000 would get a second statement and plan beside patient 4000's), and
        # 200 * 200 would overflow a smallint. The prepared path dumps with the same adapters.
        self.cursor = psycopg.Cursor(raw)
        self.cursor.adapters.register_dumper(int, Int8Dumper)
        self.transformer = Transformer(self.cursor)
        self.names: dict[tuple[bytes, tuple[int, ...]], bytes] = {}

    def prepared_rows(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        query, placeholders = _numbered(sql)
        if len(params) != placeholders:
            raise psycopg.ProgrammingError(f"the query has {placeholders} placeholders, {len(params)} given")
        pgconn = self.raw.pgconn
        tx = self.transformer
        with self.raw.lock:
            values = tx.dump_sequence(params, [PyFormat.AUTO] * len(params))
            key = (query, tx.types)
            for attempt in (1, 2):
                name = self.names.get(key) or self._prepare(key)
                result = pgconn.exec_prepared(name, values, tx.formats)
                if result.status == pq.ExecStatus.TUPLES_OK:
                    tx.set_pgresult(result)
                    return tx.load_rows(0, result.ntuples, tuple)
                error = self._error(result)
                if not isinstance(error, _STALE_STATEMENT):
                    raise error
                del self.names[key]
                if isinstance(error, _PLAN_CHANGED):
                    self._drop(name)
                # Outside a transaction the failed read changed nothing: run it again on a new statement.
                if attempt == 2 or pgconn.transaction_status != pq.TransactionStatus.IDLE:
                    raise error
        raise AssertionError("unreachable")

    def _prepare(self, key: tuple[bytes, tuple[int, ...]]) -> bytes:
        name = f"loopsync_{next(_statement_numbers)}".encode()
        result = self.raw.pgconn.prepare(name, key[0], key[1])
        if result.status != pq.ExecStatus.COMMAND_OK:
            raise self._error(result)
        self.names[key] = name
        return name

    def _drop(self, name: bytes) -> None:
        """Deallocate a statement; its name is never reused, so a failure here only leaves it allocated."""
        # The protocol's Close where libpq has it (17+): it works in an aborted transaction too, and PgBouncer
        # (1.21+) follows it, where it does not understand DEALLOCATE <name>.
        if psycopg.capabilities.has_send_close_prepared():
            self.raw.pgconn.close_prepared(name)
        elif self.raw.pgconn.transaction_status == pq.TransactionStatus.IDLE:
            self.raw.pgconn.exec_(b"DEALLOCATE " + name)

    def _error(self, result: pq.abc.PGresult) -> psycopg.Error:
        encoding = self.raw.info.encoding
        if result.status == pq.ExecStatus.COMMAND_OK:
            return psycopg.ProgrammingError("fetch_rows runs statements that return rows")
        if self.raw.pgconn.status == pq.ConnStatus.BAD and not result.error_field(
            pq.DiagnosticField.SQLSTATE
        ):
            # libpq reports a lost connection as a result without a SQLSTATE; psycopg raises this class.
            return psycopg.OperationalError(result.get_error_message(encoding))
        return psycopg.errors.error_from_result(result, encoding=encoding)


# "prepared statement does not exist" and "cached plan must not change result type" (by SQLSTATE: the
# message is in the server's language; another 0A000 at execution only costs a second try outside a transaction).
_PLAN_CHANGED = psycopg.errors.FeatureNotSupported
_STALE_STATEMENT = (psycopg.errors.InvalidSqlStatementName, _PLAN_CHANGED)


@lru_cache(maxsize=256)
def _numbered(sql: str) -> tuple[bytes, int]:
    """`%s` placeholders as PostgreSQL's `$1, $2, ...` and `%%` as `%` (what psycopg does for its cursors),
    with the number of placeholders."""
    count = 0

    def number(match: re.Match[str]) -> str:
        nonlocal count
        if match.group(1) == "%":
            return "%"
        if match.group(1) != "s":
            raise ValueError("fetch_rows takes %s placeholders only (%% for a percent sign)")
        count += 1
        return f"${count}"

    return re.sub(r"%(.?)", number, sql, flags=re.DOTALL).encode(), count


def first_instance(model: type[M], sql: str, params: Sequence[Any]) -> M | None:
    """The first row of `sql` (which selects select_fields(model)) as a model instance, or None."""
    rows = fetch_rows(sql, params)
    if not rows:
        return None
    attnames, converters = _row_shape(model, connection.vendor)
    values = [convert(v) if convert else v for convert, v in zip(converters, rows[0], strict=True)]
    return model.from_db(connection.alias, attnames, values)


@cache
def _row_shape(model: type[Model], vendor: str) -> tuple[list[str], list[Any]]:
    fields = model._meta.concrete_fields
    return [f.attname for f in fields], [from_db(f) for f in fields]
