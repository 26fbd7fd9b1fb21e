"""The allow-listed commands, and the entry point the subprocess route runs.

Commands are plain functions over an argument string; none of them touches a
shell. Run as ``python -m roxy_core.commands CONTEXT_JSON NAME [ARGS]`` it
prints one JSON object, which is how the legacy profile runs every command.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

FAST_PATH = frozenset({"ping", "health", "status"})
ECHO_LIMIT = 4096


class CommandError(ValueError):
    """A command the service will not run, answered with 400."""


@dataclass(frozen=True)
class Context:
    """What a command may know about the server that runs it."""

    profile: str
    pid: int
    started_at: float
    sleep_cap_s: float
    counters: dict[str, int]


def ping(_args: str, _ctx: Context) -> str:
    return "pong"


def health(_args: str, _ctx: Context) -> dict[str, Any]:
    return {"healthy": True}


def status(_args: str, ctx: Context) -> dict[str, Any]:
    return {
        "profile": ctx.profile,
        "pid": ctx.pid,
        "uptime_s": round(time.time() - ctx.started_at, 3),
        "requests": ctx.counters,
    }


def now(_args: str, _ctx: Context) -> dict[str, Any]:
    moment = datetime.now(UTC)
    return {
        "utc": moment.isoformat(timespec="milliseconds"),
        "epoch": moment.timestamp(),
    }


def uptime(_args: str, ctx: Context) -> dict[str, Any]:
    host_s = float(Path("/proc/uptime").read_text(encoding="ascii").split()[0])
    return {"host_s": host_s, "service_s": round(time.time() - ctx.started_at, 3)}


def disk(_args: str, _ctx: Context) -> dict[str, Any]:
    usage = shutil.disk_usage("/")
    return {"path": "/", "total": usage.total, "used": usage.used, "free": usage.free}


def load(_args: str, _ctx: Context) -> dict[str, Any]:
    one, five, fifteen = os.getloadavg()
    return {"1m": one, "5m": five, "15m": fifteen, "cpus": os.cpu_count()}


def echo(args: str, _ctx: Context) -> str:
    return args[:ECHO_LIMIT]


def sleep(args: str, ctx: Context) -> dict[str, Any]:
    try:
        seconds = float(args)
    except ValueError:
        raise CommandError(f"sleep needs a number of seconds, got {args!r}") from None
    if not 0 <= seconds < float("inf"):
        raise CommandError(
            f"sleep needs a non-negative number of seconds, got {args!r}"
        )
    seconds = min(seconds, ctx.sleep_cap_s)
    time.sleep(seconds)
    return {"slept_s": seconds}


COMMANDS: dict[str, Callable[[str, Context], Any]] = {
    "ping": ping,
    "health": health,
    "status": status,
    "time": now,
    "uptime": uptime,
    "disk": disk,
    "load": load,
    "echo": echo,
    "sleep": sleep,
}


def parse(command: str) -> tuple[str, str]:
    """Split ``"name args"`` and check the name against the allow-list."""
    name, _, args = command.strip().partition(" ")
    if name not in COMMANDS:
        shown = name[:64] if name else "(empty)"
        raise CommandError(f"unknown command {shown!r}")
    return name, args.strip()


def run(name: str, args: str, ctx: Context) -> Any:
    return COMMANDS[name](args, ctx)


def main(argv: list[str]) -> int:
    """Subprocess route: ``CONTEXT_JSON NAME [ARGS]`` in, one JSON line out."""
    context = Context(**json.loads(argv[0]))
    name, args = argv[1], " ".join(argv[2:])
    try:
        result = run(name, args, context)
    except CommandError as err:
        print(json.dumps({"error": str(err)}))
        return 2
    print(json.dumps({"result": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
