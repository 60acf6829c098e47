"""The embedded server is reused only when the server on the recorded port really serves its folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings

from loopsync import embedded_db


def test_a_folder_without_a_running_server_has_no_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded_db, "PGDATA", tmp_path)

    assert embedded_db.running_port() is None


def test_a_stale_postmaster_pid_naming_another_servers_port_is_not_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After a reboot, the recorded port may belong to another PostgreSQL: the test server is one.
    database = settings.DATABASES["default"]
    if database["HOST"] not in ("127.0.0.1", "localhost"):
        pytest.skip("the embedded server listens on 127.0.0.1: the test server must too")
    port = database["PORT"] or 5432
    (tmp_path / "postmaster.pid").write_text(
        f"4242\n{tmp_path}\n1700000000\n{port}\n\n127.0.0.1\n0 0\nready\n"
    )
    monkeypatch.setattr(embedded_db, "PGDATA", tmp_path)

    assert embedded_db.running_port() is None
