"""The capture: runs the stages in order over one staging directory, then seals it.

snapshot -> load matrix -> stress suite -> snapshot after -> gates -> seal.
Each stage writes its evidence through the staging API; a stage that cannot
run (no load asked for, target unreachable, Ctrl-C) is recorded with its
reason, and what was collected before it is always sealed.
"""

from __future__ import annotations

import ipaddress
import logging
import platform
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from roxy_triage import __version__
from roxy_triage.bundle import (
    Bundle,
    SealedBundle,
    bundle_name,
    file_table,
    prepare_destination,
    seal,
)
from roxy_triage.collect import ALL, CollectContext, CollectorRecord, run_collectors
from roxy_triage.collect.command import Unavailable
from roxy_triage.collect.journal import read_window
from roxy_triage.config import Config
from roxy_triage.errors import BundleError, TargetUnreachable
from roxy_triage.findings import Finding, find
from roxy_triage.gates import (
    GATES_FILE,
    LOAD_JOURNAL,
    LOAD_SUMMARY,
    STRESS_RESULTS,
    Judgement,
    check_waivers,
    judge,
)
from roxy_triage.load import MatrixResult, run_matrix
from roxy_triage.redact import Redactor
from roxy_triage.report import (
    PICTURE_FILE,
    REPORT_FILE,
    Rendered,
    evidence_files,
    model_of,
    render,
    write_report,
)
from roxy_triage.staging import Staging
from roxy_triage.stress import SuiteResult, resolve, run_suite

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
RECORDS = "load/records.jsonl"
FINDINGS = "findings.json"
# What changes under load and is read again afterwards.
AFTER = ["sockets", "host", "journal"]


@dataclass
class CaptureOptions:
    out_dir: Path = field(default_factory=Path)
    label: str | None = None
    # None: load loopback targets only; True: load any; False: state only.
    load: bool | None = None
    # A bundle from before a fix, for the before/after section of the report.
    baseline: Bundle | None = None


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
    skipped: str = ""
    report: Path | None = None
    findings: list[Finding] = field(default_factory=list)
    matrix: MatrixResult | None = None
    suite: SuiteResult | None = None
    judgement: Judgement | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": str(self.bundle.path),
            "sha256": self.bundle.sha256,
            "size": self.bundle.size,
            "started_at": iso(self.started_at),
            "ended_at": iso(self.ended_at),
            "target_reachable": self.reachable,
            "target_error": self.reach_error,
            "interrupted": self.interrupted,
            "load_skipped": self.skipped,
            "collectors": [
                {
                    "name": r.name,
                    "status": r.status,
                    "reason": r.reason,
                    "notes": r.notes,
                }
                for r in self.collectors
            ],
            "load": self.matrix.to_dict() if self.matrix else None,
            "stress": self.suite.to_dict() if self.suite else None,
            "gates": self.judgement.to_dict() if self.judgement else None,
            "findings": [finding.to_dict() for finding in self.findings],
            "report": str(self.report) if self.report else None,
        }


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def probe(host: str, port: int, timeout_s: float = 2.0) -> str:
    """Empty if a TCP connection to the target opens, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return ""
    except OSError as err:
        return err.strerror or type(err).__name__


def is_loopback(host: str) -> bool:
    """True when every address ``host`` resolves to is on this machine's loopback."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        return False
    return bool(addresses) and all(
        ipaddress.ip_address(address.split("%")[0]).is_loopback for address in addresses
    )


def why_no_load(asked: bool | None, reach_error: str, host: str) -> str:
    """Why the capture must not load the target, or empty when it may."""
    if asked is False:
        return "state only (--no-load)"
    if reach_error:
        return f"the target does not answer ({reach_error})"
    if asked is None and not is_loopback(host):
        # Load is traffic, and traffic can deepen an incident on a shared host.
        return f"{host} is not on loopback; pass --load to send load to it anyway"
    return ""


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


class Capture:
    """One capture's stages over one staging directory."""

    def __init__(self, config: Config, options: CaptureOptions, progress: Progress):
        self.config = config
        self.options = options
        self.progress = progress
        self.started = datetime.now(UTC)
        self.name = bundle_name(self.started, options.label)
        self.staging = Staging(
            prepare_destination(options.out_dir, self.name),
            Redactor(config.redact.patterns),
        )
        self.context = CollectContext(config, self.staging)
        self.reach_error = ""
        self.skipped = ""
        self.records: list[CollectorRecord] = []
        self.matrix: MatrixResult | None = None
        self.suite: SuiteResult | None = None
        self.judgement: Judgement | None = None

    @property
    def interrupted(self) -> bool:
        return self.context.interrupted

    def run(self) -> CaptureResult:
        try:
            with capture_log() as tool_log:
                self._stages()
                ended = datetime.now(UTC)
                self.staging.write_text("capture.log", "\n".join(tool_log.lines) + "\n")
            manifest = self._manifest(ended)
            self.rendered = self._report(manifest)
        except BundleError as err:
            kept = self.staging.root
            raise BundleError(
                f"{err.message}; the evidence collected so far is in {kept}"
            ) from None
        self.progress("sealing the bundle")
        sealed = seal(self.staging, manifest, self.options.out_dir, self.name)
        self.report_path = self._report_beside(sealed)
        return CaptureResult(
            sealed,
            self.started,
            ended,
            self.records,
            not self.reach_error,
            self.reach_error,
            self.interrupted,
            self.skipped,
            self.report_path,
            self.findings,
            self.matrix,
            self.suite,
            self.judgement,
        )

    def _stages(self) -> None:
        target = self.config.target
        self.reach_error = probe(target.host, target.port)
        if self.reach_error:
            log.warning("nothing answers at %s: %s", target.url, self.reach_error)
            self.progress(f"target {target.url}: {self.reach_error}")
        self.records = self._snapshot()
        self.skipped = self._why_no_load()
        if self.skipped:
            log.info("no load: %s", self.skipped)
            self.progress(f"no load: {self.skipped}")
            return
        try:
            self._load()
            if not self.interrupted:
                self._stress()
            if not self.interrupted:
                self._after()
        except KeyboardInterrupt:
            self.context.interrupted = True
            self.progress("interrupted: sealing what was collected")
        self.judgement = judge(self.config, self.staging)
        self.staging.write_json(GATES_FILE, self.judgement.to_dict())

    def _snapshot(self) -> list[CollectorRecord]:
        url = self.config.target.url
        names = [name for name in ALL if name not in self.config.collect.disabled]
        self.progress(f"collecting evidence around {url} ({len(names)} collectors)")
        records = run_collectors(names, self.context, self._collector_progress)
        for record in records:
            log.info("collector %s: %s %s", record.name, record.status, record.reason)
        if self.interrupted:
            self.progress("interrupted: sealing what was collected")
        return records

    def _why_no_load(self) -> str:
        if self.interrupted:
            return "interrupted during the snapshot"
        return why_no_load(self.options.load, self.reach_error, self.config.target.host)

    def _load(self) -> None:
        began = time.time()
        try:
            self.matrix = run_matrix(
                self.config.load,
                urljoin(self.config.target.url, self.config.load.path),
                self.staging.adopt(RECORDS),
                progress=self.progress,
                allow_remote=self.options.load is True,
            )
        except TargetUnreachable as err:
            self.progress(f"load: {err.message}")
            log.warning("load: %s", err.message)
        self.staging.redact_in_place(RECORDS)
        if self.matrix is not None:
            summary = {**self.matrix.to_dict(), "records_path": RECORDS}
            self.staging.write_json(LOAD_SUMMARY, summary)
            self.context.interrupted |= self.matrix.interrupted
        self.staging.write_json(LOAD_JOURNAL, self._log_window(began))

    def _log_window(self, since: float) -> dict[str, Any]:
        """What the service logged since ``since``, or why that cannot be known."""
        try:
            window = read_window(self.config.target, since)
        except Unavailable as missing:
            return {"unavailable": str(missing)}
        return {**window, "since": since, "until": time.time()}

    def _stress(self) -> None:
        self.suite = run_suite(self.config, self.progress)
        self.staging.write_json(STRESS_RESULTS, self.suite.to_dict())
        self.context.interrupted |= self.suite.interrupted

    def _after(self) -> None:
        names = [name for name in AFTER if name not in self.config.collect.disabled]
        self.progress("collecting again after the load: " + ", ".join(names))
        context = CollectContext(
            self.config, self.staging, phase="after", since=self.started.timestamp()
        )
        self.records += run_collectors(names, context, self._collector_progress)
        self.context.interrupted |= context.interrupted

    def _collector_progress(self, record: CollectorRecord) -> None:
        reason = f"  {record.reason}" if record.reason else ""
        self.progress(
            f"  {record.name:<9} {record.status:<11} {record.duration_s:5.2f} s{reason}"
        )

    def _report(self, manifest: dict[str, Any]) -> Rendered:
        """Findings and the report, written into the bundle before it is sealed."""
        found = find(self.staging)
        self.staging.write_json(FINDINGS, [finding.to_dict() for finding in found])
        baseline = None
        if self.options.baseline is not None:
            baseline = model_of(self.options.baseline)
        files = evidence_files(file_table(self.staging))
        rendered = render(self.staging, manifest, files, baseline, PICTURE_FILE, found)
        if rendered.svg:
            self.staging.write_text(PICTURE_FILE, rendered.svg)
        self.staging.write_text(REPORT_FILE, rendered.markdown)
        self.findings = found
        return rendered

    def _report_beside(self, sealed: SealedBundle) -> Path:
        """The same report next to the archive, its picture beside it too."""
        markdown = self.rendered.markdown.replace(
            f"]({PICTURE_FILE})", f"]({self.name}.svg)"
        )
        beside = Rendered(markdown, self.rendered.svg, self.rendered.model)
        return write_report(sealed.path.parent, self.name, beside)

    def _manifest(self, ended: datetime) -> dict[str, Any]:
        return {
            "tool": {"name": "roxy-triage", "version": __version__},
            "host": {"hostname": platform.node(), "kernel": platform.release()},
            "label": self.options.label or "",
            "started_at": iso(self.started),
            "ended_at": iso(ended),
            "duration_s": round((ended - self.started).total_seconds(), 3),
            "interrupted": self.interrupted,
            "target": {
                "url": self.config.target.url,
                "reachable": not self.reach_error,
                "error": self.reach_error,
            },
            "stages": {
                "load": "skipped: " + self.skipped if self.skipped else "ran",
                "gates": GATES_FILE if self.judgement else None,
            },
            "config": self.config.to_dict(),
            "collectors": [record.to_dict() for record in self.records],
        }


def run_capture(
    config: Config, options: CaptureOptions, progress: Progress
) -> CaptureResult:
    """Collect, load, stress, judge and seal one bundle."""
    # Config mistakes in the later stages are found before any evidence is
    # taken, not after a minute of load.
    resolve(config)
    check_waivers(config)
    return Capture(config, options, progress).run()
