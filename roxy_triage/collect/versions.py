"""Versions of everything that shaped the evidence: tool, service, host tools."""

from __future__ import annotations

import http.client
import platform
import sys
from importlib import metadata
from typing import Any

from roxy_triage import __version__
from roxy_triage.collect import CollectContext, Evidence, collector
from roxy_triage.collect.command import Unavailable

# One command per tool; each prints its version on its first line.
TOOLS = {
    "ss": ["ss", "-V"],
    "lsof": ["lsof", "-v"],
    "systemd": ["systemctl", "--version"],
    "journalctl": ["journalctl", "--version"],
}
PACKAGES = (
    "psutil",
    "docker",
    "systemd-python",
    "click",
    "jinja2",
    "httptools",
    "uvloop",
)


def service_header(host: str, port: int, timeout_s: float = 2.0) -> str | None:
    """The target's Server header from one GET /health, or None if none answers."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        connection.request(
            "GET", "/health", headers={"User-Agent": f"roxy-triage/{__version__}"}
        )
        response = connection.getresponse()
        response.read()
        return response.getheader("Server")
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


@collector("versions")
def collect_versions(evidence: Evidence, context: CollectContext) -> None:
    target = context.config.target
    versions: dict[str, Any] = {
        "roxy-triage": __version__,
        "python": sys.version.split()[0],
        "kernel": platform.release(),
        "service": service_header(target.host, target.port),
    }
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    for tool, argv in TOOLS.items():
        try:
            result = evidence.run(argv, f"{tool}.txt")
        except Unavailable:
            versions[tool] = None
            continue
        text = context.staging.read_text(result.output) + result.stderr
        versions[tool] = text.strip().splitlines()[0] if text.strip() else None
    versions["docker_engine"] = _docker_engine(target.docker_host)
    evidence.write_json("summary.json", versions)


def _docker_engine(base_url: str) -> str | None:
    from roxy_triage.collect.docker import connect

    try:
        client = connect(base_url)
    except Unavailable:
        return None
    try:
        return client.version().get("Version")
    finally:
        client.close()
