"""The orjson renderer writes the bytes DRF's JSONRenderer would."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.utils.translation import gettext_lazy
from rest_framework.renderers import JSONRenderer

from connections.api.jsoncodec import ORJSONRenderer


def test_the_renderer_writes_what_drf_writes() -> None:
    data = {
        "text": "line\u2028paragraph\u2029 é ü 中",
        "moment": datetime(2026, 3, 1, 8, 30, 15, 123456, tzinfo=UTC),
        "whole_second": datetime(2026, 3, 1, 8, 30, tzinfo=UTC),
        "day": date(2026, 3, 1),
        "numbers": [0, -3, 1.5, 60.0, 2**40, 0.1],
        "none": None,
        "flags": [True, False],
        "lazy": gettext_lazy("Not found."),
        "decimal": Decimal("1.25"),
        "duration": timedelta(minutes=90),
        "nested": {"results": [{"metric": "heart_rate", "avg_7d": None}], "next": None},
    }

    assert ORJSONRenderer().render(data) == JSONRenderer().render(data)
    assert ORJSONRenderer().render(None) == JSONRenderer().render(None) == b""
