"""The load matrix as a text table for the terminal, one row per level.

The columns are the original report's (concurrency, success, p95, broken
pipes) and what it lacked: the other percentiles, throughput, every error
class that occurred, the accept-queue counters, and whether the client
itself was the bottleneck.
"""

from __future__ import annotations

from roxy_triage.load.matrix import MatrixResult
from roxy_triage.load.records import ERROR_CLASSES
from roxy_triage.load.stats import CLIENT_BOUND_SHARE, LevelSummary

# Shown even at zero: the original incident was about these.
_ALWAYS_SHOWN = ("broken_pipe",)
_COUNTERS = (
    ("TcpExt.ListenOverflows", "overflows"),
    ("TcpExt.ListenDrops", "drops"),
)
_CLIENT_BOUND = "client-bound"


def render_table(result: MatrixResult) -> str:
    """The matrix as aligned text, with a legend for anything flagged."""
    shown_errors = [
        name
        for name in ERROR_CLASSES
        if name in _ALWAYS_SHOWN or any(level.errors[name] for level in result.levels)
    ]
    header = ["C", "requests", "success", "p50 ms", "p95 ms", "p99 ms", "max ms"]
    header += ["req/s", *shown_errors, *(label for _, label in _COUNTERS), "client"]
    rows = [header] + [_row(level, shown_errors) for level in result.levels]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(width) if column == len(header) - 1 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines += _legend(result)
    return "\n".join(lines) + "\n"


def _row(level: LevelSummary, shown_errors: list[str]) -> list[str]:
    latency = level.latency
    requests = str(level.finished)
    if level.finished != level.planned:
        requests += f"/{level.planned}"
    row = [
        str(level.concurrency),
        requests,
        f"{level.success_rate:.1%}",
        *(
            [_ms(latency.p50), _ms(latency.p95), _ms(latency.p99), _ms(latency.max)]
            if latency
            else ["-"] * 4
        ),
        f"{level.throughput:,.0f}",
        *(str(level.errors[name]) for name in shown_errors),
    ]
    counters = level.kernel or {}
    row += [_counter(counters.get(name)) for name, _ in _COUNTERS]
    client = "-"
    if level.client is not None:
        client = f"{level.client.share:.0%} cpu"
        if level.client.bound:
            client += f" {_CLIENT_BOUND}"
    row.append(client)
    return row


def _ms(value: float) -> str:
    if value < 10:
        return f"{value:.2f}"
    if value < 100:
        return f"{value:.1f}"
    return f"{value:,.0f}"


def _counter(value: int | None) -> str:
    return "-" if value is None else f"+{value}"


def _legend(result: MatrixResult) -> list[str]:
    notes = [
        "",
        f"{result.mode}; latency: from intended start to outcome",
        "overflows/drops: kernel ListenOverflows/ListenDrops during the level "
        "(system-wide)",
    ]
    if any(level.client_bound for level in result.levels):
        notes.append(
            f"{_CLIENT_BOUND}: the load client used >= {CLIENT_BOUND_SHARE:.0%} of "
            "a core; those levels measure the client as much as the target"
        )
    if result.interrupted:
        notes.append("interrupted: the last level stopped early (Ctrl-C)")
    return notes
