"""Collectors: one module per evidence source, one registry, one runner.

A collector is a function ``(evidence, context) -> None`` that writes raw
files through its ``Evidence`` handle. The runner times it, turns what it
raised into a status, and returns one record per collector:

- ``ok``: it ran; its notes may say it used a fallback.
- ``unavailable``: the source is absent here (no binary, no systemd, no
  Docker daemon, no permission); the capture goes on.
- ``failed``: it broke; the reason says how.
- ``timed_out``: it ran past its deadline; whatever it wrote is kept.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from roxy_triage.collect.command import (
    Cancelled,
    CommandResult,
    Unavailable,
    run_command,
)
from roxy_triage.config import Config
from roxy_triage.staging import Staging

log = logging.getLogger(__name__)


@dataclass
class CollectorRecord:
    """What one collector did, as the manifest carries it."""

    name: str
    status: str = "ok"
    reason: str = ""
    phase: str = "before"
    notes: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    commands: list[CommandResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "phase": self.phase,
            "status": self.status,
            "reason": self.reason,
            "notes": self.notes,
            "files": self.files,
            "duration_s": round(self.duration_s, 4),
            "commands": [command.to_dict() for command in self.commands],
        }


@dataclass
class CollectContext:
    """What every collector may read: the config and the capture's cancel flag."""

    config: Config
    staging: Staging
    cancel: threading.Event = field(default_factory=threading.Event)
    # "before" the load, or "after" it, when the journal is read again from
    # ``since`` (the capture's start) to see what the load and stress did.
    phase: str = "before"
    since: float | None = None
    # Set when Ctrl-C stopped the collection; later stages are skipped.
    interrupted: bool = False


class Evidence:
    """A collector's handle on the staging directory, under ``<phase>/<name>/``."""

    def __init__(
        self, record: CollectorRecord, context: CollectContext, deadline: float
    ):
        self.record = record
        self.context = context
        self.deadline = deadline
        self.prefix = f"{context.phase}/{record.name}"

    @property
    def settings(self) -> Any:
        return self.context.config.collect

    def name(self, filename: str) -> str:
        return f"{self.prefix}/{filename}"

    def write_text(self, filename: str, text: str) -> str:
        relative = self.name(filename)
        self.context.staging.write_text(relative, text)
        self._keep(relative)
        return relative

    def write_json(self, filename: str, document: Any) -> str:
        relative = self.name(filename)
        self.context.staging.write_json(relative, document)
        self._keep(relative)
        return relative

    def run(self, argv: list[str], filename: str) -> CommandResult:
        """Run a command into ``filename``; raise Unavailable if it is not there."""
        if self.context.cancel.is_set():
            raise Cancelled
        relative = self.name(filename)
        remaining = max(self.deadline - time.monotonic(), 0.1)
        result = run_command(
            argv,
            self.context.staging.adopt(relative),
            relative,
            self.context.staging.redactor,
            timeout_s=remaining,
            cap_bytes=self.settings.max_output_bytes,
            cancel=self.context.cancel,
        )
        self.context.staging.count_redactions(relative, result.redactions)
        self.record.commands.append(result)
        self._keep(relative)
        if result.timed_out:
            self.record.status = "timed_out"
            self.record.reason = (
                f"{argv[0]} ran past the {self.settings.timeout_s:g} s limit"
            )
        if result.cancelled:
            raise Cancelled
        return result

    def note(self, text: str) -> None:
        """Something a reader should know, e.g. that a fallback was used."""
        self.record.notes.append(text)

    def _keep(self, relative: str) -> None:
        if relative not in self.record.files:
            self.record.files.append(relative)


Collector = Callable[[Evidence, CollectContext], None]
REGISTRY: dict[str, Collector] = {}


def collector(name: str) -> Callable[[Collector], Collector]:
    """Register a collector under ``name``."""

    def register(function: Collector) -> Collector:
        REGISTRY[name] = function
        return function

    return register


def run_one(name: str, context: CollectContext) -> CollectorRecord:
    """Run one collector to a record; never raises."""
    _load_collectors()
    record = CollectorRecord(name, phase=context.phase)
    began = time.monotonic()
    evidence = Evidence(record, context, began + context.config.collect.timeout_s)
    try:
        REGISTRY[name](evidence, context)
    except Unavailable as err:
        record.status, record.reason = "unavailable", str(err)
    except Cancelled:
        record.status, record.reason = "failed", "interrupted before it finished"
    # One broken collector must not end the capture.
    except Exception as err:  # noqa: BLE001
        record.status, record.reason = "failed", f"{type(err).__name__}: {err}"
        log.warning("collector %s failed:\n%s", name, traceback.format_exc())
    record.duration_s = time.monotonic() - began
    return record


def run_collectors(
    names: list[str],
    context: CollectContext,
    progress: Callable[[CollectorRecord], None] | None = None,
) -> list[CollectorRecord]:
    """Run collectors concurrently; return their records in ``names`` order.

    Each runs in a daemon thread: a collector stuck in a library call past
    its deadline is recorded as timed out and left behind rather than
    holding the capture hostage.
    """
    _load_collectors()
    unknown = [name for name in names if name not in REGISTRY]
    if unknown:
        raise KeyError(f"no collector named {unknown[0]!r}")
    records: dict[str, CollectorRecord] = {}
    done = threading.Condition()

    def work(name: str) -> None:
        record = run_one(name, context)
        with done:
            records[name] = record
            done.notify_all()
        if progress is not None:
            progress(record)

    for name in names:
        threading.Thread(
            target=work, args=(name,), name=f"collect-{name}", daemon=True
        ).start()
    # Past the per-collector limit, allow a little for the runner itself to
    # kill commands and write what it has.
    deadline = time.monotonic() + context.config.collect.timeout_s + 2.0
    with done:
        try:
            _wait_for(records, names, done, deadline)
        except KeyboardInterrupt:
            # Ctrl-C: stop the commands still running and keep what finished.
            context.interrupted = True
            context.cancel.set()
            _wait_for(records, names, done, time.monotonic() + 3.0)
        for name in names:
            if name not in records:
                reason = (
                    "interrupted before it finished"
                    if context.interrupted
                    else f"still running after {context.config.collect.timeout_s:g} s"
                )
                records[name] = CollectorRecord(
                    name,
                    status="failed" if context.interrupted else "timed_out",
                    reason=reason,
                    phase=context.phase,
                )
        return [records[name] for name in names]


def _wait_for(
    records: dict[str, CollectorRecord],
    names: list[str],
    done: threading.Condition,
    deadline: float,
) -> None:
    while len(records) < len(names):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        done.wait(min(remaining, 0.2))


def _load_collectors() -> None:
    # Importing the modules registers them.
    from roxy_triage.collect import (  # noqa: F401
        docker,
        host,
        journal,
        lsof,
        process,
        sockets,
        systemd,
        versions,
    )


ALL = ["sockets", "lsof", "process", "systemd", "journal", "docker", "host", "versions"]
