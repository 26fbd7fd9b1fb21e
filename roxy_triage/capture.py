"""The capture: runs the stages in order over one staging directory, then seals it."""

from __future__ import annotations

import logging
import platform
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from roxy_triage import __version__
from roxy_triage.bundle import SealedBundle, bundle_name, prepare_destination, seal
from roxy_triage.collect import ALL, CollectContext, CollectorRecord, run_collectors
from roxy_triage.config import Config
from roxy_triage.errors import BundleError
from roxy_triage.redact import Redactor
from roxy_triage.staging import Staging

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass
class CaptureOptions:
    out_dir: Path = Path()
    label: str | None = None
    # None: load loopback targets only; True: load any; False: state only.
    load: bool | None = None


@dataclass
class CaptureResult:
    """What a capture did, for the summary on screen and the exit code."""

    bundle: SealedBundle
    started_at: datetime
    ended_at: datetime
    collectors: list[CollectorRecord]
    reachable: bool
    reach_error: str = ""
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": str(self.bundle.path),
            "sha256": self.bundle.sha256,
            "size": self.bundle.size,
            "started_at": _iso(self.started_at),
            "ended_at": _iso(self.ended_at),
            "target_reachable": self.reachable,
            "target_error": self.reach_error,
            "interrupted": self.interrupted,
            "collectors": [
                {
                    "name": r.name,
                    "status": r.status,
                    "reason": r.reason,
                    "notes": r.notes,
                }
                for r in self.collectors
            ],
            "notes": self.notes,
        }


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def probe(host: str, port: int, timeout_s: float = 2.0) -> str:
    """Empty if a TCP connection to the target opens, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return ""
    except OSError as err:
        return err.strerror or type(err).__name__


class CaptureLog(logging.Handler):
    """The tool's own log lines during a capture, kept for the bundle."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextmanager
def capture_log() -> Iterator[CaptureLog]:
    handler = CaptureLog()
    package = logging.getLogger("roxy_triage")
    previous = package.level
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        package.removeHandler(handler)
        package.setLevel(previous)


def run_capture(
    config: Config, options: CaptureOptions, progress: Progress
) -> CaptureResult:
    """Collect, (load, stress, judge,) and seal one bundle."""
    started = datetime.now(UTC)
    name = bundle_name(started, options.label)
    staging = Staging(
        prepare_destination(options.out_dir, name), Redactor(config.redact.patterns)
    )
    try:
        with capture_log() as tool_log:
            reach_error = probe(config.target.host, config.target.port)
            if reach_error:
                log.warning("nothing answers at %s: %s", config.target.url, reach_error)
                progress(f"target {config.target.url}: {reach_error}")
            context = CollectContext(config, staging)
            records = snapshot(context, progress)
            ended = datetime.now(UTC)
            staging.write_text("capture.log", "\n".join(tool_log.lines) + "\n")
    except BundleError as err:
        raise BundleError(
            f"{err.message}; the evidence collected so far is in {staging.root}"
        ) from None
    manifest = {
        "tool": {"name": "roxy-triage", "version": __version__},
        "host": {"hostname": platform.node(), "kernel": platform.release()},
        "label": options.label or "",
        "started_at": _iso(started),
        "ended_at": _iso(ended),
        "duration_s": round((ended - started).total_seconds(), 3),
        "interrupted": context.interrupted,
        "target": {
            "url": config.target.url,
            "reachable": not reach_error,
            "error": reach_error,
        },
        "config": config.to_dict(),
        "collectors": [record.to_dict() for record in records],
    }
    progress("sealing the bundle")
    sealed = seal(staging, manifest, options.out_dir, name)
    return CaptureResult(
        sealed,
        started,
        ended,
        records,
        not reach_error,
        reach_error,
        context.interrupted,
    )


def snapshot(context: CollectContext, progress: Progress) -> list[CollectorRecord]:
    """Every collector, concurrently, with a line of progress as each ends."""
    url = context.config.target.url
    progress(f"collecting evidence around {url} ({len(ALL)} collectors)")
    records = run_collectors(ALL, context, _collector_progress(progress))
    for record in records:
        log.info("collector %s: %s %s", record.name, record.status, record.reason)
    if context.interrupted:
        progress("interrupted: sealing what was collected")
    return records


def _collector_progress(progress: Progress) -> Callable[[CollectorRecord], None]:
    def report(record: CollectorRecord) -> None:
        reason = f"  {record.reason}" if record.reason else ""
        progress(
            f"  {record.name:<9} {record.status:<11} {record.duration_s:5.2f} s{reason}"
        )

    return report
