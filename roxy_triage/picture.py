"""The latency picture: every request of every level on one log-scale strip chart.

One row per concurrency level, one dot per request, with the p50-p95 box
and p99 marked, and dashed lines at the SYN retry times (1 s, 3 s, 7 s):
requests that waited for a dropped handshake to be retried stack up on
those lines, which a table of percentiles cannot show.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterable
from html import escape
from typing import Any

WIDTH = 760
ROW = 46
LEFT = 70
RIGHT = 20
TOP = 34
BOTTOM = 40
SYN_RETRIES_S = (1, 3, 7)
DOT_LIMIT = 2000


def _x(ms: float, low: float, high: float) -> float:
    span = math.log10(high) - math.log10(low)
    clamped = min(max(ms, low), high)
    return (
        LEFT + (WIDTH - LEFT - RIGHT) * (math.log10(clamped) - math.log10(low)) / span
    )


def _ticks(low: float, high: float) -> list[tuple[float, str]]:
    ticks = []
    value = 10 ** math.floor(math.log10(low))
    while value <= high:
        if value >= low:
            ticks.append(
                (value, f"{value:g} ms" if value < 1000 else f"{value / 1000:g} s")
            )
        value *= 10
    return ticks


def latency_svg(
    levels: list[dict[str, Any]], records: Iterable[dict[str, Any]], title: str
) -> str:
    """An SVG strip chart of request latency per level (milliseconds, log scale)."""
    per_level: dict[int, list[float]] = defaultdict(list)
    for record in records:
        if record.get("end_s") is not None and record.get("intended_s") is not None:
            per_level[record["concurrency"]].append(
                (record["end_s"] - record["intended_s"]) * 1000
            )
    every = [ms for values in per_level.values() for ms in values] or [1.0]
    low = max(min(min(every), 1.0) / 2, 0.05)
    high = max(max(every) * 1.5, 10_000.0)
    height = TOP + ROW * len(levels) + BOTTOM
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        f'<text x="{LEFT}" y="18" font-size="14">{escape(title)}</text>',
    ]
    axis_y = TOP + ROW * len(levels)
    for value, label in _ticks(low, high):
        x = _x(value, low, high)
        parts.append(
            f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{axis_y}" stroke="#ddd"/>'
        )
        parts.append(
            f'<text x="{x:.1f}" y="{axis_y + 16}" text-anchor="middle">{label}</text>'
        )
    for seconds in SYN_RETRIES_S:
        x = _x(seconds * 1000, low, high)
        parts.append(
            f'<line x1="{x:.1f}" y1="{TOP - 6}" x2="{x:.1f}" y2="{axis_y}" '
            'stroke="#c0392b" stroke-dasharray="4 3"/>'
        )
        parts.append(
            f'<text x="{x:.1f}" y="{TOP - 9}" text-anchor="middle" '
            f'fill="#c0392b" font-size="10">SYN retry {seconds} s</text>'
        )
    chooser = random.Random(0)
    for row, level in enumerate(levels):
        middle = TOP + ROW * row + ROW / 2
        parts.append(
            f'<text x="{LEFT - 8}" y="{middle + 4:.1f}" text-anchor="end">'
            f"C={level['concurrency']}</text>"
        )
        values = per_level.get(level["concurrency"], [])
        if len(values) > DOT_LIMIT:
            values = chooser.sample(values, DOT_LIMIT)
        for ms in values:
            jitter = chooser.uniform(-ROW * 0.3, ROW * 0.3)
            parts.append(
                f'<circle cx="{_x(ms, low, high):.1f}" cy="{middle + jitter:.1f}" '
                'r="1.6" fill="#2c7fb8" fill-opacity="0.35"/>'
            )
        latency = level.get("latency_ms")
        if latency:
            left, right = _x(latency["p50"], low, high), _x(latency["p95"], low, high)
            parts.append(
                f'<rect x="{left:.1f}" y="{middle - 9:.1f}" '
                f'width="{max(right - left, 1):.1f}" height="18" fill="none" '
                'stroke="#111" stroke-width="1.2"/>'
            )
            p99 = _x(latency["p99"], low, high)
            parts.append(
                f'<line x1="{right:.1f}" y1="{middle:.1f}" x2="{p99:.1f}" '
                f'y2="{middle:.1f}" stroke="#111"/>'
            )
            parts.append(
                f'<line x1="{p99:.1f}" y1="{middle - 6:.1f}" x2="{p99:.1f}" '
                f'y2="{middle + 6:.1f}" stroke="#111"/>'
            )
    parts.append(
        f'<text x="{WIDTH - RIGHT}" y="{height - 6}" text-anchor="end" '
        'font-size="10" fill="#555">one dot per request; box p50-p95, '
        "whisker to p99</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
