"""JSON responses rendered by orjson: the same bytes DRF's JSONRenderer writes (compact, UTF-8, UTC as `Z`),
several times faster on pages of hundreds of rows."""

from __future__ import annotations

from typing import Any

import orjson
from rest_framework.renderers import JSONRenderer
from rest_framework.utils.encoders import JSONEncoder

# What orjson does not know natively (lazy translations, Decimal, timedelta, querysets) is converted exactly
# as DRF's encoder converts it.
_drf_default = JSONEncoder().default


class ORJSONRenderer(JSONRenderer):
    def render(
        self,
        data: Any,
        accepted_media_type: str | None = None,
        renderer_context: dict[str, Any] | None = None,
    ) -> bytes:
        if data is None:
            return b""
        return orjson.dumps(data, default=_drf_default, option=orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS)
