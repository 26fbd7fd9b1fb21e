"""The host: kernel, load, memory, the accept-queue sysctls and TCP counters."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import psutil

from roxy_triage import kernel
from roxy_triage.collect import CollectContext, Evidence, collector

# The sysctls that decide what happens to connections a busy server has not
# accepted yet: the cap on any listen backlog, the SYN queue, what the kernel
# does when the accept queue is full, and when SYNs are retried.
SYSCTLS = (
    "net/core/somaxconn",
    "net/ipv4/tcp_max_syn_backlog",
    "net/ipv4/tcp_syncookies",
    "net/ipv4/tcp_abort_on_overflow",
    "net/ipv4/tcp_syn_retries",
    "net/ipv4/tcp_synack_retries",
    "net/ipv4/ip_local_port_range",
    "net/ipv4/tcp_fin_timeout",
    "net/ipv4/tcp_tw_reuse",
    "fs/file-max",
    "fs/file-nr",
)


def read_sysctls(root: Path = Path("/proc/sys")) -> dict[str, str | None]:
    values: dict[str, str | None] = {}
    for name in SYSCTLS:
        try:
            values[name.replace("/", ".")] = (root / name).read_text().strip()
        except OSError:
            values[name.replace("/", ".")] = None
    return values


def os_release(path: Path = Path("/etc/os-release")) -> dict[str, str]:
    try:
        text = path.read_text()
    except OSError:
        return {}
    release = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            release[key] = value.strip().strip('"')
    return release


@collector("host")
def collect_host(evidence: Evidence, context: CollectContext) -> None:
    for source in (kernel.NETSTAT, kernel.SNMP):
        try:
            evidence.write_text(f"proc_net_{source.name}.txt", source.read_text())
        except OSError as err:
            evidence.note(f"{source}: {err.strerror}")
    memory = psutil.virtual_memory()
    summary: dict[str, Any] = {
        "hostname": platform.node(),
        "kernel": platform.release(),
        "os": os_release().get("PRETTY_NAME", platform.system()),
        "cpus": os.cpu_count(),
        "load": list(os.getloadavg()),
        "memory": {
            "total": memory.total,
            "available": memory.available,
            "percent": memory.percent,
        },
        "boot_time": psutil.boot_time(),
        "sysctls": read_sysctls(),
        "tcp_counters": kernel.read_counters(),
    }
    evidence.write_json("summary.json", summary)
