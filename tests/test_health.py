"""/healthz (liveness) and /healthz/ready (readiness: the database and django-q2's broker) (issue 17, item 8)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client
from django_q.models import OrmQ

pytestmark = pytest.mark.django_db

READY = "/healthz/ready"


def ready() -> tuple[int, dict[str, str]]:
    response = Client().get(READY, headers={"Accept": "application/json"})
    return response.status_code, response.json()


def test_readiness_checks_the_database_and_the_queue() -> None:
    status, body = ready()
    assert status == 200, body
    assert body == {"Database(alias='default')": "OK", "QueueBroker()": "OK"}


def test_readiness_fails_when_the_database_is_down(monkeypatch: pytest.MonkeyPatch) -> None:
    # A new connection (each check opens its own, in a worker thread) goes to a port nothing listens on.
    monkeypatch.setitem(connection.settings_dict, "PORT", "1")
    status, body = ready()
    assert status == 500
    assert body["Database(alias='default')"].startswith("Unavailable")
    assert body["QueueBroker()"].startswith("Unavailable")
    # Nothing that names the server leaks into the public answer.
    assert "127.0.0.1" not in str(body) and "port" not in str(body)


def test_readiness_fails_when_the_queue_table_cannot_be_read(monkeypatch: pytest.MonkeyPatch) -> None:
    # The database answers, django-q2's broker table does not (say, its migrations never ran).
    monkeypatch.setattr(OrmQ._meta, "db_table", "django_q_ormq_missing")
    status, body = ready()
    assert status == 500
    assert body["Database(alias='default')"] == "OK"
    assert body["QueueBroker()"] == "Unavailable: the task queue's table cannot be read (ProgrammingError)"


def test_liveness_answers_without_touching_the_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(connection.settings_dict, "PORT", "1")
    response = Client().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"ok": True}


def test_readiness_answers_a_probe_that_sends_no_accept_header() -> None:
    response = Client().get(READY)
    assert response.status_code == 200
    assert response["Cache-Control"].startswith("max-age=0")
