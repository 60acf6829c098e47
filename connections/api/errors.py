"""Every error under /api/ is an RFC 9457 problem (`application/problem+json`):

    {"type": "/api/problems/invalid_parameter", "title": "Invalid parameter", "status": 400,
     "detail": "start: must be a date as YYYY-MM-DD", "instance": "/api/patient-graph/wearables/daily-stats",
     "code": "invalid_parameter", "errors": [{"field": "start", "message": "must be a date as YYYY-MM-DD"}]}

`code` is stable and machine-readable (one of `PROBLEMS`; `type` is its URI); `detail` is for people; `errors`
names each invalid field; a few codes add a member of their own (`accepted_sources`, `accepted_metrics`,
`max_body_bytes`, `retry_after_seconds`). Bodies never echo tokens, readings or query strings.

Three paths produce them: DRF's exceptions through `api_exception_handler` (REST_FRAMEWORK's EXCEPTION_HANDLER),
and everything else under /api/ that answers an error without one (no route matches: Django's 404; an unhandled
exception: Django's 500; a bad Host header: Django's 400) through `ProblemDetailsMiddleware`, which replaces
that body after Django's own handling ran (so the 500 is still logged and sent to Sentry).

Written here rather than taken from a library: drf-standardized-errors has its own non-RFC shape and schema
hooks, drf-problems is RFC 7807 and unmaintained since 2022, drf-canon (0.1.0) has no stable `code` member;
none covers Django's own 404 and 500 of /api/ routes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.utils.encoding import escape_uri_path
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import exception_handler

PROBLEM_CONTENT_TYPE = "application/problem+json"
API_PREFIX = "/api/"
PROBLEM_TYPE_PREFIX = "/api/problems/"


@dataclass(frozen=True)
class ProblemType:
    code: str
    status: int
    title: str
    description: str

    @property
    def type(self) -> str:
        return PROBLEM_TYPE_PREFIX + self.code


# The stable codes: never renamed or removed (a client may branch on them); new ones are added at the end.
PROBLEMS: dict[str, ProblemType] = {
    p.code: p
    for p in (
        ProblemType(
            "not_authenticated",
            401,
            "Not authenticated",
            "The bearer token is missing, expired or not valid (the same answer whatever check failed).",
        ),
        ProblemType("permission_denied", 403, "Permission denied", "The account may not use this endpoint."),
        ProblemType(
            "not_found", 404, "Not found", "No route matches the path, or the resource is not the caller's."
        ),
        ProblemType(
            "method_not_allowed", 405, "Method not allowed", "The route does not accept this method."
        ),
        ProblemType(
            "not_acceptable", 406, "Not acceptable", "The API answers JSON only; see the Accept header."
        ),
        ProblemType(
            "unsupported_media_type",
            415,
            "Unsupported media type",
            "Request bodies must be application/json.",
        ),
        ProblemType("malformed_request", 400, "Malformed request", "The body is not valid JSON."),
        ProblemType(
            "invalid_request", 400, "Invalid request", "The body breaks a rule; `errors` names the fields."
        ),
        ProblemType(
            "invalid_parameter",
            400,
            "Invalid parameter",
            "A query parameter is wrong; `errors` names it and why.",
        ),
        ProblemType(
            "invalid_source",
            400,
            "Unknown source",
            "The source is not one this API syncs; `accepted_sources` lists those it does.",
        ),
        ProblemType(
            "invalid_idempotency_key",
            400,
            "Invalid Idempotency-Key",
            "Idempotency-Key must be 1 to 255 printable ASCII characters without spaces.",
        ),
        ProblemType(
            "invalid_rows",
            400,
            "Invalid rows",
            "Some ingested rows are invalid (each named in `errors` by index and field); nothing was stored.",
        ),
        ProblemType(
            "no_connection",
            404,
            "No connection",
            "The patient has no active connection that syncs this source.",
        ),
        ProblemType(
            "idempotency_key_reused",
            422,
            "Idempotency-Key reused",
            "This Idempotency-Key was already used for a sync of another source.",
        ),
        ProblemType(
            "body_too_large",
            413,
            "Body too large",
            "The body exceeds the endpoint's limit (`max_body_bytes`); send the rows in smaller requests.",
        ),
        ProblemType(
            "rate_limited",
            429,
            "Too many requests",
            "A rate limit was reached; retry after the seconds in Retry-After (also `retry_after_seconds`).",
        ),
        ProblemType(
            "bad_request",
            400,
            "Bad request",
            "The request was refused before reaching the API (e.g. its Host).",
        ),
        ProblemType(
            "internal_error",
            500,
            "Internal server error",
            "The server failed to answer; the failure is logged and reported. Retrying later may work.",
        ),
        ProblemType(
            "invalid_signature",
            401,
            "Webhook signature refused",
            "A webhook delivery (POST /webhooks/<provider>) whose signature is missing, wrong or outside the "
            "5-minute tolerance, or whose body was changed after signing. Nothing was stored; the provider "
            "retries on its own schedule.",
        ),
    )
}

PROBLEM_CHOICES = [(p.code, p.title) for p in PROBLEMS.values()]

_DRF_CODES: tuple[tuple[type[exceptions.APIException], str], ...] = (
    (exceptions.NotAuthenticated, "not_authenticated"),
    (exceptions.AuthenticationFailed, "not_authenticated"),
    (exceptions.PermissionDenied, "permission_denied"),
    (exceptions.NotFound, "not_found"),
    (exceptions.MethodNotAllowed, "method_not_allowed"),
    (exceptions.NotAcceptable, "not_acceptable"),
    (exceptions.UnsupportedMediaType, "unsupported_media_type"),
    (exceptions.ParseError, "malformed_request"),
    (exceptions.Throttled, "rate_limited"),
    (exceptions.ValidationError, "invalid_request"),
)

# What an error response without a problem body of its own becomes (by status), else `bad_request` or
# `internal_error`.
_BY_STATUS = {401: "not_authenticated", 403: "permission_denied", 404: "not_found", 405: "method_not_allowed"}
_BY_STATUS |= {
    406: "not_acceptable",
    413: "body_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}

FieldErrors = dict[str, Any]


class APIError(exceptions.APIException):
    """An error with one of our codes; its status is the code's. `errors` maps a field to its message(s);
    `extra` adds members of the code's own (e.g. `accepted_sources`)."""

    def __init__(self, code: str, message: str, *, errors: FieldErrors | None = None, **extra: Any) -> None:
        problem = PROBLEMS[code]
        super().__init__(detail=message, code=code)
        self.status_code = problem.status
        self.problem = problem
        self.errors = errors
        self.extra = extra


def problem_body(
    problem: ProblemType,
    detail: str,
    instance: str,
    *,
    errors: list[dict[str, str]] | None = None,
    extra: dict[str, Any] | None = None,
    status_code: int | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": problem.type,
        "title": problem.title,
        "status": status_code or problem.status,
        "detail": detail,
        # The path as a URI reference; never the query string (connect links, dates: PHI-adjacent).
        "instance": instance,
        "code": problem.code,
    }
    if errors:
        body["errors"] = errors
    if extra:
        body.update(extra)
    return body


def field_errors(detail: Any, prefix: str = "") -> list[dict[str, str]]:
    """Field errors as a flat list, `{"field": "readings[3].value", "message": ...}`; an error of the whole body
    (DRF's non_field_errors) names no field."""
    if isinstance(detail, dict):
        out: list[dict[str, str]] = []
        for key, value in detail.items():
            if key == api_settings.NON_FIELD_ERRORS_KEY:
                out += field_errors(value, prefix)
            else:
                out += field_errors(value, f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(detail, list | tuple):
        if all(isinstance(item, str) for item in detail):
            return [_field_error(prefix, str(item)) for item in detail]
        out = []
        for index, item in enumerate(detail):
            out += field_errors(item, f"{prefix}[{index}]") if item else []
        return out
    return [_field_error(prefix, str(detail))]


def _field_error(field: str, message: str) -> dict[str, str]:
    return {"field": field, "message": message} if field else {"message": message}


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = exception_handler(exc, context)  # sets WWW-Authenticate and Retry-After headers
    if response is None or not isinstance(exc, exceptions.APIException):
        return response  # not an API error: Django's 500 handling (and Sentry) take it, then the middleware
    request = context.get("request")
    instance = escape_uri_path(request.path) if request is not None else ""
    errors: list[dict[str, str]] | None = None
    extra: dict[str, Any] = {}
    if isinstance(exc, APIError):
        problem, detail = exc.problem, str(exc.detail)
        errors = field_errors(exc.errors) if exc.errors else None
        extra = exc.extra
    elif isinstance(exc, exceptions.ValidationError):
        problem = PROBLEMS["invalid_request"]
        errors = field_errors(exc.detail)
        detail = _summary(errors)
    elif isinstance(exc, exceptions.AuthenticationFailed | exceptions.NotAuthenticated):
        # One message for every rejected token: which check failed is for our logs, not for the caller.
        problem, detail = (
            PROBLEMS["not_authenticated"],
            "Authentication credentials were missing or not valid.",
        )
    else:
        code = next((c for cls, c in _DRF_CODES if isinstance(exc, cls)), None)
        problem = PROBLEMS[code] if code else _problem_for_status(response.status_code)
        detail = str(exc.detail)
        if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
            extra = {"retry_after_seconds": int(exc.wait + 0.999)}
    response.data = problem_body(
        problem, detail, instance, errors=errors, extra=extra, status_code=response.status_code
    )
    response.content_type = PROBLEM_CONTENT_TYPE
    if response.status_code == status.HTTP_401_UNAUTHORIZED and "WWW-Authenticate" not in response:
        response["WWW-Authenticate"] = 'Bearer realm="api"'
    return response


def _summary(errors: Iterable[dict[str, str]]) -> str:
    """A one-line summary of field errors: 'start: Enter a valid date.'"""
    for error in errors:
        return f"{error['field']}: {error['message']}" if "field" in error else error["message"]
    return "Invalid request."


def _problem_for_status(status_code: int) -> ProblemType:
    code = _BY_STATUS.get(status_code) or ("internal_error" if status_code >= 500 else "bad_request")
    return PROBLEMS[code]


_DETAIL_BY_CODE = {
    "not_found": "No route or resource matches this path.",
    "internal_error": "The server failed to answer this request; the failure is logged.",
}


class ProblemDetailsMiddleware:
    """Under /api/, an error answered without a problem body (Django's 404 for an unknown route, its 500 for an
    unhandled exception, its 400 for a bad Host) becomes one. Runs after Django's own handling, which has
    logged the failure and sent it to Sentry; the body is replaced, never inspected or echoed."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (
            response.status_code >= 400
            and request.path_info.startswith(API_PREFIX)
            and not response.get("Content-Type", "").startswith(PROBLEM_CONTENT_TYPE)
        ):
            return problem_response(request, response)
        return response


def problem_response(request: HttpRequest, original: HttpResponse) -> HttpResponse:
    problem = _problem_for_status(original.status_code)
    try:
        phrase = HTTPStatus(original.status_code).phrase
    except ValueError:
        phrase = problem.title
    detail = _DETAIL_BY_CODE.get(problem.code) or phrase
    body = problem_body(problem, detail, escape_uri_path(request.path), status_code=original.status_code)
    response = HttpResponse(
        orjson.dumps(body), status=original.status_code, content_type=PROBLEM_CONTENT_TYPE
    )
    for header in ("Allow", "Retry-After", "WWW-Authenticate", "Vary"):
        if header in original:
            response[header] = original[header]
    return response
