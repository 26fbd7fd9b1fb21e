"""Helpers for collector tests: configs, a staging directory, one collector run."""

from __future__ import annotations

import json
import socket
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from roxy_triage.collect import CollectContext, CollectorRecord, run_one
from roxy_triage.config import Config, load_config
from roxy_triage.redact import Redactor
from roxy_triage.staging import Staging


def toml_value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        items = (f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    return str(value)


def write_config(directory: Path, **sections: dict[str, Any]) -> Path:
    """A roxy-triage.toml with the given tables, e.g. target={"url": ...}."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
    path = directory / "roxy-triage.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def make_config(directory: Path, port: int, **sections: dict[str, Any]) -> Config:
    target = {"url": f"http://127.0.0.1:{port}", **sections.pop("target", {})}
    return load_config(write_config(directory, target=target, **sections))


def collect(
    name: str, config: Config, directory: Path, phase: str = "before"
) -> tuple[CollectorRecord, Staging]:
    """Run one collector into a fresh staging directory."""
    root = directory / f"staging-{name}"
    root.mkdir(parents=True, exist_ok=True)
    staging = Staging(root, Redactor(config.redact.patterns))
    record = run_one(name, CollectContext(config, staging, phase=phase))
    return record, staging


def summary(staging: Staging, name: str, phase: str = "before") -> Any:
    return staging.read_json(f"{phase}/{name}/summary.json")


def fake_binary(directory: Path, name: str, script: str) -> Path:
    """A shell script named like a real tool, for faults a real tool won't produce."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@contextmanager
def two_listeners() -> Iterator[int]:
    """Two sockets listening on one loopback port with SO_REUSEPORT; yields it."""
    first, second = socket.socket(), socket.socket()
    try:
        for sock in (first, second):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        first.bind(("127.0.0.1", 0))
        port = first.getsockname()[1]
        second.bind(("127.0.0.1", port))
        first.listen(5)
        second.listen(5)
        yield port
    finally:
        first.close()
        second.close()


def log_file_config(directory: Path, port: int, log_file: Path) -> Config:
    """A config that reads the service's log file, with no journal to look in."""
    target = {"journal_directory": str(directory / "none"), "log_file": str(log_file)}
    return make_config(directory, port, target=target)


def listener(backlog: int = 7) -> socket.socket:
    """A socket listening on a free loopback port that never accepts."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    return sock
