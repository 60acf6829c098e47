"""The OpenAPI schema's shared parts: the problem responses every operation can answer with, and the enums
whose values come from the provider registry, filled in when the schema is generated (so a provider registered
at run time is in them, as the API itself accepts it at once)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from drf_spectacular.utils import extend_schema_field

METRIC, DAILY_METRIC, SOURCE = "Metric", "DailyMetric", "Source"

_ENUM_DESCRIPTIONS = {
    METRIC: "A wearable metric: what the registered providers store.",
    DAILY_METRIC: "A daily statistic's metric: any wearable metric, and glucose when a provider stores it.",
    SOURCE: "A source a patient can sync: a direct provider (whoop, dexcom, libre) or a provider connected "
    "through Junction (oura, garmin, ...).",
}


def enum_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def enum_field(name: str) -> Any:
    """A serializer field documented as the registry-derived enum `name`."""
    return extend_schema_field(enum_ref(name))


def _enum_values() -> dict[str, list[str]]:
    from connections.actions import accepted_sources
    from readings.api import daily_metrics, known_metrics

    return {
        METRIC: sorted(known_metrics()),
        DAILY_METRIC: sorted(daily_metrics()),
        SOURCE: list(accepted_sources()),
    }


def registry_enums(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """POSTPROCESSING_HOOKS: the registry-derived enum components the fields and parameters refer to."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    for name, values in _enum_values().items():
        schemas[name] = {"type": "string", "enum": values, "description": _ENUM_DESCRIPTIONS[name]}
    result["components"]["schemas"] = dict(sorted(schemas.items()))
    return result


class AutoSchema(SpectacularAutoSchema):
    """drf-spectacular's AutoSchema, adding the problem responses any operation can answer with: 406 (an Accept
    header without JSON), 500 (a failure of ours), and 415 (a body that is not JSON) where it takes a body."""

    def get_operation(self, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        operation: dict[str, Any] | None = super().get_operation(*args, **kwargs)
        if operation is None:
            return None
        from connections.api.base import problem

        defaults = {
            **problem("The Accept header allows no JSON.", "not_acceptable"),
            **problem("The server failed; the failure is logged and reported.", "internal_error"),
        }
        if "requestBody" in operation:
            defaults |= problem("The body is not application/json.", "unsupported_media_type")
        responses = operation["responses"]
        for (status, media_type), response in defaults.items():
            if str(status) not in responses:
                responses[str(status)] = self._get_response_for_code(response, str(status), [media_type])
        for status, (header, description) in _HEADERS.items():
            if status in responses:
                responses[status].setdefault("headers", {})[header] = {
                    "schema": {"type": "string"},
                    "required": True,
                    "description": description,
                }
        return operation


# Response headers every operation answering these statuses sends.
_HEADERS = {
    "202": ("Location", "The sync request's status URL (GET it until `status` is success or failed)."),
    "429": ("Retry-After", "Seconds to wait before asking again (also the problem's `retry_after_seconds`)."),
    "401": ("WWW-Authenticate", 'The Bearer challenge, e.g. `Bearer realm="api"`.'),
}
