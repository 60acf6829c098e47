"""Exit 0 if the PostgreSQL server in the given URL accepts connections (used by `make test`)."""

from __future__ import annotations

import sys

import psycopg


def main(url: str) -> int:
    # Connect to the maintenance database: the test database itself is created by the test runner.
    base, _, _ = url.rpartition("/")
    try:
        with psycopg.connect(f"{base}/postgres", connect_timeout=3):
            return 0
    except psycopg.Error:
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
