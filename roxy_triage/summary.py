"""The one-screen summaries commands print on stdout."""

from __future__ import annotations

from roxy_triage.capture import CaptureResult


def render_capture_summary(result: CaptureResult) -> str:
    """Collectors and their status, then the bundle: what a capture did, at a glance."""
    width = max((len(record.name) for record in result.collectors), default=8)
    lines = [f"Capture {result.started_at:%Y-%m-%d %H:%M:%S} UTC"]
    if result.interrupted:
        lines.append("INTERRUPTED: the bundle holds what finished before Ctrl-C")
    lines.append("")
    for record in result.collectors:
        detail = record.reason or "; ".join(record.notes)
        lines.append(
            f"  {record.name:<{width}}  {record.status:<11}  {detail}".rstrip()
        )
    lines += [
        "",
        f"Bundle  {result.bundle.path}",
        f"SHA-256 {result.bundle.sha256}",
    ]
    return "\n".join(lines)
