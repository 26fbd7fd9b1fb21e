"""Findings about connections: accept queue, small writes, disconnects, listeners."""

from __future__ import annotations

from collections import Counter
from typing import Any

from roxy_triage.findings import Cited, Evidence, Finding, load_records, read, rule

LOAD = "load/summary.json"
RECORDS = "load/records.jsonl"
SOCKETS = "before/sockets/summary.json"
HOST = "before/host/summary.json"

# Linux retransmits an unanswered SYN after 1 s, then doubles the wait: a
# handshake dropped at a full accept queue completes about 1, 3, 7 or 15 s
# after it began. Each window is generous enough for the retry's own delay.
SYN_RETRY_WINDOWS = ((1, 0.9, 1.8), (3, 2.8, 3.8), (7, 6.7, 7.9), (15, 14.6, 16.0))
# Nagle holding the second write until the client's delayed ACK, at least
# 40 ms on Linux.
DELAYED_ACK_MS = (36.0, 52.0)


def _kernel(level: dict[str, Any], name: str) -> int:
    return (level.get("kernel") or {}).get(name, 0)


def retry_waits(evidence: Evidence) -> dict[int, dict[int, int]]:
    """Per level, how many requests took about 1, 3, 7 or 15 s, as a SYN retry does."""
    waits: dict[int, Counter[int]] = {}
    for record in load_records(evidence):
        if record["end_s"] is None or record["start_s"] is None:
            continue
        took = record["end_s"] - record["start_s"]
        for seconds, low, high in SYN_RETRY_WINDOWS:
            if low <= took < high:
                waits.setdefault(record["concurrency"], Counter())[seconds] += 1
                break
    return {level: dict(counter) for level, counter in waits.items()}


@rule
def accept_queue_overflow(evidence: Evidence) -> list[Finding]:
    """A full accept queue: kernel drops during the load, latency at SYN retry times."""
    load = read(evidence, LOAD)
    if not load:
        return []
    hit = [
        level
        for level in load["levels"]
        if _kernel(level, "TcpExt.ListenOverflows")
        or _kernel(level, "TcpExt.ListenDrops")
    ]
    if not hit:
        return []
    overflows = sum(_kernel(level, "TcpExt.ListenOverflows") for level in hit)
    drops = sum(_kernel(level, "TcpExt.ListenDrops") for level in hit)
    peak = max(level["concurrency"] for level in load["levels"])
    waits = retry_waits(evidence)
    cited = [Cited(LOAD, "; ".join(_level_counters(level) for level in hit))]
    backlog = _backlog(evidence)
    if backlog is not None:
        cited.insert(0, Cited(SOCKETS, f"listen backlog {backlog}"))
    if waits:
        cited.append(
            Cited(
                RECORDS,
                "; ".join(
                    f"C={level}: "
                    + ", ".join(
                        f"{count} took ~{seconds} s"
                        for seconds, count in sorted(counts.items())
                    )
                    for level, counts in sorted(waits.items())
                ),
            )
        )
    somaxconn = _somaxconn(evidence)
    if somaxconn:
        cited.append(Cited(HOST, f"net.core.somaxconn {somaxconn}"))
    small = backlog is not None and backlog < peak
    reason = (
        f"listen backlog {backlog} is below the load's concurrency of {peak}"
        if small
        else "the server accepts connections slower than they arrive"
    )
    worst = max(hit, key=lambda level: level["latency_ms"]["p95"])
    slow = worst["latency_ms"]["p95"] >= 1000
    title = f"Accept queue overflow: {reason}; the kernel dropped {drops} handshakes"
    if waits and slow:
        title += (
            ", and the clients' SYN retries after about 1 s and 3 s are the "
            f"second-scale latencies (p95 {worst['latency_ms']['p95']:,.0f} ms at "
            f"C={worst['concurrency']})"
        )
    server = _server_time_ms(evidence, "total_ms_p95")
    detail = (
        "The counters are system-wide: other listeners on this host may add to them; "
        "a small backlog on the target's own listener makes it the likely source."
    )
    if server is not None and slow:
        # What separates this from 'the server is slow' (or the GIL): the
        # service's own time stays small while the clients wait seconds.
        detail = (
            f"The service's own time per request stayed at p95 {server} ms (its "
            "telemetry), so the seconds were spent before it accepted the "
            "connection, not in handling the request. " + detail
        )
    target = max(peak, 128)
    if somaxconn:
        target = min(target, somaxconn)
    action = (
        f"Raise the listen backlog to at least the peak concurrency ({peak}); "
        f"{target} leaves headroom"
        + (f" and is within net.core.somaxconn ({somaxconn})" if somaxconn else "")
        + ". In Python's socketserver the backlog is request_queue_size (default 5). "
        "Then capture again: ListenOverflows should stay at 0 at every level."
        if small
        else "Accept faster: a dedicated accept loop, fewer GIL-bound threads, or "
        "more worker processes; raising the backlog only buys time."
    )
    return [
        Finding(
            "accept-queue-overflow",
            "critical" if slow else "high",
            "cause",
            title,
            cited,
            action,
            detail=detail,
            numbers={
                "overflows": overflows,
                "drops": drops,
                "backlog": backlog,
                "peak_concurrency": peak,
                "retry_waits": waits,
            },
        )
    ]


def _level_counters(level: dict[str, Any]) -> str:
    return (
        f"C={level['concurrency']}: "
        f"ListenOverflows +{_kernel(level, 'TcpExt.ListenOverflows')}, "
        f"ListenDrops +{_kernel(level, 'TcpExt.ListenDrops')}, "
        f"p95 {level['latency_ms']['p95']:,.0f} ms"
    )


def _backlog(evidence: Evidence) -> int | None:
    sockets = read(evidence, SOCKETS)
    if not sockets or not sockets.get("listeners"):
        return None
    backlogs = [entry["backlog"] for entry in sockets["listeners"] if entry["backlog"]]
    return min(backlogs) if backlogs else None


def _somaxconn(evidence: Evidence) -> int | None:
    host = read(evidence, HOST)
    value = (host or {}).get("sysctls", {}).get("net.core.somaxconn")
    return int(value) if value and value.isdigit() else None


@rule
def small_write_stall(evidence: Evidence) -> list[Finding]:
    """Keep-alive latency floored near 40 ms while the server itself is fast."""
    load = read(evidence, LOAD)
    if not load or not load["plan"]["keep_alive"]:
        return []
    low, high = DELAYED_ACK_MS
    per_level: Counter[int] = Counter()
    totals: Counter[int] = Counter()
    for record in load_records(evidence):
        if record["error"] is not None or record["end_s"] is None:
            continue
        took = (record["end_s"] - record["start_s"]) * 1000
        totals[record["concurrency"]] += 1
        per_level[record["concurrency"]] += low <= took <= high
    stalled = {
        level: per_level[level] / totals[level]
        for level in totals
        if totals[level] >= 20 and per_level[level] / totals[level] >= 0.6
    }
    if not stalled:
        return []
    server = _server_time_ms(evidence)
    if server is not None and server >= low / 2:
        return []
    shares = ", ".join(
        f"C={level}: {share:.0%}" for level, share in sorted(stalled.items())
    )
    cited = [
        Cited(RECORDS, f"keep-alive requests taking {low:g}-{high:g} ms: {shares}")
    ]
    if server is not None:
        cited.append(
            Cited(
                _journal_file(evidence),
                f"the service's own time per request p50 {server} ms",
            )
        )
    return [
        Finding(
            "small-write-stall",
            "high",
            "cause",
            "Keep-alive latency floored at about 40 ms: the response goes out in two "
            "small writes, and Nagle holds the second until the client's delayed ACK",
            cited,
            "Send headers and body in one write, or set TCP_NODELAY on accepted "
            "sockets.",
            numbers={"stalled_share": stalled, "server_p50_ms": server},
        )
    ]


def _journal_file(evidence: Evidence) -> str:
    for relative in ("after/journal/summary.json", "before/journal/summary.json"):
        if evidence.has(relative):
            return relative
    return "after/journal/summary.json"


def _server_time_ms(evidence: Evidence, figure: str = "total_ms_p50") -> int | None:
    """The service's own time per request on its busiest answering route."""
    journal = read(evidence, _journal_file(evidence))
    routes = ((journal or {}).get("telemetry") or {}).get("routes") or {}
    # 'rejected' answers (429, 400) say nothing about the time work takes.
    answering = [route for name, route in routes.items() if name != "rejected"]
    if not answering:
        return None
    busiest = max(answering, key=lambda route: route["requests"])
    return busiest[figure]


@rule
def disconnects(evidence: Evidence) -> list[Finding]:
    """Clients that lost their connection, and how the service logged it."""
    load = read(evidence, LOAD)
    client = Counter()
    for level in (load or {}).get("levels", []):
        for name in ("reset", "broken_pipe", "empty_reply"):
            client[name] += level["errors"].get(name, 0)
    journal_file = _journal_file(evidence)
    journal = read(evidence, journal_file) or {}
    unhandled = journal.get("broken_pipes_unhandled", 0)
    if not sum(client.values()) and not unhandled:
        return []
    cited = []
    if sum(client.values()):
        cited.append(
            Cited(LOAD, ", ".join(f"{n} {name}" for name, n in client.items() if n))
        )
    if journal:
        cited.append(
            Cited(
                journal_file,
                f"{unhandled} disconnects logged as errors with tracebacks, "
                f"{journal.get('handled_disconnects', 0)} handled at INFO",
            )
        )
    parts = []
    if sum(client.values()):
        parts.append(f"clients saw {sum(client.values())} connection failures")
    if unhandled:
        parts.append(f"the service logged {unhandled} disconnects as tracebacks")
    action = (
        "Catch BrokenPipeError and ConnectionResetError around the response write and "
        "log them once at INFO with the request id; a client that leaves is not a "
        "server error."
        if unhandled
        else "Match the client failures against the accept-queue and timeout findings; "
        "resets under load usually follow dropped handshakes or a closed listener."
    )
    return [
        Finding(
            "disconnects",
            "medium",
            "cause",
            "Broken connections: " + "; ".join(parts),
            cited,
            action,
            numbers={"client": dict(client), "unhandled_server": unhandled},
        )
    ]


@rule
def listener_count(evidence: Evidence) -> list[Finding]:
    """No listener, or more than one, on the target's port."""
    sockets = read(evidence, SOCKETS)
    if sockets is None:
        return []
    count, port = sockets["listener_count"], sockets["port"]
    owners = sorted(
        {
            f"{o['name']}[{o['pid']}]"
            for entry in sockets["listeners"]
            for o in entry["processes"]
        }
    )
    cited = [
        Cited(
            SOCKETS,
            f"{count} listeners on port {port}"
            + (f": {', '.join(owners)}" if owners else ""),
        )
    ]
    if count == 0:
        return [
            Finding(
                "no-listener",
                "critical",
                "cause",
                f"Nothing listens on port {port}",
                cited,
                "Start the service, or check that it binds the configured address "
                "and port (see the unit and its journal).",
            )
        ]
    if count > 1:
        return [
            Finding(
                "several-listeners",
                "high",
                "cause",
                f"{count} sockets listen on port {port}",
                cited,
                "Stop the stray instance: with SO_REUSEPORT the kernel spreads "
                "connections across every listener, stale code included.",
            )
        ]
    return []


@rule
def client_bound(evidence: Evidence) -> list[Finding]:
    """Levels where the load client, not the server, ran out of CPU."""
    load = read(evidence, LOAD)
    bound = [
        level
        for level in (load or {}).get("levels", [])
        if (level.get("client") or {}).get("bound")
    ]
    if not bound:
        return []
    shown = ", ".join(
        f"C={level['concurrency']} ({level['client']['cpu_share']:.0%} of a core)"
        for level in bound
    )
    return [
        Finding(
            "client-bound",
            "low",
            "caveat",
            f"The load client was the bottleneck at {shown}",
            [Cited(LOAD, shown)],
            "Read those levels' latencies as the client's limit, not the server's; "
            "use more load workers (load.workers) or a second machine.",
        )
    ]
