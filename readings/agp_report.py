"""The one-page AGP report for the admin (International Diabetes Center layout): statistics, the time-in-ranges
bar against the consensus targets, the AGP curve (median, 25-75 and 5-95 percentile bands, target range shaded)
and one small daily profile per day. Server-rendered SVG like connections/charts.py: no scripts, no assets.

Also the 14-day triage columns of the connection list (TIR, TBR, % active), annotated by subquery over the
per-day glucose statistics.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from django.db import connection as db
from django.db.models import F, FloatField, OuterRef, QuerySet, Subquery, Sum, Value
from django.db.models.functions import Cast, NullIf
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from readings import glucose_metrics as gm
from readings.store import local_day_bounds

REPORT_DAYS = 14
# Band colours of the AGP report (very low to very high).
BANDS = (
    ("very_low_percent", "Very low (<54)", "#8b0000", "<1%"),
    ("low_percent", "Low (54-69)", "#e53e3e", "<4%"),
    ("target_percent", "Target (70-180)", "#38a169", ">70%"),
    ("high_percent", "High (181-250)", "#ecc94b", "<25%"),
    ("very_high_percent", "Very high (>250)", "#dd6b20", "<5%"),
)
Y_MAX = 400.0


def _svg_open(width: int, height: int, label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(label)}" class="ls-agp">'
    )


def tir_bar_svg(metrics: gm.GlucoseMetrics, *, width: int = 300, height: int = 260) -> SafeString:
    """The stacked time-in-ranges bar, very high on top, each band with its % and the consensus target."""
    bar_x, bar_w, top, bottom = 20, 60, 14, height - 14
    parts = [_svg_open(width, height, "Time in ranges")]
    values = [getattr(metrics, field) for field, *_ in BANDS]
    if values[0] is None:
        parts.append(f'<text x="{bar_x}" y="{height / 2}" font-size="12" fill="#888">no data</text></svg>')
        return mark_safe("".join(parts))  # noqa: S308 - no interpolated text
    # Very small bands still get 2 px so they can be seen; the labels carry the numbers.
    heights = [max(2.0, (bottom - top) * (v or 0) / 100) if v else 0.0 for v in values]
    scale = (bottom - top) / sum(heights)
    # Labels beside their band, bottom band first, kept 14 px apart and inside the picture.
    y = float(bottom)
    rects, wanted = [], []
    for h in heights:
        h *= scale
        y -= h
        rects.append((y, h))
        wanted.append(y + h / 2 + 4)
    label_ys: list[float] = []
    for want in wanted:
        label_ys.append(min(want, float(bottom), label_ys[-1] - 14 if label_ys else want))
    for i in range(len(label_ys) - 1, -1, -1):
        floor = 12.0 if i == len(label_ys) - 1 else label_ys[i + 1] + 14
        label_ys[i] = max(label_ys[i], floor)
    for (field, label, color, target), (y, h), value, text_y in zip(
        BANDS, rects, values, label_ys, strict=True
    ):
        parts.append(
            f'<rect x="{bar_x}" y="{y:.1f}" width="{bar_w}" height="{h:.1f}" fill="{color}">'
            f"<title>{escape(label)}: {value or 0:.1f}%</title></rect>"
        )
        parts.append(
            f'<text x="{bar_x + bar_w + 10}" y="{text_y:.1f}" font-size="11" data-band="{field}">'
            f'{escape(label)} <tspan font-weight="bold">{value or 0:.1f}%</tspan> '
            f'<tspan fill="#666">(goal {escape(target)})</tspan></text>'
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every interpolated string is escaped above


def agp_svg(slots: Sequence[gm.AgpSlot], *, width: int = 760, height: int = 300) -> SafeString:
    """The AGP curve over 24 hours: 5-95 and 25-75 percentile bands, the median, the 70-180 target range."""
    left, right, top, bottom = 40, 22, 14, 26
    plot_w, plot_h = width - left - right, height - top - bottom
    parts = [_svg_open(width, height, "Ambulatory glucose profile")]

    def x(minute: float) -> float:
        return left + plot_w * minute / 1440

    def y(value: float) -> float:
        return top + plot_h * (1 - min(value, Y_MAX) / Y_MAX)

    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#ccc"/>')
    parts.append(
        f'<rect x="{left}" y="{y(gm.HIGH):.1f}" width="{plot_w}" height="{y(gm.LOW) - y(gm.HIGH):.1f}" '
        f'fill="#c6f6d5" opacity="0.7" class="agp-target"/>'
    )
    for value in (54, 70, 180, 250, 350):
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y(value):.1f}" y2="{y(value):.1f}" stroke="#e2e2e2"/>'
            f'<text x="{left - 4}" y="{y(value) + 3:.1f}" font-size="10" text-anchor="end" fill="#555">{value}</text>'
        )
    for hour in range(0, 25, 3):
        parts.append(
            f'<text x="{x(hour * 60):.1f}" y="{height - 8}" font-size="10" text-anchor="middle" fill="#555">'
            f"{hour % 24:02d}:00</text>"
        )
    if not slots:
        parts.append(
            f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" text-anchor="middle" font-size="12" '
            f'fill="#888">no data in this period</text></svg>'
        )
        return mark_safe("".join(parts))  # noqa: S308 - no interpolated text
    centre = [s.minute + gm.AGP_SLOT_MINUTES / 2 for s in slots]

    def band(low: str, high: str, color: str, opacity: float, name: str) -> str:
        upper = " ".join(f"{x(m):.1f},{y(getattr(s, high)):.1f}" for m, s in zip(centre, slots, strict=True))
        lower = " ".join(
            f"{x(m):.1f},{y(getattr(s, low)):.1f}" for m, s in reversed(list(zip(centre, slots, strict=True)))
        )
        return f'<polygon points="{upper} {lower}" fill="{color}" opacity="{opacity}" class="{name}"/>'

    parts.append(band("p5", "p95", "#90cdf4", 0.45, "agp-p5-p95"))
    parts.append(band("p25", "p75", "#3182ce", 0.55, "agp-p25-p75"))
    median = " ".join(f"{x(m):.1f},{y(s.p50):.1f}" for m, s in zip(centre, slots, strict=True))
    parts.append(
        f'<polyline points="{median}" fill="none" stroke="#1a365d" stroke-width="2" class="agp-median"/>'
    )
    parts.append(
        f'<text x="{width - right}" y="11" font-size="10" text-anchor="end" fill="#555">mg/dL: median, '
        f"25-75% and 5-95% of readings per 15 minutes; target 70-180 shaded</text></svg>"
    )
    return mark_safe("".join(parts))  # noqa: S308 - every interpolated string is escaped above


def daily_profile_svg(
    day: date, points: Sequence[tuple[float, float]], *, width: int = 104, height: int = 70
) -> SafeString:
    """One local day: readings (minute of day, mg/dL) over the target band."""
    top, bottom = 12, 4
    plot_h = height - top - bottom

    def x(minute: float) -> float:
        return width * minute / 1440

    def y(value: float) -> float:
        return top + plot_h * (1 - min(value, Y_MAX) / Y_MAX)

    parts = [
        _svg_open(width, height, f"Glucose on {day:%Y-%m-%d}"),
        f'<text x="2" y="10" font-size="9" fill="#555">{day:%a %d %b}</text>',
        f'<rect x="0" y="{top}" width="{width}" height="{plot_h}" fill="#fff" stroke="#ddd"/>',
        f'<rect x="0" y="{y(gm.HIGH):.1f}" width="{width}" height="{y(gm.LOW) - y(gm.HIGH):.1f}" fill="#c6f6d5"/>',
    ]
    segment: list[str] = []
    previous = None
    for minute, value in points:
        if previous is not None and minute - previous > 2 * gm.DEFAULT_INTERVAL_MINUTES and segment:
            parts.append(
                f'<polyline points="{" ".join(segment)}" fill="none" stroke="#2c5282" stroke-width="1"/>'
            )
            segment = []
        segment.append(f"{x(minute):.1f},{y(value):.1f}")
        previous = minute
    if segment:
        parts.append(
            f'<polyline points="{" ".join(segment)}" fill="none" stroke="#2c5282" stroke-width="1"/>'
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every interpolated string is formatted by us


_DAILY_POINTS = """
SELECT (c.measured_at AT TIME ZONE %(tz)s)::date AS day,
       extract(epoch FROM (c.measured_at AT TIME ZONE %(tz)s)
                          - date_trunc('day', c.measured_at AT TIME ZONE %(tz)s)) / 60.0 AS minute,
       c.value_mg_dl
FROM ({counted}) c
WHERE c.patient_id = %(patient)s AND c.measured_at >= %(lo)s AND c.measured_at < %(hi)s
ORDER BY c.measured_at
"""


def daily_points(
    patient_id: int, time_zone: str, start: date, end: date
) -> dict[date, list[tuple[float, float]]]:
    tz = ZoneInfo(time_zone)
    lo, _ = local_day_bounds(start, tz)
    _, hi = local_day_bounds(end, tz)
    out: dict[date, list[tuple[float, float]]] = defaultdict(list)
    with db.cursor() as cursor:
        cursor.execute(
            _DAILY_POINTS.replace("{counted}", gm.counted_glucose_sql(gm.PATIENT_SPAN)),
            {"tz": time_zone, "patient": patient_id, "lo": lo, "hi": hi},
        )
        for day, minute, value in cursor.fetchall():
            out[day].append((float(minute), value))
    return out


def agp_report_context(
    patient_id: int, time_zone: str, now: datetime, days: int = REPORT_DAYS
) -> dict[str, Any]:
    """Everything the report template shows, for the `days` local days ending today."""
    end = now.astimezone(ZoneInfo(time_zone)).date()
    start = end - timedelta(days=days - 1)
    result = gm.summary(patient_id, time_zone, end, days, until=now)
    metrics = result.current
    points = daily_points(patient_id, time_zone, start, end)
    profiles = [
        daily_profile_svg(start + timedelta(days=i), points.get(start + timedelta(days=i), []))
        for i in range(days)
    ]
    return {
        "agp_start": start,
        "agp_end": end,
        "agp_days": days,
        "agp_metrics": metrics,
        "agp_previous": result.previous,
        "agp_change": result.change,
        "agp_targets": gm.targets_for(metrics),
        "agp_tir_svg": tir_bar_svg(metrics),
        "agp_curve_svg": agp_svg(gm.agp(patient_id, time_zone, end, days)),
        "agp_profiles": profiles,
    }


# --- Connection list triage ----------------------------------------------------------------------------------


def with_glucose_14d(queryset: QuerySet[Any], today: date) -> QuerySet[Any]:
    """Annotate each row (with a `patient_id`) with its patient's 14-day TIR, TBR (< 70) and % active.

    The days are the 14 dates up to `today` (UTC date; a patient far from UTC gains or loses a day at the
    edges, which a triage sort tolerates). NULL when the patient has no glucose in the window.
    """
    from readings.models import GlucoseDay

    window = (
        GlucoseDay.objects.filter(
            patient=OuterRef("patient_id"), day__gt=today - timedelta(days=REPORT_DAYS), day__lte=today
        )
        .order_by()
        .values("patient")
    )

    def share(expression: Any, of: Any) -> Subquery:
        return Subquery(
            window.annotate(v=Cast(Value(100.0) * expression / NullIf(of, 0.0), FloatField())).values("v")[
                :1
            ],
            output_field=FloatField(),
        )

    active = Sum("active_minutes")
    return queryset.annotate(
        glucose_tir_14d=share(Sum("target_minutes"), active),
        glucose_tbr_14d=share(Sum(F("very_low_minutes") + F("low_minutes")), active),
        glucose_active_14d=share(active, Value(REPORT_DAYS * 1440.0)),
    )
