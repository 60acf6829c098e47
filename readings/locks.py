"""One run at a time for jobs whose deliveries may overlap (django-q2 delivers at least once)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection as db


@contextmanager
def single_flight(lock_key: int) -> Iterator[bool]:
    """Yield True if this process holds the session advisory lock `lock_key`, False if another run does."""
    with db.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [lock_key])
        acquired = bool(cursor.fetchone()[0])
    try:
        yield acquired
    finally:
        if acquired:
            with db.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [lock_key])
