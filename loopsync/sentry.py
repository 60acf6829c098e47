"""Sentry: errors from web requests and jobs, Crons check-ins per scheduled job, and no PHI in either.

`init_sentry()` runs from settings when SENTRY_DSN is set. Scrubbing fails open if it relies on one layer,
so there are five:
1. the SDK collects less: no default PII, no frame local variables (a batch of readings lives in locals),
   no request bodies;
2. a recursive EventScrubber removes values under token, reading, identifier and query key names anywhere
   (span data included);
3. `before_send` drops what we never need (request data, cookies, query strings, extra, frame vars) and
   rewrites free text (exception values, messages, log lines, URLs) through `scrub_text`, which also
   removes every query-string value (OAuth codes and states, signed connect links);
4. `before_send_transaction` does the same to performance transactions, whose request, spans and trace
   context carried the callback's query string untouched: span descriptions and URLs are scrubbed, span
   query, fragment and SQL-parameter data dropped;
5. `before_breadcrumb` drops SQL parameters and HTTP bodies and scrubs messages and URLs.
Log records are scrubbed before Sentry's logging hook sees them (`loopsync.logging.ScrubQueryFilter`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import sentry_sdk
from sentry_sdk.integrations.django import DjangoIntegration
from sentry_sdk.integrations.logging import LoggingIntegration
from sentry_sdk.scrubber import DEFAULT_DENYLIST, DEFAULT_PII_DENYLIST, EventScrubber

from loopsync.logging import FILTERED, scrub_query

# Key names whose values are PHI, credentials or identifiers in our data (lower case, compared exactly).
PHI_DENYLIST = [
    "access_token",
    "refresh_token",
    "id_token",
    "code",
    "client_secret",
    "x_vital_api_key",
    "x-vital-api-key",
    "value",
    "values",
    "value_mg_dl",
    "original_value",
    "range_flag",
    "mean_mg_dl",
    "readings",
    "reading",
    "glucose",
    "egvs",
    "data",
    "samples",
    "timeseries",
    "heart_rate",
    "heartrate",
    "hr",
    "hrv",
    "sleep",
    "workouts",
    "body",
    "payload",
    "user_id",
    "junction_user_id",
    "clerk_user_id",
    "email",
    "sub",
    # OAuth state, and the query strings and SQL parameters that carry codes, states and connect links.
    "state",
    "query_string",
    "http.query",
    "http.fragment",
    "db.params",
]

_TEXT_PATTERNS = [
    # JWTs and bearer credentials.
    re.compile(r"\beyJ[\w-]+\.[\w-]+\.[\w-]+"),
    re.compile(r"(?i)\b(bearer|basic)\s+[\w.~+/=-]+"),
    # key=value / "key": "value" for credential-like keys.
    re.compile(
        r"(?i)\b(?P<key>access_token|refresh_token|id_token|client_secret|api[_-]?key|password|secret|token|code|state)"
        r"(?P<sep>\"?\s*[:=]\s*\"?)[^\s\"&,;}]+"
    ),
    # Provider API keys (sk_us_..., sk_eu_...).
    re.compile(r"\bsk_[a-z]{2}_[\w-]+"),
    # UUIDs: Junction user ids, WHOOP/Dexcom ids.
    re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.IGNORECASE),
    re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b"),
    # Long opaque strings with a digit: hex digests, base64url tokens (routes have no digits run this long).
    re.compile(r"\b(?=[A-Za-z_\-]*\d)[A-Za-z0-9_\-]{24,}"),
    # Decimal numbers with a unit or after "value": a reading that slipped into a message.
    re.compile(r"(?i)\b\d+(?:\.\d+)?\s*(?:mg/dl|mmol/l|bpm|ms|kcal|steps)\b"),
    re.compile(r"(?i)\b(?P<key>value|reading|glucose)(?P<sep>\"?\s*[:=]\s*\"?)-?\d+(?:\.\d+)?"),
]


def scrub_text(text: str) -> str:
    """Remove query-string values, tokens, identifiers and reading values from free text (messages, errors,
    URLs)."""
    text = scrub_query(text)
    for pattern in _TEXT_PATTERNS:
        text = pattern.sub(_replacement, text)
    return text


def _replacement(match: re.Match[str]) -> str:
    # Keep the key of a key=value pair so the message still says what was removed.
    parts = match.groupdict()
    if parts.get("key") is not None:
        return f"{parts['key']}{parts['sep']}{FILTERED}"
    return FILTERED


def _scrub_exceptions(event: dict[str, Any]) -> None:
    for exception in (event.get("exception") or {}).get("values") or []:
        if isinstance(exception.get("value"), str):
            exception["value"] = scrub_text(exception["value"])
        for frame in (exception.get("stacktrace") or {}).get("frames") or []:
            frame.pop("vars", None)
    for thread in (event.get("threads") or {}).get("values") or []:
        for frame in (thread.get("stacktrace") or {}).get("frames") or []:
            frame.pop("vars", None)


def _scrub_request(event: dict[str, Any]) -> None:
    request = event.get("request")
    if isinstance(request, dict):
        for key in ("data", "cookies", "query_string", "env"):
            request.pop(key, None)
        if isinstance(request.get("url"), str):
            request["url"] = scrub_text(request["url"])
        headers = request.get("headers")
        if isinstance(headers, dict):
            request["headers"] = {
                k: v
                for k, v in headers.items()
                if k.lower() in {"user-agent", "content-type", "accept", "host"}
            }
    # Anything attached as extra could be a payload; tags and contexts carry what we chose to send.
    event.pop("extra", None)
    event.pop("user", None)
    breadcrumbs = event.get("breadcrumbs")
    if isinstance(breadcrumbs, dict) and isinstance(breadcrumbs.get("values"), list):
        breadcrumbs["values"] = [b for b in (before_breadcrumb(b, {}) for b in breadcrumbs["values"]) if b]


def before_send(event: dict[str, Any], hint: Mapping[str, Any]) -> dict[str, Any] | None:
    _scrub_request(event)
    _scrub_exceptions(event)
    if isinstance(event.get("message"), str):
        event["message"] = scrub_text(event["message"])
    logentry = event.get("logentry")
    if isinstance(logentry, dict):
        if isinstance(logentry.get("message"), str):
            logentry["message"] = scrub_text(logentry["message"])
        # Log arguments are interpolated values: never needed to group an error.
        logentry.pop("params", None)
        if isinstance(logentry.get("formatted"), str):
            logentry["formatted"] = scrub_text(logentry["formatted"])
    return event


# Span data that is a query string, a fragment or SQL parameters: never needed to read a trace.
_DROPPED_SPAN_DATA = {"http.query", "http.fragment", "db.params", "db.cursor"}


def _scrub_span(span: dict[str, Any]) -> None:
    for key in ("description", "name"):
        if isinstance(span.get(key), str):
            span[key] = scrub_text(span[key])
    data = span.get("data")
    if isinstance(data, dict):
        span["data"] = {
            k: scrub_text(v) if isinstance(v, str) else v
            for k, v in data.items()
            if k not in _DROPPED_SPAN_DATA and (v is None or isinstance(v, str | int | float | bool))
        }


def before_send_transaction(event: dict[str, Any], hint: Mapping[str, Any]) -> dict[str, Any] | None:
    """A performance transaction: the request as `before_send` leaves it, and every span scrubbed."""
    _scrub_request(event)
    if isinstance(event.get("transaction"), str):
        event["transaction"] = scrub_text(event["transaction"])
    trace = (event.get("contexts") or {}).get("trace")
    if isinstance(trace, dict):
        _scrub_span(trace)
    for span in event.get("spans") or []:
        if isinstance(span, dict):
            _scrub_span(span)
    return event


def before_breadcrumb(crumb: dict[str, Any], hint: Mapping[str, Any]) -> dict[str, Any] | None:
    data = crumb.get("data")
    if isinstance(data, dict):
        # SQL parameters are readings and identifiers; HTTP breadcrumbs keep method, status and a scrubbed URL.
        kept = {k: v for k, v in data.items() if k in {"method", "status_code", "reason", "url", "db.system"}}
        if isinstance(kept.get("url"), str):
            kept["url"] = scrub_text(kept["url"])
        crumb["data"] = kept
    if isinstance(crumb.get("message"), str):
        crumb["message"] = scrub_text(crumb["message"])
    return crumb


def init_sentry(
    dsn: str,
    *,
    environment: str = "",
    release: str = "",
    traces_sample_rate: float = 0.0,
    transport: Any = None,
) -> None:
    """Start sentry-sdk 2.x with PHI-safe options; `transport` is for tests (a capturing Transport)."""
    options: dict[str, Any] = {
        "dsn": dsn,
        "integrations": [DjangoIntegration(), LoggingIntegration()],
        # Only what we list (plus the SDK's defaults): no integration turns itself on because a package
        # happens to be installed, and none adds data we did not review.
        "auto_enabling_integrations": False,
        "send_default_pii": False,
        "include_local_variables": False,
        # Source lines around a frame are code, not data, but a literal in a test or a debug line is not
        # worth the risk; file, function and line number are enough to find it.
        "include_source_context": False,
        "max_request_body_size": "never",
        "event_scrubber": EventScrubber(
            denylist=[*DEFAULT_DENYLIST, *PHI_DENYLIST], pii_denylist=DEFAULT_PII_DENYLIST, recursive=True
        ),
        "before_send": before_send,
        "before_send_transaction": before_send_transaction,
        "before_breadcrumb": before_breadcrumb,
        "traces_sample_rate": traces_sample_rate,
    }
    if environment:
        options["environment"] = environment
    if release:
        options["release"] = release
    if transport is not None:
        options["transport"] = transport
    sentry_sdk.init(**options)


def capture_sync_failure(*, provider: str, trigger: str, connection_id: int, error: str) -> None:
    """One error event per failed connection sync, grouped by provider and error kind (not by user)."""
    message = scrub_text(error) or "unknown error"
    kind = re.sub(r"\d{4,}", "N", re.sub(r"^attempt \d+: ", "", message))[:120]
    with sentry_sdk.new_scope() as scope:
        scope.set_tag("provider", provider)
        scope.set_tag("trigger", trigger)
        scope.set_tag("connection_id", str(connection_id))
        scope.fingerprint = ["sync-failed", provider, kind]
        sentry_sdk.capture_message(f"{provider} sync failed: {message}", level="error")
