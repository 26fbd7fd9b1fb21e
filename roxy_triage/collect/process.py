"""The listener's process tree through psutil: threads, fds, memory, CPU, age.

Each field is read on its own: a process we may not fully inspect (another
user's, without root) still yields what it allows, and what it refused is
named in the record's notes.
"""

from __future__ import annotations

import shlex
import time
from typing import Any

import psutil

from roxy_triage.collect import CollectContext, Evidence, collector
from roxy_triage.collect.command import Unavailable


def listener_pids(port: int) -> list[int]:
    """Processes with a socket listening on ``port``."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied as err:
        raise Unavailable("listing sockets of other processes needs root") from err
    return sorted(
        {
            connection.pid
            for connection in connections
            if connection.status == psutil.CONN_LISTEN
            and connection.laddr.port == port
            and connection.pid
        }
    )


def describe(process: psutil.Process, refused: set[str]) -> dict[str, Any]:
    """One process as the bundle keeps it."""
    view: dict[str, Any] = {"pid": process.pid}
    readers = {
        "ppid": process.ppid,
        "name": process.name,
        # One string, so a redaction rule sees "--password x" as it was typed.
        "cmdline": lambda: shlex.join(process.cmdline()),
        "username": process.username,
        "status": process.status,
        "threads": process.num_threads,
        "fds": process.num_fds,
        "create_time": process.create_time,
        "cpu_times": lambda: process.cpu_times()._asdict(),
        "memory": lambda: process.memory_info()._asdict(),
        "rlimit_nofile": lambda: list(process.rlimit(psutil.RLIMIT_NOFILE)),
        "connections": lambda: len(process.net_connections(kind="tcp")),
    }
    for field, read in readers.items():
        try:
            view[field] = read()
        except psutil.AccessDenied:
            refused.add(field)
            view[field] = None
    if view.get("create_time"):
        view["uptime_s"] = round(time.time() - view["create_time"], 1)
    soft = (view.get("rlimit_nofile") or [None])[0]
    if view.get("fds") is not None and soft and soft > 0:
        view["fd_usage"] = round(view["fds"] / soft, 4)
    return view


@collector("process")
def collect_process(evidence: Evidence, context: CollectContext) -> None:
    port = context.config.target.port
    summary: dict[str, Any] = {"port": port, "listeners": []}
    refused: set[str] = set()
    for pid in listener_pids(port):
        try:
            root = psutil.Process(pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            evidence.note(f"process {pid} exited while it was being read")
            continue
        views = []
        for member in tree:
            try:
                views.append(describe(member, refused))
            except psutil.NoSuchProcess:
                continue
        summary["listeners"].append({"pid": pid, "tree": views})
    if not summary["listeners"]:
        evidence.note(f"nothing listens on port {port}")
    if refused:
        evidence.note(
            f"not permitted to read: {', '.join(sorted(refused))} (needs root)"
        )
    evidence.write_json("summary.json", summary)
