"""Shared command line for `python -m sandbox` and `python manage.py sandbox`: same options, same behaviour."""

from __future__ import annotations

import argparse
import signal
import sys
from datetime import UTC, date, datetime, timedelta
from typing import Any, TextIO

from sandbox.junction import DEFAULT_API_KEY
from sandbox.junction_data import DEFAULT_DATA_START
from sandbox.server import SandboxServer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8765, help="TCP port on 127.0.0.1 (0 = any free port)")
    parser.add_argument("--users", type=int, default=20, help="number of simulated users")
    parser.add_argument("--seed", type=int, default=42, help="seed: same seed, same users and data")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY, help="value expected in x-vital-api-key")
    parser.add_argument("--page-size", type=int, default=2000, help="max samples per timeseries page")
    parser.add_argument(
        "--data-start",
        type=date.fromisoformat,
        default=DEFAULT_DATA_START,
        help="first day with data, YYYY-MM-DD",
    )
    parser.add_argument(
        "--warm-days",
        type=int,
        default=0,
        help="pre-generate the last N days for every user before listening (benchmarks: measure the sync, not us)",
    )
    parser.add_argument("--verbose", action="store_true", help="log each request line to stderr")
    # Benchmarks of long backfills (bench/backfill.py): deeper history, WHOOP's app budget scaled.
    parser.add_argument("--whoop-history-days", type=int, default=None, help="days of WHOOP history served")
    parser.add_argument("--dexcom-history-days", type=int, default=None, help="days of Dexcom history served")
    parser.add_argument("--whoop-per-minute", type=int, default=None, help="WHOOP's per-app limit per window")
    parser.add_argument("--whoop-minute-seconds", type=float, default=None, help="the length of that window")
    parser.add_argument("--whoop-per-day", type=int, default=None, help="WHOOP's per-app daily limit")


def run(options: dict[str, Any], out: TextIO = sys.stdout) -> None:
    """Serve in the foreground until Ctrl-C or SIGTERM. Once ready (after any warming) prints one line whose
    last word is the base URL, flushed, so a benchmark running this in a subprocess can wait for it and parse it."""
    server = SandboxServer(
        port=options["port"],
        users=options["users"],
        seed=options["seed"],
        api_key=options["api_key"],
        page_size=options["page_size"],
        data_start=options["data_start"],
        verbose=options["verbose"],
        dev_clerk_key=True,
    )

    def _terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # unwinds serve_forever on the main thread, like Ctrl-C

    for target, attribute, option in (
        (server.whoop, "history_days", "whoop_history_days"),
        (server.dexcom, "history_days", "dexcom_history_days"),
        (server.whoop, "per_minute", "whoop_per_minute"),
        (server.whoop, "minute_seconds", "whoop_minute_seconds"),
        (server.whoop, "per_day", "whoop_per_day"),
    ):
        if options.get(option) is not None:
            setattr(target, attribute, options[option])
            target._defaults[attribute] = options[option]  # type: ignore[attr-defined]  # survives a reset
    signal.signal(signal.SIGTERM, _terminate)
    if options.get("warm_days"):
        today = datetime.now(UTC).date()
        server.junction.warm(today - timedelta(days=options["warm_days"]), today + timedelta(days=1))
    out.write(f"Sandbox listening on {server.base_url}\n")
    out.write(
        f"Clerk (development key {server.clerk.kid}): issuer {server.clerk_url}, "
        f"JWKS {server.clerk_url}/.well-known/jwks.json\n"
    )
    out.flush()
    server.serve_forever_in_foreground()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description="Loop Sync provider sandbox")
    add_arguments(parser)
    run(vars(parser.parse_args(argv)))
