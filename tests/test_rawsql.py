"""Plain-SQL hot reads (loopsync/rawsql.py): the same values Django would return, and no connection kept alive."""

from __future__ import annotations

import gc
import weakref
from datetime import UTC, date, datetime

import pytest
from django.db import connection

from connections.models import Patient, SyncRequest
from loopsync.rawsql import fetch_rows, first_instance, select_fields


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="the reused cursor is PostgreSQL's")
def test_a_closed_connection_is_not_kept_alive_by_the_reused_cursor() -> None:
    fetch_rows("SELECT 1", [])
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
