"""One JSON error shape for every API error:

    {"error": {"code": "invalid_source", "message": "...", "details": {...} | null}}

`code` is stable and machine-readable; `message` is for people; `details` carries field errors. Bodies never
echo tokens or readings.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

_CODES = {
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.AuthenticationFailed: "not_authenticated",
    exceptions.PermissionDenied: "permission_denied",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.ParseError: "malformed_request",
    exceptions.Throttled: "rate_limited",
    exceptions.ValidationError: "invalid_request",
}


class APIError(exceptions.APIException):
    """An error with our own code and optional details."""

    def __init__(self, status_code: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(detail=message, code=code)
        self.status_code = status_code
        self.error_code = code
        self.details = details


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = exception_handler(exc, context)  # sets WWW-Authenticate and Retry-After headers
    if response is None or not isinstance(exc, exceptions.APIException):
        return response  # not an API error: Django's 500 handling (and Sentry) take it
    if isinstance(exc, APIError):
        body = error_body(exc.error_code, str(exc.detail), exc.details)
    elif isinstance(exc, exceptions.ValidationError):
        details = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        body = error_body("invalid_request", _first_message(details), details)
    elif isinstance(exc, exceptions.AuthenticationFailed | exceptions.NotAuthenticated):
        # One message for every rejected token: which check failed is for our logs, not for the caller.
        body = error_body("not_authenticated", "Authentication credentials were missing or not valid.")
    else:
        code = next((c for cls, c in _CODES.items() if isinstance(exc, cls)), "error")
        body = error_body(code, str(exc.detail))
        if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
            body["error"]["details"] = {"retry_after_seconds": int(exc.wait + 0.999)}
    response.data = body
    if response.status_code == status.HTTP_401_UNAUTHORIZED and "WWW-Authenticate" not in response:
        response["WWW-Authenticate"] = 'Bearer realm="api"'
    return response


def _first_message(details: Any) -> str:
    """A one-line summary of field errors: 'start: Enter a valid date.'"""
    if isinstance(details, dict):
        for key, value in details.items():
            inner = _first_message(value)
            return inner if key == "non_field_errors" else f"{key}: {inner}"
    if isinstance(details, list) and details:
        return _first_message(details[0])
    return str(details) if details else "Invalid request."
