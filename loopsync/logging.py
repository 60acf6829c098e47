"""Log formatting: key=value text for terminals, one JSON object per line with LOG_FORMAT=json.

Structured fields arrive through `extra=` (counts, ids, durations, routes); never readings or tokens.
Query strings carry OAuth codes, states and signed connect links, so `ScrubQueryFilter` removes their values
from every line (Django's own 4xx warnings and runserver's request lines included).
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any

import orjson

FILTERED = "[Filtered]"

# `?name=value` / `&name=value` anywhere in text: the name stays (it says what was there), the value goes.
_QUERY_VALUE = re.compile(r"(?P<key>[?&][^=&?#\s\"'<>]{1,64}=)[^&#\s\"'<>]*")


def scrub_query(text: str) -> str:
    """Replace every query-string value in `text` with [Filtered]."""
    return _QUERY_VALUE.sub(rf"\g<key>{FILTERED}", text) if "=" in text else text


class ScrubQueryFilter(logging.Filter):
    """Rewrites a record so that no handler, formatter or Sentry breadcrumb sees a query string's values.

    Django's `django.request` warnings attach the request, whose repr is the full path with its query, and
    runserver's `django.server` lines are the raw request line; both reached the console as they were.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed call is logging's own error to report, not this filter's
            return True
        scrubbed = scrub_query(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        request = record.__dict__.get("request")
        if request is not None and not isinstance(request, str):
            path = getattr(request, "path", None)
            if isinstance(path, str):
                record.request = f"{getattr(request, 'method', '')} {path}"
            else:
                # runserver passes its socket: addresses, nothing a log line needs.
                del record.request
        return True


_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")}


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info and record.exc_info[0]:
            # The exception type only: messages and tracebacks can carry payload fragments.
            payload["exc_type"] = record.exc_info[0].__name__
        return orjson.dumps(payload, default=str).decode()
