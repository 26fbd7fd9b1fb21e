"""Findings about the service itself: rate limiting, routes, errors, descriptors."""

from __future__ import annotations

from typing import Any

from roxy_triage.findings import Cited, Evidence, Finding, read, rule

LOAD = "load/summary.json"
STRESS = "stress/results.json"
PROCESS = "before/process/summary.json"
JOURNALS = ("before/journal/summary.json", "after/journal/summary.json")


@rule
def rate_limited(evidence: Evidence) -> list[Finding]:
    """429s during the load: how many, what share, from which level on."""
    load = read(evidence, LOAD)
    if not load:
        return []
    per_level = [
        (level["concurrency"], int(level["statuses"].get("429", 0)), level["finished"])
        for level in load["levels"]
    ]
    limited = sum(count for _, count, _ in per_level)
    if not limited:
        return []
    finished = sum(total for _, _, total in per_level)
    first = next(level for level, count, _ in per_level if count)
    share = limited / finished
    figures = ", ".join(
        f"C={level}: {count}/{total}" for level, count, total in per_level
    )
    return [
        Finding(
            "rate-limited",
            "high" if share >= 0.05 else "medium",
            "cause",
            f"Rate limiting refused {share:.0%} of the load's requests "
            f"({limited} answered 429), from C={first} on",
            [Cited(LOAD, f"429 per level: {figures}")],
            "If this traffic is legitimate, size the limit to it (for example "
            "50 req/s, burst 100 per client), exempt health and ping, and answer 429 "
            "with Retry-After so clients back off; do not switch the limit off.",
            numbers={
                "limited": limited,
                "share": round(share, 4),
                "first_level": first,
            },
        )
    ]


@rule
def expensive_route(evidence: Evidence) -> list[Finding]:
    """A route whose time goes into subprocesses, from the service's telemetry."""
    for source in reversed(JOURNALS):
        journal = read(evidence, source)
        routes = ((journal or {}).get("telemetry") or {}).get("routes") or {}
        if routes:
            break
    else:
        return []
    findings = []
    for name, route in sorted(routes.items()):
        if route["requests"] < 5 or route["subprocess_share"] < 0.5:
            continue
        findings.append(
            Finding(
                f"expensive-route-{name}",
                "high" if route["total_ms_p95"] >= 100 else "medium",
                "cause",
                f"Route '{name}' spends {route['subprocess_share']:.0%} of its time in "
                f"subprocesses (p50 {route['total_ms_p50']} ms, p95 "
                f"{route['total_ms_p95']} ms over {route['requests']} requests)",
                [
                    Cited(
                        source,
                        f"route {name}: {route['requests']} requests, "
                        f"{route['subprocess_ms_sum']} ms in subprocesses",
                    )
                ],
                "Answer cheap commands (ping, health, status) in-process on a "
                "constant-time fast path; keep subprocesses for work that needs one.",
                numbers=dict(route),
            )
        )
    return findings


@rule
def journal_errors(evidence: Evidence) -> list[Finding]:
    """Unexpected errors and tracebacks in the log, grouped by signature."""
    findings = []
    for source in JOURNALS:
        journal = read(evidence, source)
        if not journal or not journal.get("unexpected_errors"):
            continue
        signatures = [s for s in journal["signatures"] if s["kind"] == "unexpected"]
        listing = "; ".join(f"{s['count']}x {s['signature']}" for s in signatures[:5])
        window = (
            "before the capture"
            if source.startswith("before")
            else "during the capture"
        )
        findings.append(
            Finding(
                f"journal-errors-{source.split('/')[0]}",
                "high",
                "cause",
                f"{journal['unexpected_errors']} unexpected errors in the service's "
                f"log {window} ({journal['tracebacks']} with tracebacks)",
                [Cited(source, listing)],
                _error_advice(signatures),
                detail=_shorten(signatures[0]["example"]) if signatures else "",
                numbers={
                    "signatures": [
                        {"signature": s["signature"], "count": s["count"]}
                        for s in signatures
                    ]
                },
            )
        )
    return findings


def _shorten(example: str, head: int = 2, tail: int = 8) -> str:
    """A traceback's first lines and its last ones, where the exception is."""
    lines = example.splitlines()
    if len(lines) <= head + tail + 1:
        return example
    return "\n".join([*lines[:head], "  ...", *lines[-tail:]])


def _error_advice(signatures: list[dict[str, Any]]) -> str:
    text = " ".join(s["signature"] for s in signatures)
    advice = []
    if "BrokenPipeError" in text or "ConnectionResetError" in text:
        advice.append("treat a client that disconnects as an INFO event, not an error")
    if "JSONDecodeError" in text or "KeyError" in text:
        advice.append("validate request bodies and answer 400 instead of raising")
    advice.append("fix the cause of each signature in turn, most frequent first")
    return "; ".join(advice).capitalize() + "."


@rule
def descriptors_near_limit(evidence: Evidence) -> list[Finding]:
    """Open file descriptors close to RLIMIT_NOFILE."""
    process = read(evidence, PROCESS)
    findings = []
    for listener in (process or {}).get("listeners", []):
        root = listener["tree"][0]
        usage = root.get("fd_usage")
        if usage is None or usage < 0.8:
            continue
        findings.append(
            Finding(
                "descriptors-near-limit",
                "high",
                "risk",
                f"Process {root['pid']} uses {usage:.0%} of its file descriptors "
                f"({root['fds']} of {root['rlimit_nofile'][0]})",
                [
                    Cited(
                        PROCESS,
                        f"fds {root['fds']}, RLIMIT_NOFILE {root['rlimit_nofile']}",
                    )
                ],
                "Look for leaked sockets or files (the lsof listing is in the bundle); "
                "raise LimitNOFILE only once nothing leaks.",
            )
        )
    return findings


@rule
def protection_off(evidence: Evidence) -> list[Finding]:
    """Nothing limits the request rate: a flood would meet no resistance."""
    stress = read(evidence, STRESS)
    if not stress:
        return []
    check = next((c for c in stress["checks"] if c["name"] == "rate_limit_burst"), None)
    if check is None or check["figures"].get("limited", 1) != 0:
        return []
    return [
        Finding(
            "rate-limiting-off",
            "medium",
            "risk",
            "Rate limiting is off: a burst of back-to-back requests was answered in "
            "full",
            [Cited(STRESS, check["evidence"])],
            "Turn rate limiting back on with limits sized for real traffic and health "
            "routes exempt; switching it off to pass a load test trades a symptom for "
            "an outage.",
        )
    ]
