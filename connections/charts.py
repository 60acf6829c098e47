"""Small server-rendered SVG charts for the admin: no scripts, no external assets, readable without JS.

Inputs are already aggregated in SQL (hourly buckets, per-day sums), so a chart is a few hundred points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 44, 12, 22, 24


@dataclass(frozen=True)
class Bucket:
    """One aggregated interval: its start, mean, min and max."""

    start: datetime
    avg: float
    low: float
    high: float


def _fmt(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 10 else f"{value:.1f}"


def _nice_range(low: float, high: float) -> tuple[float, float]:
    if high <= low:
        return low - 1, high + 1
    pad = (high - low) * 0.08
    return low - pad, high + pad


def time_series_svg(
    buckets: Sequence[Bucket],
    *,
    start: datetime,
    end: datetime,
    title: str,
    unit: str,
    color: str = "#2b6cb0",
    bucket: timedelta = timedelta(hours=1),
    target: tuple[float, float] | None = None,
    width: int = 720,
    height: int = 180,
) -> SafeString:
    """Mean line with a min–max band; gaps longer than one bucket break the line. `target` shades a range."""
    plot_w = width - PAD_LEFT - PAD_RIGHT
    plot_h = height - PAD_TOP - PAD_BOTTOM
    span = (end - start).total_seconds() or 1.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" class="ls-chart">',
        f'<text x="{PAD_LEFT}" y="14" font-size="12" font-weight="bold">{escape(title)}</text>',
        f'<rect x="{PAD_LEFT}" y="{PAD_TOP}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#ddd"/>',
    ]
    if not buckets:
        parts.append(
            f'<text x="{PAD_LEFT + plot_w / 2}" y="{PAD_TOP + plot_h / 2}" text-anchor="middle" '
            f'font-size="12" fill="#888">no data in this period</text></svg>'
        )
        return mark_safe("".join(parts))  # noqa: S308 - every interpolated string is escaped above
    lows = [b.low for b in buckets] + ([target[0]] if target else [])
    highs = [b.high for b in buckets] + ([target[1]] if target else [])
    y_min, y_max = _nice_range(min(lows), max(highs))

    def x(t: datetime) -> float:
        return PAD_LEFT + plot_w * (t - start).total_seconds() / span

    def y(v: float) -> float:
        return PAD_TOP + plot_h * (1 - (v - y_min) / (y_max - y_min))

    if target:
        parts.append(
            f'<rect x="{PAD_LEFT}" y="{y(target[1]):.1f}" width="{plot_w}" '
            f'height="{y(target[0]) - y(target[1]):.1f}" fill="#c6f6d5" opacity="0.6"/>'
        )
    # Day grid and labels.
    day = datetime.combine(start.date() + timedelta(days=1), datetime.min.time(), tzinfo=start.tzinfo)
    while day < end:
        parts.append(
            f'<line x1="{x(day):.1f}" y1="{PAD_TOP}" x2="{x(day):.1f}" y2="{PAD_TOP + plot_h}" stroke="#e2e2e2"/>'
            f'<text x="{x(day) + 3:.1f}" y="{height - 8}" font-size="10" fill="#555">{day:%a %d}</text>'
        )
        day += timedelta(days=1)
    for value in (y_min + (y_max - y_min) * f for f in (0.1, 0.5, 0.9)):
        parts.append(
            f'<text x="{PAD_LEFT - 4}" y="{y(value) + 3:.1f}" font-size="10" text-anchor="end" '
            f'fill="#555">{_fmt(value)}</text>'
        )
    parts.append(
        f'<text x="{width - PAD_RIGHT}" y="14" font-size="10" text-anchor="end" fill="#555">{escape(unit)}, '
        f"hourly mean and range</text>"
    )
    for segment in _segments(buckets, bucket):
        upper = " ".join(f"{x(b.start):.1f},{y(b.high):.1f}" for b in segment)
        lower = " ".join(f"{x(b.start):.1f},{y(b.low):.1f}" for b in reversed(segment))
        parts.append(f'<polygon points="{upper} {lower}" fill="{color}" opacity="0.18"/>')
        line = " ".join(f"{x(b.start):.1f},{y(b.avg):.1f}" for b in segment)
        parts.append(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="1.5"/>')
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every interpolated string is escaped above


def _segments(buckets: Sequence[Bucket], bucket: timedelta) -> list[list[Bucket]]:
    segments: list[list[Bucket]] = []
    for b in buckets:
        if segments and b.start - segments[-1][-1].start <= bucket * 1.5:
            segments[-1].append(b)
        else:
            segments.append([b])
    return segments


def daily_bars_svg(
    days: Sequence[date],
    series: Sequence[tuple[str, str, Sequence[int]]],
    *,
    title: str,
    width: int = 560,
    height: int = 140,
) -> SafeString:
    """Grouped bars per day; `series` is (label, color, one value per day)."""
    plot_w = width - PAD_LEFT - PAD_RIGHT
    plot_h = height - PAD_TOP - PAD_BOTTOM
    top = max([1, *(v for _, _, values in series for v in values)])
    slot = plot_w / max(len(days), 1)
    bar_w = max(slot / (len(series) + 1), 1.0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" class="ls-chart">',
        f'<text x="{PAD_LEFT}" y="14" font-size="12" font-weight="bold">{escape(title)}</text>',
        f'<rect x="{PAD_LEFT}" y="{PAD_TOP}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#ddd"/>',
        f'<text x="{PAD_LEFT - 4}" y="{PAD_TOP + 8}" font-size="10" text-anchor="end" fill="#555">{top}</text>',
        f'<text x="{PAD_LEFT - 4}" y="{PAD_TOP + plot_h}" font-size="10" text-anchor="end" fill="#555">0</text>',
    ]
    legend_x = width - PAD_RIGHT
    for label, color, _ in reversed(series):
        parts.append(
            f'<text x="{legend_x}" y="14" font-size="10" text-anchor="end" fill="{color}">■ {escape(label)}</text>'
        )
        legend_x -= 9 * len(label) + 24
    for i, day in enumerate(days):
        for j, (label, color, values) in enumerate(series):
            value = values[i]
            if value <= 0:
                continue
            h = plot_h * value / top
            bx = PAD_LEFT + i * slot + (j + 0.5) * bar_w
            parts.append(
                f'<rect x="{bx:.1f}" y="{PAD_TOP + plot_h - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                f'fill="{color}"><title>{day:%Y-%m-%d} {escape(label)}: {value}</title></rect>'
            )
        if i % 7 == 0 or (i == len(days) - 1 and i % 7 >= 4):
            parts.append(
                f'<text x="{PAD_LEFT + i * slot:.1f}" y="{height - 8}" font-size="10" fill="#555">'
                f"{day:%b %d}</text>"
            )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every interpolated string is escaped above


def completeness_strip_svg(
    cells: Sequence[tuple[date, float | None]], *, title: str, cell: int = 14, gap: int = 2
) -> SafeString:
    """One square per day, coloured by the share of expected data received (red under 70 %, amber under
    90 %, green from 90 %; grey: nothing expected), each with a tooltip naming the day and the share."""
    width = max(len(cells) * (cell + gap), 120)
    height = cell + 20
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" class="ls-strip">',
        f'<text x="0" y="11" font-size="11" font-weight="bold">{escape(title)}</text>',
    ]
    for i, (day, share) in enumerate(cells):
        if share is None:
            color, label = "#e2e8f0", "no data expected"
        else:
            color = "#e53e3e" if share < 0.7 else "#ecc94b" if share < 0.9 else "#38a169"
            label = f"{share * 100:.0f} %"
        parts.append(
            f'<rect x="{i * (cell + gap)}" y="16" width="{cell}" height="{cell}" fill="{color}" '
            f'data-share="{"" if share is None else f"{share:.3f}"}">'
            f"<title>{day.isoformat()}: {label}</title></rect>"
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - built from numbers and escaped text only
