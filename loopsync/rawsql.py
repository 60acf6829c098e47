"""Plain-SQL reads for the hottest request paths, where the ORM's query compilation costs more than the
indexed read itself. Values come back as Django would return them on either database."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime
from functools import cache
from typing import Any, TypeVar

import psycopg
from django.db import connection
from django.db.models import DateField, DateTimeField, Field, Model
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
    """Every row of a read on the default connection (its transaction, if one is open).

    On PostgreSQL through one reused server-side-binding cursor per connection, as a prepared statement
    (unless DB_PREPARED_STATEMENTS is off): the statement reaches the server with typed parameters rather
    than as a string with literals inlined (Django's default), and is parsed and planned once per connection.
    The daily-stats page costs PostgreSQL 0.30 ms unprepared and 0.13 ms prepared (pgbench, same query); a
    cursor made per call cost more client CPU than the query. Callers bind every value that varies (limits
    included), so one statement serves every request of a shape; constants stay literals in the text, where
    the planner can match them against partial indexes. `prepare=False` for reads of the partitioned reading
    tables: before PostgreSQL 17 a generic plan locks every partition (and its indexes) on each execution,
    where a custom plan locks only the weeks it reads.
    """
    if connection.vendor != "postgresql":
        with connection.cursor() as db:
            db.execute(sql, params)
            return db.fetchall()
    with connection.wrap_database_errors:
        return execute_bound(sql, params, prepare=prepare).fetchall()


def execute_bound(sql: str, params: Any, *, prepare: bool = False) -> Any:
    """PostgreSQL: run one statement with its parameters sent apart from the text (a named parameter used
    several times travels once; Django's own cursor pastes every use in as a literal); returns the cursor.
    `prepare`: a read run on every request, kept prepared on this connection (not one-off scans, whose
    generic plan could be poor), and run once more on a new connection when the kept one has gone stale."""
    connection.ensure_connection()
    with connection.wrap_database_errors:
        try:
            return _execute(sql, params, prepare)
        except (psycopg.OperationalError, psycopg.errors.FeatureNotSupported) as exc:
            if not (prepare and _stale(exc)) or connection.in_atomic_block:
                raise
        # Connections are kept between requests (DB_CONN_MAX_AGE), and this is often a request's only query:
        # a server restart or idle timeout, or a migration run by another process that changed a column a
        # prepared statement returns ("cached plan must not change result type", which psycopg would hit on
        # every later call), would otherwise fail every request of this worker until the connection ages
        # out. A read outside a transaction is safe to run again; Django's own per-request health check
        # would cost a round trip on every request instead.
        connection.close()
        connection.ensure_connection()
        return _execute(sql, params, prepare)


def _execute(sql: str, params: Any, prepare: bool) -> Any:
    cursor = _server_binding_cursor()
    cursor.execute(sql, params, prepare=prepare)
    return cursor


def _stale(exc: Exception) -> bool:
    """The kept connection is gone, or holds a prepared statement whose result type a migration changed."""
    if isinstance(exc, psycopg.errors.FeatureNotSupported):
        return True
    return bool(connection.connection is None or connection.connection.closed)


def _server_binding_cursor() -> Any:
    """The cursor of the connection's current psycopg connection, made once. Kept on Django's wrapper (one per
    thread), so a reconnect replaces it and a closed connection's cursor is not kept beyond the next call.
    These reads bypass Django's cursor wrapper: no execute_wrappers, not in `connection.queries`."""
    raw = connection.connection
    held = getattr(connection, "_loopsync_cursor", None)
    if held is None or held[0] is not raw or held[1].closed:
        cursor = psycopg.Cursor(raw)
        # psycopg types an int by its size (smallint, integer, bigint), and the type is part of a prepared
        # statement's key: patient 40000 would get a second statement and plan beside patient 4000's.
        cursor.adapters.register_dumper(int, Int8Dumper)
        held = (raw, cursor)
        connection._loopsync_cursor = held  # type: ignore[attr-defined]
    return held[1]


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
