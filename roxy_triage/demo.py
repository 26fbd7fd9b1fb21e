"""The demo: the original incident and its fix, captured on any machine.

roxy-core runs in its legacy profile on a free loopback port and is
captured; then in its patched profile, captured against the legacy bundle
as baseline. No config, systemd or Docker is needed: the service logs to a
file the journal collector reads, and the systemd and Docker collectors are
left out because the demo's service runs under neither.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roxy_core.launch import LaunchError, launch
from roxy_triage.bundle import Bundle
from roxy_triage.capture import CaptureOptions, CaptureResult, Progress, run_capture
from roxy_triage.config import Config, build
from roxy_triage.errors import TriageError


class DemoError(TriageError):
    """The demo's own service would not start."""

    exit_code = 1


@dataclass
class DemoResult:
    legacy: CaptureResult
    patched: CaptureResult

    @property
    def story_holds(self) -> bool:
        """The fix shows: legacy fails its gates, patched passes them."""
        return bool(
            self.legacy.judgement
            and not self.legacy.judgement.holds
            and self.patched.judgement
            and self.patched.judgement.holds
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "story_holds": self.story_holds,
            "legacy": self.legacy.to_dict(),
            "patched": self.patched.to_dict(),
        }


def demo_config(port: int, log_file: Path) -> Config:
    """The defaults, pointed at the demo's service and its log file."""
    document = {
        "target": {
            "url": f"http://127.0.0.1:{port}",
            "unit": "roxy-core-demo.service",
            "log_file": str(log_file),
        },
        "collect": {"disabled": ["systemd", "docker"]},
    }
    return build(Config, document, "demo", extra={"source": "(demo)"})


def run_demo(out_dir: Path, progress: Progress) -> DemoResult:
    results: dict[str, CaptureResult] = {}
    with tempfile.TemporaryDirectory(prefix="roxy-demo-") as scratch:
        for profile in ("legacy", "patched"):
            progress(f"demo: starting roxy-core in its {profile} profile")
            log_file = Path(scratch) / f"roxy-core-{profile}.log"
            try:
                service = launch(["--profile", profile], log_file)
            except LaunchError as err:
                raise DemoError(str(err)) from None
            try:
                baseline = results.get("legacy")
                options = CaptureOptions(
                    out_dir=out_dir,
                    label=profile,
                    baseline=Bundle.open(baseline.bundle.path) if baseline else None,
                )
                progress(f"demo: capturing {profile} on 127.0.0.1:{service.port}")
                results[profile] = run_capture(
                    demo_config(service.port, log_file), options, progress
                )
            finally:
                service.stop()
    return DemoResult(results["legacy"], results["patched"])
