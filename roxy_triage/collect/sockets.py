"""Listeners and connections on the target port, from ss (psutil as fallback).

For a listening socket ss prints the accept queue's current length as
Recv-Q and the listen backlog as Send-Q; a Recv-Q at the backlog means the
kernel is dropping handshakes. psutil sees the listener and its process but
not the backlog.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import psutil

from roxy_triage.collect import CollectContext, Evidence, collector
from roxy_triage.collect.command import Unavailable, run_small

_USERS = re.compile(r'\("(?P<name>[^"]*)",pid=(?P<pid>\d+),fd=(?P<fd>\d+)\)')


def parse_listeners(text: str) -> list[dict[str, Any]]:
    """Listeners from ``ss -Hltnpe`` output, one dict per listening socket."""
    listeners = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 5 or fields[0] != "LISTEN":
            continue
        owners = [
            {"name": m["name"], "pid": int(m["pid"]), "fd": int(m["fd"])}
            for m in _USERS.finditer(line)
        ]
        listeners.append(
            {
                "local": fields[3],
                "recv_q": int(fields[1]),
                "backlog": int(fields[2]),
                "processes": owners,
            }
        )
    return listeners


def parse_states(text: str) -> dict[str, int]:
    """Count sockets by TCP state from ``ss -Htan`` output."""
    return dict(Counter(line.split()[0] for line in text.splitlines() if line.strip()))


def psutil_listeners(port: int) -> list[dict[str, Any]]:
    """Listeners on ``port`` as psutil sees them; no backlog or queue depth."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied as err:
        raise Unavailable("psutil cannot list sockets without root") from err
    listeners = []
    for connection in connections:
        if connection.status != psutil.CONN_LISTEN or connection.laddr.port != port:
            continue
        owners = []
        if connection.pid:
            try:
                name = psutil.Process(connection.pid).name()
            except psutil.Error:
                name = "?"
            owners.append({"name": name, "pid": connection.pid, "fd": connection.fd})
        host = connection.laddr.ip
        local = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        listeners.append(
            {"local": local, "recv_q": None, "backlog": None, "processes": owners}
        )
    return listeners


def count_listeners(port: int) -> tuple[list[dict[str, Any]], str]:
    """Listeners on ``port`` now, from ss or else psutil, and which one said so."""
    try:
        done = run_small(["ss", "-Hltnp", "sport", "=", f":{port}"])
    except Unavailable:
        return psutil_listeners(port), "psutil"
    return parse_listeners(done.stdout), "ss"


@collector("sockets")
def collect_sockets(evidence: Evidence, context: CollectContext) -> None:
    port = context.config.target.port
    summary: dict[str, Any] = {"port": port}
    try:
        listening = evidence.run(
            ["ss", "-Hltnpe", "sport", "=", f":{port}"], "ss_listeners.txt"
        )
        text = context.staging.read_text(listening.output)
        summary["listeners"] = parse_listeners(text)
        summary["source"] = "ss"
        states = evidence.run(
            [
                "ss",
                "-Htanp",
                "(",
                "sport",
                "=",
                f":{port}",
                "or",
                "dport",
                "=",
                f":{port}",
                ")",
            ],
            "ss_connections.txt",
        )
        summary["states"] = parse_states(context.staging.read_text(states.output))
    except Unavailable as missing:
        evidence.note(f"{missing}; listeners from psutil, without backlog or queue")
        summary["listeners"] = psutil_listeners(port)
        summary["source"] = "psutil"
        summary["states"] = _psutil_states(port)
    summary["listener_count"] = len(summary["listeners"])
    summary["listener_pids"] = sorted(
        {owner["pid"] for entry in summary["listeners"] for owner in entry["processes"]}
    )
    evidence.write_json("summary.json", summary)


def _psutil_states(port: int) -> dict[str, int]:
    states: Counter[str] = Counter()
    for connection in psutil.net_connections(kind="tcp"):
        ends = [connection.laddr, connection.raddr]
        if any(end and end.port == port for end in ends):
            states[connection.status] += 1
    return dict(states)
