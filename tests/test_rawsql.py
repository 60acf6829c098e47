"""Plain-SQL hot reads (loopsync/rawsql.py): the same values Django would return, no connection kept alive, and
prepared once per connection on PostgreSQL."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import weakref
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from django.db import connection

from connections.models import Patient, SyncRequest
from loopsync import rawsql
from loopsync.rawsql import fetch_rows, first_instance, select_fields
from tests.api_helpers import client_for

ROOT = Path(__file__).resolve().parent.parent

# On SQLite fetch_rows is Django's own cursor: no statement is prepared, and no server connection is kept
# (and so lost, or retried) by our code.
POSTGRES_PREPARED = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="SQLite reads are not prepared: fetch_rows uses Django's cursor"
)
POSTGRES_CONNECTION_STATE = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="SQLite keeps no server connection or state of ours to lose, free or retry",
)


@pytest.mark.django_db(transaction=True)
@POSTGRES_CONNECTION_STATE
def test_a_closed_connection_is_freed_with_our_state_on_it() -> None:
    """Our cursor and statements hang off the psycopg connection they belong to: nothing of ours may keep a
    connection Django closed alive (a connection per DB_CONN_MAX_AGE would otherwise pile up)."""
    connection.close()  # a connection of this test's own, which no earlier test can hold
    fetch_rows("SELECT 1", [])  # a prepared statement
    fetch_rows("SELECT 1", [], prepare=False)  # the reused cursor
    first = weakref.ref(connection.connection)
    connection.close()

    assert fetch_rows("SELECT %s", [2]) == [(2,)]
    gc.collect()
    assert first() is None


@pytest.mark.django_db
def test_first_instance_returns_what_the_orm_returns() -> None:
    patient = Patient.objects.create(time_zone="UTC")
    made = SyncRequest.objects.create(
        patient=patient, source="oura", created_at=datetime(2026, 3, 1, 8, 30, 15, 123456, tzinfo=UTC)
    )

    read = first_instance(SyncRequest, f"{select_fields(SyncRequest)} WHERE id = %s", [made.pk])

    assert read is not None
    expected = SyncRequest.objects.get(pk=made.pk)
    for field in SyncRequest._meta.concrete_fields:
        assert getattr(read, field.attname) == getattr(expected, field.attname), field.name
    assert read.created_at.tzinfo is not None
    assert first_instance(SyncRequest, f"{select_fields(SyncRequest)} WHERE id = %s", [0]) is None
    assert fetch_rows("SELECT %s", [date(2026, 3, 1)])


def _prepared(table: str, where: str = "") -> list[tuple[str, int, int]]:
    """(name, generic plans, custom plans) of this session's prepared statements reading `table` (and whose
    WHERE clause starts with `where`). Statements outlive the rollback that ends each test."""
    with connection.cursor() as db:
        db.execute(
            "SELECT name, generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE %s",
            [f'%FROM "{table}"{f" WHERE {where}" if where else ""}%'],
        )
        return db.fetchall()


@pytest.mark.django_db
@POSTGRES_PREPARED
def test_the_hot_api_reads_are_prepared_once_and_run_on_a_generic_plan(clerk) -> None:  # type: ignore[no-untyped-def]
    """Each request shape is one statement on the connection, parsed and planned once: the page size is a
    parameter, and the sync lookup's statuses are literals, so its generic plan can use the partial unique
    index (with them as parameters PostgreSQL would re-plan every request)."""
    from readings.models import DailyStat

    patient = Patient.objects.create(time_zone="UTC", clerk_user_id="user_prepared")
    DailyStat.objects.bulk_create(
        DailyStat(
            patient=patient,
            metric="heart_rate",
            day=date(2026, 3, d),
            avg=60,
            min=50,
            max=70,
            sum=600,
            count=10,
        )
        for d in range(1, 11)
    )
    queued = SyncRequest.objects.create(patient=patient, source="oura")
    # An id past smallint: psycopg would type it integer, and a second statement would be prepared.
    other = Patient.objects.create(id=patient.pk + 40_000, time_zone="UTC", clerk_user_id="user_prepared_2")
    other_queued = SyncRequest.objects.create(patient=other, source="oura")
    other_client = client_for(clerk.mint("user_prepared_2"))
    client = client_for(clerk.mint("user_prepared"))
    daily_stats = "/api/patient-graph/wearables/daily-stats"

    for page_size in (3, 4, 5, 3, 4, 5, 3, 4):
        response = client.get(
            "/api/patient-graph/wearables/daily-stats",
            {"metric": "heart_rate", "start": "2026-03-01", "end": "2026-03-10", "page_size": page_size},
        )
        assert [row["day"] for row in response.json()["results"]] == [
            f"2026-03-0{d}" for d in range(1, page_size + 1)
        ]
        response = client.post("/api/patient-graph/wearables/sync", {"source": "oura"}, format="json")
        assert response.status_code == 202 and response.json()["id"] == queued.pk
        response = other_client.post("/api/patient-graph/wearables/sync", {"source": "oura"}, format="json")
        assert response.status_code == 202 and response.json()["id"] == other_queued.pk
        assert other_client.get(daily_stats, {"metric": "heart_rate"}).json()["results"] == []

    for _ in range(6):
        for endpoint in ("readings?metric=heart_rate", "glucose"):
            assert client.get(f"/api/patient-graph/wearables/{endpoint}").status_code == 200
    # Partitioned tables: a generic plan would lock every weekly partition on each execution.
    assert _prepared("patient_wearable_readings") == _prepared("patient_glucose_readings") == []
    for table, where in (("patient_wearable_daily_stats", ""), ("wearable_sync_requests", "patient_id")):
        plans = _prepared(table, where)
        assert len(plans) == 1, (table, plans)
        name, generic, custom = plans[0]
        assert generic >= 1 and custom <= 5, (table, plans)
    with connection.cursor() as db:
        db.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        db.execute("SET LOCAL enable_seqscan = off")  # a table this small would be scanned whole
        db.execute(f"EXPLAIN EXECUTE {name}(%s, %s)", [patient.pk, "oura"])
        plan = "\n".join(row[0] for row in db.fetchall())
    assert "sync_request_one_active_per_source" in plan, plan


def _other_connection() -> Any:
    import psycopg

    db = connection.settings_dict
    return psycopg.connect(
        host=db["HOST"],
        port=db["PORT"] or None,
        user=db["USER"],
        password=db["PASSWORD"] or None,
        dbname=connection.connection.info.dbname,
        autocommit=True,
    )


@pytest.mark.django_db(transaction=True)
@POSTGRES_PREPARED
def test_a_prepared_read_survives_a_migration_run_by_another_process() -> None:
    """A deploy migrates while the old workers still serve: a column type changed under a prepared statement
    fails it ("cached plan must not change result type") on every later call of that kept connection."""
    from django.db import NotSupportedError, transaction

    with connection.cursor() as db:
        db.execute("CREATE TABLE rawsql_probe (id int PRIMARY KEY, name varchar(10))")
        db.execute("INSERT INTO rawsql_probe VALUES (1, 'a')")
    try:
        assert fetch_rows("SELECT name FROM rawsql_probe WHERE id = %s", [1]) == [("a",)]
        with _other_connection() as other:
            other.execute("ALTER TABLE rawsql_probe ALTER COLUMN name TYPE text")

        assert fetch_rows("SELECT name FROM rawsql_probe WHERE id = %s", [1]) == [("a",)]
        assert fetch_rows("SELECT name FROM rawsql_probe WHERE id = %s", [1]) == [("a",)]
        assert len(_statements_like("SELECT name FROM rawsql_probe")) == 1  # the stale one closed

        # Inside a transaction the read fails (it cannot be run again there); the stale statement is still
        # closed, and the next read prepares a new one.
        with _other_connection() as other:
            other.execute("ALTER TABLE rawsql_probe ALTER COLUMN name TYPE varchar(20)")
        with pytest.raises(NotSupportedError, match="cached plan"), transaction.atomic():
            connection.cursor().execute("SELECT 1")
            fetch_rows("SELECT name FROM rawsql_probe WHERE id = %s", [1])
        assert _statements_like("SELECT name FROM rawsql_probe") == []
        assert fetch_rows("SELECT name FROM rawsql_probe WHERE id = %s", [1]) == [("a",)]
    finally:
        with connection.cursor() as db:
            db.execute("DROP TABLE rawsql_probe")


@pytest.mark.django_db(transaction=True)
@POSTGRES_CONNECTION_STATE
@pytest.mark.parametrize("prepared", [True, False])
def test_a_kept_connection_the_server_closed_is_replaced_for_a_read(prepared: bool, settings) -> None:  # type: ignore[no-untyped-def]
    """A server restart or idle timeout between requests: the read runs again on a new connection instead
    of failing the request, with prepared statements on or off (behind a transaction pooler)."""
    settings.DB_PREPARED_STATEMENTS = prepared
    assert fetch_rows("SELECT %s::int", [1]) == [(1,)]
    backend = connection.connection.info.backend_pid
    with _other_connection() as other:
        other.execute("SELECT pg_terminate_backend(%s)", [backend])

    assert fetch_rows("SELECT %s::int", [2]) == [(2,)]
    assert connection.connection.info.backend_pid != backend


@pytest.mark.django_db(transaction=True)
@POSTGRES_CONNECTION_STATE
def test_a_lost_connection_inside_a_transaction_is_an_error_not_a_retry() -> None:
    """Inside a transaction the earlier statements went with the connection: running the read again on a
    new one would hide that."""
    from django.db import OperationalError, transaction

    with pytest.raises(OperationalError), transaction.atomic():
        fetch_rows("SELECT %s::int", [1])
        with _other_connection() as other:
            other.execute("SELECT pg_terminate_backend(%s)", [connection.connection.info.backend_pid])
        fetch_rows("SELECT %s::int", [2])


@pytest.mark.django_db(transaction=True)
@POSTGRES_PREPARED
def test_a_statement_deallocated_behind_our_back_is_prepared_again() -> None:
    """A pooler's DISCARD ALL, or psycopg's DEALLOCATE ALL after a rollback of statements it prepared itself:
    outside a transaction the read is run again; inside one it is an error (the transaction is aborted), and
    the next read prepares the statement again."""
    from django.db import ProgrammingError, transaction

    assert fetch_rows("SELECT %s::int + 1", [1]) == [(2,)]
    with connection.cursor() as db:
        db.execute("DEALLOCATE ALL")
    assert fetch_rows("SELECT %s::int + 1", [2]) == [(3,)]

    with pytest.raises(ProgrammingError, match="does not exist"), transaction.atomic():
        connection.cursor().execute("DEALLOCATE ALL")
        fetch_rows("SELECT %s::int + 1", [3])
    assert fetch_rows("SELECT %s::int + 1", [4]) == [(5,)]


@pytest.mark.django_db(transaction=True)
@POSTGRES_PREPARED
def test_a_read_first_in_a_transaction_runs_inside_it() -> None:
    """psycopg sends BEGIN with the first statement it runs: a prepared read sent straight through libpq
    first would run on its own, outside the transaction Django opened."""
    from django.db import transaction

    with transaction.atomic():
        [(xid,)] = fetch_rows("SELECT pg_current_xact_id()::text", [])
        [(again,)] = fetch_rows("SELECT pg_current_xact_id_if_assigned()::text", [])
        with connection.cursor() as db:
            db.execute("SELECT pg_current_xact_id_if_assigned()::text")
            assert db.fetchone()[0] == again == xid


@pytest.mark.django_db
@POSTGRES_PREPARED
def test_a_failing_prepared_read_raises_djangos_error_and_the_statement_stays_usable() -> None:
    from django.db import DataError, transaction

    sql = "SELECT 10 / %s::int"
    assert fetch_rows(sql, [5]) == [(2,)]
    with pytest.raises(DataError, match="division by zero"), transaction.atomic():  # a savepoint
        fetch_rows(sql, [0])
    assert fetch_rows(sql, [2]) == [(5,)]
    assert len(_statements_like("SELECT 10 /")) == 1


@pytest.mark.django_db
@POSTGRES_PREPARED
def test_placeholders_must_match_the_parameters() -> None:
    from django.db import ProgrammingError, transaction

    with pytest.raises(ProgrammingError, match="2 placeholders, 1 given"), transaction.atomic():
        connection.cursor().execute("SELECT 1")  # a transaction under way: the prepared path
        fetch_rows("SELECT %s, %s", [1])
    with pytest.raises(ValueError, match="placeholders only"):
        rawsql._numbered("SELECT %(name)s")
    assert rawsql._numbered("SELECT %s, '100%%', %s") == (b"SELECT $1, '100%', $2", 2)
    assert fetch_rows("SELECT %s || '%%'", ["100"]) == [("100%",)]


def _statements_like(text: str) -> list[str]:
    with connection.cursor() as db:
        db.execute("SELECT name FROM pg_prepared_statements WHERE statement LIKE %s", [f"{text}%"])
        return [row[0] for row in db.fetchall()]


@pytest.mark.django_db(transaction=True)
@POSTGRES_PREPARED
def test_ints_are_bound_as_bigint_on_every_path() -> None:
    """psycopg would type 200 as smallint, and 200 * 200 would overflow on one path and not another."""
    from django.db import transaction

    assert fetch_rows("SELECT %s * %s", [200, 200]) == [(40000,)]
    assert fetch_rows("SELECT %s * %s", [200, 200], prepare=False) == [(40000,)]
    with transaction.atomic():
        assert fetch_rows("SELECT %s * %s", [200, 200]) == [(40000,)]  # first in it: psycopg's cursor


@pytest.mark.django_db(transaction=True)
@POSTGRES_PREPARED
def test_statement_names_never_clash_on_a_connection_that_already_has_ours() -> None:
    """State rebuilt for a connection that keeps its statements (a pooled connection, say) prepares under
    new names instead of failing on "prepared statement already exists"."""
    assert fetch_rows("SELECT %s::int", [1]) == [(1,)]
    del connection.connection._loopsync_reads

    assert fetch_rows("SELECT %s::int", [2]) == [(2,)]
    assert len(_statements_like("SELECT $1::int")) == 2


def test_psycopgs_own_prepared_statements_fail_the_system_check(settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """psycopg would deallocate every statement of the connection, ours included, after each rollback."""
    from connections.checks import loopsync_settings_check

    options = settings.DATABASES["default"].setdefault("OPTIONS", {})
    monkeypatch.setitem(options, "prepare_threshold", 5)
    assert "connections.E003" in {m.id for m in loopsync_settings_check(None)}
    settings.DB_PREPARED_STATEMENTS = False
    assert "connections.E003" not in {m.id for m in loopsync_settings_check(None)}
    monkeypatch.delitem(options, "prepare_threshold")
    settings.DB_PREPARED_STATEMENTS = True
    assert "connections.E003" not in {m.id for m in loopsync_settings_check(None)}


@POSTGRES_PREPARED
@pytest.mark.parametrize(("setting", "prepared"), [("true", 1), ("false", 0)])
def test_db_prepared_statements_turns_them_off_for_a_transaction_pooler(setting: str, prepared: int) -> None:
    """Behind a PgBouncer in transaction mode a prepared statement may be missing on the next server
    connection: DB_PREPARED_STATEMENTS=false must keep every statement unnamed."""
    db = connection.settings_dict
    # The server's `postgres` database: the script reads no table, and the test database is this process's.
    login = quote(db["USER"]) + (f":{quote(db['PASSWORD'])}" if db["PASSWORD"] else "")
    port = f":{db['PORT']}" if db["PORT"] else ""
    url = f"postgres://{login}@{quote(db['HOST'])}{port}/postgres"
    script = (
        "from django.db import connection;"
        "from loopsync.rawsql import fetch_rows;"
        "fetch_rows('SELECT %s::int', [1]);"
        "db = connection.cursor();"
        "db.execute('SELECT count(*) FROM pg_prepared_statements');"
        "print(db.fetchone()[0])"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_SETTINGS")}
    env = {**base, "DEBUG": "true", "DATABASE_URL": url, "DB_PREPARED_STATEMENTS": setting}
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-v", "0", "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) == prepared
