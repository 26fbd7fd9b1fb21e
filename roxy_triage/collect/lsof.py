"""The listener's process and its open files, from lsof (psutil as fallback)."""

from __future__ import annotations

from typing import Any

import psutil

from roxy_triage.collect import CollectContext, Evidence, collector
from roxy_triage.collect.command import Unavailable

# Enough of a process's open files to see what it holds without a listing of
# thousands of lines in the bundle for a process that leaks descriptors.
MAX_FILES_LISTED = 2000


def parse_field_output(text: str) -> list[dict[str, Any]]:
    """Processes from ``lsof -F pcn`` output: pid, command and names."""
    processes: list[dict[str, Any]] = []
    for line in text.splitlines():
        if not line:
            continue
        tag, value = line[0], line[1:]
        if tag == "p":
            processes.append({"pid": int(value), "command": "", "names": []})
        elif processes and tag == "c":
            processes[-1]["command"] = value
        elif processes and tag == "n":
            processes[-1]["names"].append(value)
    return processes


@collector("lsof")
def collect_lsof(evidence: Evidence, context: CollectContext) -> None:
    port = context.config.target.port
    try:
        listing = evidence.run(
            ["lsof", "-nP", f"-iTCP:{port}", "-sTCP:LISTEN", "-Fpcn"],
            "lsof_listener.txt",
        )
    except Unavailable as missing:
        evidence.note(f"{missing}; open files from psutil")
        evidence.write_json("summary.json", _psutil_view(port))
        return
    # lsof exits 1 when nothing matched: that is an answer, not a failure.
    listeners = parse_field_output(context.staging.read_text(listing.output))
    for entry in listeners:
        pid = entry["pid"]
        files = evidence.run(["lsof", "-nP", "-p", str(pid)], f"lsof_pid_{pid}.txt")
        lines = context.staging.read_text(files.output).splitlines()
        entry["open_files"] = max(len(lines) - 1, 0)
    evidence.write_json(
        "summary.json", {"port": port, "source": "lsof", "listeners": listeners}
    )


def _psutil_view(port: int) -> dict[str, Any]:
    listeners = []
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status != psutil.CONN_LISTEN or connection.laddr.port != port:
            continue
        if not connection.pid:
            continue
        try:
            process = psutil.Process(connection.pid)
            files = [f.path for f in process.open_files()][:MAX_FILES_LISTED]
            listeners.append(
                {
                    "pid": process.pid,
                    "command": process.name(),
                    "names": [f"{connection.laddr.ip}:{port}"],
                    "open_files": process.num_fds(),
                    "files": files,
                }
            )
        except psutil.AccessDenied as err:
            raise Unavailable(
                f"psutil cannot read process {connection.pid}: needs root"
            ) from err
        except psutil.NoSuchProcess:
            continue
    return {"port": port, "source": "psutil", "listeners": listeners}
