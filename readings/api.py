"""Read API for the consumer app: daily statistics, raw readings and glucose readings of the caller.

Keyset ("cursor") pagination in primary-key order, so every page is an index range scan however deep the
client pages: daily stats by (metric, day), readings by (metric, source, source_type, measured_at), glucose by
(source, measured_at). Page sizes are bounded. Bad dates, metrics, page sizes or cursors are a 400 that says
which parameter and why.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from django.core.exceptions import ImproperlyConfigured
from django.db.models import DateField, DateTimeField, Model, QuerySet
from django.utils import timezone
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from connections.api.base import ERRORS, PatientAPIView, problem
from connections.api.errors import APIError
from connections.api.openapi import DAILY_METRIC, METRIC, enum_field, enum_ref
from connections.api.serializers import DailyMetricField
from connections.providers.registry import PROVIDERS
from readings.catalogue import CATALOGUE, describe
from readings.models import DailyStat, GlucoseReading, WearableReading
from readings.store import local_day_bounds


def known_metrics() -> frozenset[str]:
    """The wearable metrics a reading can have: what the registered providers store (read per request, so a
    provider registered at run time is known at once)."""
    return frozenset(metric for provider in PROVIDERS.values() for metric in provider.metrics)


GLUCOSE = "glucose"


def daily_metrics() -> frozenset[str]:
    """A daily statistic's metric: any wearable metric, and glucose when a provider stores it."""
    glucose = {GLUCOSE} if any(p.glucose for p in PROVIDERS.values()) else set()
    return known_metrics() | glucose


MAX_RANGE_DAYS = 366
DEFAULT_DAILY_DAYS = 30
DEFAULT_READINGS_DAYS = 7

# Dates and instants outside these bounds are a 400. No reading is stored before 2000 or after now, so
# nothing is lost; and inside them the arithmetic a request does (a default window of up to 366 days, a
# local day's UTC bounds, any UTC offset) stays within Python's years 1 to 9999, where 0001-01-01 or
# 9999-12-31 overflowed into a 500.
EARLIEST_DAY = date(1900, 1, 1)
LATEST_DAY = date(2999, 12, 31)
EARLIEST_MOMENT = datetime.combine(EARLIEST_DAY, time(0), tzinfo=UTC)
LATEST_MOMENT = datetime.combine(LATEST_DAY + timedelta(days=1), time(0), tzinfo=UTC)
SUPPORTED = f"from {EARLIEST_DAY.isoformat()} to {LATEST_DAY.isoformat()}"


# --- Parameters --------------------------------------------------------------------------------------------


def _bad(param: str, why: str) -> APIError:
    return APIError("invalid_parameter", f"{param}: {why}", errors={param: why})


def reject_unknown_parameters(request: Request, allowed: frozenset[str]) -> None:
    """A misspelt parameter (`metrics=`) is a 400, not silently ignored."""
    unknown = sorted(set(request.query_params) - allowed)
    if unknown:
        raise _bad(
            unknown[0][:40], f"is not a parameter of this endpoint; accepted: {', '.join(sorted(allowed))}"
        )


PAGED = frozenset({"start", "end", "cursor", "page_size"})


def parse_metric(request: Request, accepted: frozenset[str], *, required: bool = False) -> str | None:
    raw = request.query_params.get("metric")
    if raw is None:
        if required:
            raise _bad("metric", "is required")
        return None
    if raw not in accepted:
        raise APIError(
            "invalid_parameter",
            f"metric: {raw[:40]!r} is not a known metric; accepted: {', '.join(sorted(accepted))}",
            errors={"metric": "unknown metric"},
            accepted_metrics=sorted(accepted),
        )
    return raw


def parse_day(request: Request, name: str) -> date | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        day = date.fromisoformat(raw)
    except ValueError:
        raise _bad(name, "must be a date as YYYY-MM-DD") from None
    if not EARLIEST_DAY <= day <= LATEST_DAY:
        raise _bad(name, f"must be a date {SUPPORTED}")
    return day


def parse_moment(request: Request, name: str, tz: ZoneInfo, *, end: bool) -> datetime | None:
    """A date (the patient's local day; `end` includes the whole day) or an ISO-8601 datetime with offset."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if len(raw) == 10:
        try:
            day = date.fromisoformat(raw)
        except ValueError:
            raise _bad(name, "must be a date (YYYY-MM-DD) or an ISO-8601 datetime with offset") from None
        if not EARLIEST_DAY <= day <= LATEST_DAY:
            raise _bad(name, f"must be {SUPPORTED}")
        start, next_start = local_day_bounds(day, tz)
        return next_start if end else start
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise _bad(name, "must be a date (YYYY-MM-DD) or an ISO-8601 datetime with offset") from None
    if moment.tzinfo is None:
        raise _bad(name, "a datetime needs a UTC offset, e.g. 2026-03-01T00:00:00Z")
    utc = in_supported_range(moment)
    if utc is None:
        raise _bad(name, f"must be {SUPPORTED}")
    return utc


def in_supported_range(moment: datetime) -> datetime | None:
    """`moment` in UTC, or None when it is outside the supported years (or not even representable in UTC).

    The query gets the UTC instant: with its own offset, 9999-12-31T23:59:59-23:59 reached the database
    driver, which overflowed converting it.
    """
    try:
        utc = moment.astimezone(UTC)
    except OverflowError:
        return None
    return utc if EARLIEST_MOMENT <= utc <= LATEST_MOMENT else None


def parse_page_size(request: Request, default: int, maximum: int) -> int:
    raw = request.query_params.get("page_size")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _bad("page_size", f"must be a whole number from 1 to {maximum}") from None
    if not 1 <= value <= maximum:
        raise _bad("page_size", f"must be from 1 to {maximum}")
    return value


def check_range(start: Any, end: Any, *, limit: timedelta) -> None:
    if start >= end:
        raise _bad("start", "must be before end")
    if end - start > limit:
        raise _bad("end", f"the range is limited to {limit.days} days")


# --- Keyset pagination --------------------------------------------------------------------------------------


def _encode_cursor(values: Sequence[Any]) -> str:
    plain = [v.isoformat() if isinstance(v, date | datetime) else v for v in values]
    return base64.urlsafe_b64encode(orjson.dumps(plain)).decode().rstrip("=")


def _decode_cursor(raw: str, decoders: Sequence[Callable[[Any], Any]]) -> list[Any]:
    try:
        values = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        if not isinstance(values, list) or len(values) != len(decoders):
            raise ValueError
        return [decode(v) for decode, v in zip(decoders, values, strict=True)]
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise _bad("cursor", "is not a cursor this API returned") from None


def _text(value: Any) -> str:
    # PostgreSQL refuses NUL in text: a cursor carrying one would fail the query, not find nothing.
    if not isinstance(value, str) or "\x00" in value:
        raise ValueError
    return value


def _moment(value: Any) -> datetime:
    moment = datetime.fromisoformat(_text(value))
    utc = in_supported_range(moment) if moment.tzinfo is not None else None
    if utc is None:
        raise ValueError
    return utc


def _day(value: Any) -> date:
    day = date.fromisoformat(_text(value))
    if not EARLIEST_DAY <= day <= LATEST_DAY:
        raise ValueError
    return day


@dataclass(frozen=True)
class KeysetQuery:
    """One endpoint's page query, through the ORM (and so Django's cursor: query logging, Sentry's spans).

    `filters` are lookups, ANDed, each taking one value, one of them `patient`; `key` is the rest of the
    model's composite primary key after the patient, so the page after a cursor is `pk > (patient, *cursor)`,
    a row-value comparison PostgreSQL reads as one index range scan however deep the client pages.
    """

    model: type[Model]
    filters: tuple[str, ...]
    key: tuple[str, ...]
    columns: tuple[str, ...]

    def __post_init__(self) -> None:
        primary_key = [field.name for field in self.model._meta.pk_fields]
        if primary_key != ["patient", *self.key]:
            raise ImproperlyConfigured(
                f"{self.model.__name__}: the key must be its primary key after patient"
            )

    @cached_property
    def _ordered_rows(self) -> QuerySet[Any, dict[str, Any]]:
        # Built once and filtered per request (each filter() clones it): the ordering and the column list
        # are the same on every page, and resolving them again cost a sixth of the page's read.
        return self.model._default_manager.order_by(*self.key).values(*self.columns)

    @cached_property
    def _cursor_decoders(self) -> list[Callable[[Any], Any]]:
        decoders: list[Callable[[Any], Any]] = []
        for name in self.key:
            field = self.model._meta.get_field(name)
            is_moment, is_day = isinstance(field, DateTimeField), isinstance(field, DateField)
            decoders.append(_moment if is_moment else _day if is_day else _text)
        return decoders

    def page(self, request: Request, values: Sequence[Any], page_size: int) -> Response:
        """One page in key order after the request's cursor; `next_cursor` is null on the last page."""
        lookups = dict(zip(self.filters, values, strict=True))
        raw_cursor = request.query_params.get("cursor")
        if raw_cursor:
            last = _decode_cursor(raw_cursor, self._cursor_decoders)
            lookups["pk__gt"] = (lookups["patient"], *last)
        results = list(self._ordered_rows.filter(**lookups)[: page_size + 1])
        more = len(results) > page_size
        del results[page_size:]
        next_cursor = _encode_cursor([results[-1][name] for name in self.key]) if more else None
        next_url = None
        if next_cursor:
            query = request.query_params.copy()
            query["cursor"] = next_cursor
            next_url = request.build_absolute_uri(f"{request.path}?{query.urlencode()}")
        return Response({"results": results, "next_cursor": next_cursor, "next": next_url})


# --- Serializers (the schema; rows come from values(), not through these) ------------------------------------


@enum_field(METRIC)
class MetricField(serializers.CharField):
    """A wearable metric (the schema's `Metric` enum, derived from the provider registry)."""


# Stored as the provider sent it (a Junction provider slug, or a direct provider's key): an open set, so a
# string, not the `Source` enum of the sources a patient can ask to sync.
READING_SOURCE = (
    "The provider that measured it, as it names itself (a Junction provider slug such as oura, or whoop, "
    "dexcom, libre); new providers may appear."
)


class DailyStatOut(serializers.Serializer):
    metric = DailyMetricField(help_text="The metric.")
    day = serializers.DateField(help_text="The patient-local day.")
    avg = serializers.FloatField(
        help_text="Mean of the day's readings (all sources, deduplicated by priority)."
    )
    min = serializers.FloatField(help_text="Smallest reading of the day.")
    max = serializers.FloatField(help_text="Largest reading of the day.")
    sum = serializers.FloatField(help_text="Sum of the day's readings (steps, calories: the day's total).")
    count = serializers.IntegerField(help_text="How many readings the day has.")
    avg_7d = serializers.FloatField(
        allow_null=True,
        help_text="Mean of the daily averages of the 7 days ending this day; null until computed.",
    )
    avg_30d = serializers.FloatField(
        allow_null=True,
        help_text="Mean of the daily averages of the 30 days ending this day; null until computed.",
    )


class ReadingOut(serializers.Serializer):
    metric = MetricField(help_text="The metric.")
    source = serializers.CharField(help_text=READING_SOURCE)
    source_type = serializers.CharField(
        help_text="The kind of device (ring, watch, phone, ...); may be empty."
    )
    measured_at = serializers.DateTimeField(help_text="When it was measured (UTC); a span's start.")
    end_at = serializers.DateTimeField(
        allow_null=True, help_text="A span's end (sleep, workouts); else null."
    )
    value = serializers.FloatField(help_text="The value, in `unit`.")
    unit = serializers.CharField(help_text="The value's unit (bpm, count, s, kcal, %, ...).")


class GlucoseOut(serializers.Serializer):
    source = serializers.CharField(help_text=READING_SOURCE)
    measured_at = serializers.DateTimeField(help_text="When it was measured (UTC).")
    value_mg_dl = serializers.FloatField(help_text="The glucose value in mg/dL.")
    original_value = serializers.FloatField(
        help_text="The value as the provider sent it, in `original_unit`."
    )
    original_unit = serializers.CharField(help_text="The provider's unit: mg/dL or mmol/L.")
    trend = serializers.CharField(help_text="The trend arrow as the provider names it; may be empty.")
    trend_rate = serializers.FloatField(allow_null=True, help_text="Rate of change in mg/dL/min, when sent.")
    device = serializers.CharField(help_text="The sensor or device, when known; may be empty.")
    range_flag = serializers.ChoiceField(
        choices=["above", "below"],
        allow_null=True,
        help_text="`above`/`below`: beyond the sensor's reporting range (Dexcom HIGH/LOW); value_mg_dl is then "
        "the sensor's limit (400 or 40 mg/dL), a bound rather than a measurement. null for an ordinary reading.",
    )


def _page_of(name: str, item: type[serializers.Serializer]) -> type[serializers.Serializer]:
    return type(
        name,
        (serializers.Serializer,),
        {
            "results": item(many=True, help_text="This page's rows, in key order."),
            "next_cursor": serializers.CharField(
                allow_null=True, help_text="Pass as `cursor` for the next page; null on the last page."
            ),
            "next": serializers.URLField(
                allow_null=True,
                help_text="The next page's full URL (this query with that cursor); null on the last.",
            ),
        },
    )


DailyStatPage = _page_of("DailyStatPage", DailyStatOut)
ReadingPage = _page_of("ReadingPage", ReadingOut)
GlucosePage = _page_of("GlucosePage", GlucoseOut)

BAD_REQUEST = problem(
    "A parameter is wrong; `detail` and `errors` say which and why.",
    "invalid_parameter",
    detail="start: must be a date as YYYY-MM-DD",
    errors=[{"field": "start", "message": "must be a date as YYYY-MM-DD"}],
)


def _page_example(name: str, path: str, row: dict[str, Any]) -> OpenApiExample:
    cursor = "WyJoZWFydF9yYXRlIiwiMjAyNi0wMy0wOSJd"
    return OpenApiExample(
        name,
        value={
            "results": [row],
            "next_cursor": cursor,
            "next": f"https://loopsync.example/api/patient-graph/wearables/{path}?page_size=1&cursor={cursor}",
        },
        response_only=True,
        status_codes=["200"],
    )


DAILY_STATS_EXAMPLE = _page_example(
    "A page of daily statistics",
    "daily-stats",
    {
        "metric": "heart_rate",
        "day": "2026-03-09",
        "avg": 61.4,
        "min": 48.0,
        "max": 131.0,
        "sum": 88416.0,
        "count": 1440,
        "avg_7d": 60.9,
        "avg_30d": 61.7,
    },
)
READINGS_EXAMPLE = _page_example(
    "A page of readings",
    "readings",
    {
        "metric": "heart_rate",
        "source": "oura",
        "source_type": "ring",
        "measured_at": "2026-03-09T08:00:00Z",
        "end_at": None,
        "value": 58.0,
        "unit": "bpm",
    },
)
GLUCOSE_EXAMPLE = _page_example(
    "A page of glucose readings",
    "glucose",
    {
        "source": "dexcom",
        "measured_at": "2026-03-09T08:05:00Z",
        "value_mg_dl": 104.0,
        "original_value": 104.0,
        "original_unit": "mg/dL",
        "trend": "flat",
        "trend_rate": 0.3,
        "device": "G7",
    },
)


def _params(
    metric_required: bool, dates_only: bool, default_size: int, max_size: int
) -> list[OpenApiParameter]:
    when = "a date (YYYY-MM-DD, the patient's local day)" + (
        "" if dates_only else " or an ISO-8601 datetime with offset"
    )
    return [
        OpenApiParameter("start", str, required=False, description=f"Inclusive; {when}."),
        OpenApiParameter(
            "end", str, required=False, description=f"Inclusive day / exclusive instant; {when}."
        ),
        OpenApiParameter("cursor", str, required=False, description="`next_cursor` of the previous page."),
        OpenApiParameter(
            "page_size",
            {"type": "integer", "minimum": 1, "maximum": max_size},
            required=False,
            description=f"1 to {max_size}; default {default_size}.",
        ),
    ]


# --- Views --------------------------------------------------------------------------------------------------


DAILY_STAT_COLUMNS = ("metric", "day", "avg", "min", "max", "sum", "count", "avg_7d", "avg_30d")


class DailyStatsView(PatientAPIView):
    DEFAULT_PAGE, MAX_PAGE = 100, 1000
    ALL_METRICS = KeysetQuery(
        DailyStat, ("patient", "day__gte", "day__lte"), ("metric", "day"), DAILY_STAT_COLUMNS
    )
    ONE_METRIC = KeysetQuery(
        DailyStat, ("patient", "metric", "day__gte", "day__lte"), ("metric", "day"), DAILY_STAT_COLUMNS
    )

    @extend_schema(
        operation_id="wearables_daily_stats_list",
        summary="Daily statistics per metric and patient-local day",
        parameters=[
            OpenApiParameter(
                "metric",
                enum_ref(DAILY_METRIC),
                required=False,
                description="One metric; all metrics if omitted. `sum` is the day's total, `avg` its mean; "
                "`avg_7d`/`avg_30d` follow each metric's rolling rule (the average daily total over the "
                "window's days with data for a summed metric, the sample-weighted mean otherwise; day D "
                "included). Metrics: " + describe(),
            ),
            *_params(False, True, DEFAULT_PAGE, MAX_PAGE),
        ],
        responses={200: DailyStatPage, **BAD_REQUEST, **ERRORS},
        examples=[DAILY_STATS_EXAMPLE],
        tags=["read"],
    )
    def get(self, request: Request) -> Response:
        reject_unknown_parameters(request, PAGED | {"metric"})
        patient = self.patient(request)
        metric = parse_metric(request, daily_metrics())
        end = parse_day(request, "end") or timezone.now().astimezone(ZoneInfo(patient.time_zone)).date()
        start = parse_day(request, "start") or end - timedelta(days=DEFAULT_DAILY_DAYS - 1)
        check_range(start, end + timedelta(days=1), limit=timedelta(days=MAX_RANGE_DAYS))
        page_size = parse_page_size(request, self.DEFAULT_PAGE, self.MAX_PAGE)
        if metric:
            return self.ONE_METRIC.page(request, [patient.pk, metric, start, end], page_size)
        return self.ALL_METRICS.page(request, [patient.pk, start, end], page_size)


class ReadingsView(PatientAPIView):
    DEFAULT_PAGE, MAX_PAGE = 500, 5000
    QUERY = KeysetQuery(
        WearableReading,
        ("patient", "metric", "measured_at__gte", "measured_at__lt"),
        ("metric", "source", "source_type", "measured_at"),
        ("metric", "source", "source_type", "measured_at", "end_at", "value", "unit"),
    )

    @extend_schema(
        operation_id="wearables_readings_list",
        summary="Raw wearable readings of one metric (ordered by source, then time)",
        parameters=[
            OpenApiParameter(
                "metric",
                enum_ref(METRIC),
                required=True,
                description="Metrics: " + describe([m for m in sorted(CATALOGUE) if m != "glucose"]),
            ),
            *_params(True, False, DEFAULT_PAGE, MAX_PAGE),
        ],
        responses={200: ReadingPage, **BAD_REQUEST, **ERRORS},
        examples=[READINGS_EXAMPLE],
        tags=["read"],
    )
    def get(self, request: Request) -> Response:
        reject_unknown_parameters(request, PAGED | {"metric"})
        patient = self.patient(request)
        metric = parse_metric(request, known_metrics(), required=True)
        start, end, page_size = _window(request, patient.time_zone, self.DEFAULT_PAGE, self.MAX_PAGE)
        return self.QUERY.page(request, [patient.pk, metric, start, end], page_size)


class GlucoseView(PatientAPIView):
    DEFAULT_PAGE, MAX_PAGE = 500, 5000
    QUERY = KeysetQuery(
        GlucoseReading,
        ("patient", "measured_at__gte", "measured_at__lt"),
        ("source", "measured_at"),
        (
            "source",
            "measured_at",
            "value_mg_dl",
            "original_value",
            "original_unit",
            "trend",
            "trend_rate",
            "device",
            "range_flag",
        ),
    )

    @extend_schema(
        operation_id="wearables_glucose_list",
        summary="Glucose readings in mg/dL (ordered by source, then time)",
        parameters=_params(False, False, DEFAULT_PAGE, MAX_PAGE),
        responses={200: GlucosePage, **BAD_REQUEST, **ERRORS},
        examples=[GLUCOSE_EXAMPLE],
        tags=["read"],
    )
    def get(self, request: Request) -> Response:
        reject_unknown_parameters(request, PAGED)
        patient = self.patient(request)
        start, end, page_size = _window(request, patient.time_zone, self.DEFAULT_PAGE, self.MAX_PAGE)
        return self.QUERY.page(request, [patient.pk, start, end], page_size)


def _window(
    request: Request, time_zone: str, default_size: int, max_size: int
) -> tuple[datetime, datetime, int]:
    tz = ZoneInfo(time_zone)
    end = parse_moment(request, "end", tz, end=True) or timezone.now()
    start = parse_moment(request, "start", tz, end=False) or end - timedelta(days=DEFAULT_READINGS_DAYS)
    check_range(start, end, limit=timedelta(days=MAX_RANGE_DAYS))
    return start, end, parse_page_size(request, default_size, max_size)
