"""Findings fire on evidence produced for real, and stay silent on a healthy service."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from roxy_triage.bundle import Bundle
from roxy_triage.cli import cli
from roxy_triage.findings import Finding, find
from roxy_triage.redact import Redactor
from roxy_triage.staging import Staging
from tests.collecting import two_listeners, write_config
from tests.plugins.services import RunningService, StartService, start_service


def capture(
    directory: Path,
    service_url: str,
    log_file: Path | None,
    *extra: str,
    **sections: Any,
) -> Bundle:
    target = {
        "url": service_url,
        "journal_directory": str(directory / "no-journal"),
        **({"log_file": str(log_file)} if log_file else {}),
    }
    load = {"levels": [1, 50], "requests": 100, **sections.pop("load", {})}
    config = write_config(
        directory,
        target=target,
        load=load,
        collect={"disabled": ["systemd", "docker"]},
        **sections,
    )
    out = directory / "out"
    result = CliRunner().invoke(
        cli, ["capture", "--config", str(config), "--out", str(out), *extra]
    )
    assert result.exit_code in (0, 1, 3), result.output
    return Bundle.open(next(out.glob("*.tar.gz")))


def by_id(findings: list[Finding]) -> dict[str, Finding]:
    return {finding.id: finding for finding in findings}


@pytest.fixture(scope="module")
def legacy_bundle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bundle]:
    """One real capture of the legacy profile, shared by the tests that read it."""
    directory = tmp_path_factory.mktemp("legacy-capture")
    service = start_service(directory / "svc", "legacy")
    try:
        yield capture(directory, service.url, service.log_path)
    finally:
        service.stop()


def test_healthy_service_yields_no_finding(
    tmp_path: Path, patched: RunningService
) -> None:
    """The patched profile under the default plan: no finding at all."""
    bundle = capture(tmp_path, patched.url, patched.log_path)
    assert find(bundle) == []
    assert bundle.read_json("findings.json") == []


def test_accept_queue_overflow_fires_on_legacy(legacy_bundle: Bundle) -> None:
    """Backlog 5 against C=50: overflows counted and the SYN-retry waits cited."""
    finding = by_id(find(legacy_bundle))["accept-queue-overflow"]
    cited = {cited.file: cited.figures for cited in finding.evidence}
    assert finding.kind == "cause" and finding.severity in ("critical", "high")
    assert finding.title.startswith(
        "Accept queue overflow: listen backlog 5 is below the load's concurrency of 50"
    )
    assert cited["before/sockets/summary.json"] == "listen backlog 5"
    assert "C=50: ListenOverflows +" in cited["load/summary.json"]
    assert finding.numbers["overflows"] > 0 and finding.numbers["backlog"] == 5
    assert "request_queue_size" in finding.action


def test_accept_queue_is_the_first_cause(legacy_bundle: Bundle) -> None:
    """Causes come first, the worst first: the overflow leads the legacy findings."""
    findings = find(legacy_bundle)
    assert findings[0].id == "accept-queue-overflow"
    kinds = [finding.kind for finding in findings]
    assert kinds == sorted(kinds, key=["cause", "risk", "caveat"].index)


def test_rate_limiting_fires_on_a_limited_burst(legacy_bundle: Bundle) -> None:
    """429s during the load: their share and the level they start at."""
    finding = by_id(find(legacy_bundle))["rate-limited"]
    assert finding.numbers["limited"] > 0 and finding.numbers["first_level"] == 1
    assert "429 per level: C=1:" in finding.evidence[0].figures


def test_expensive_route_and_journal_errors_fire_on_legacy(
    legacy_bundle: Bundle,
) -> None:
    """Subprocess time per route, and the tracebacks grouped by signature."""
    found = by_id(find(legacy_bundle))
    route = found["expensive-route-subprocess"]
    assert route.numbers["subprocess_share"] > 0.9
    errors = found["journal-errors-after"]
    signatures = {s["signature"] for s in errors.numbers["signatures"]}
    assert any(
        s.startswith(("BrokenPipeError", "ConnectionResetError")) for s in signatures
    )
    assert any("JSONDecodeError" in s for s in signatures)
    assert found["disconnects"].numbers["unhandled_server"] >= 1


def test_rate_limiting_off_is_a_risk(
    tmp_path: Path, start_roxy_core: StartService
) -> None:
    """With the limiter switched off, the burst check finds nothing limiting it."""
    service = start_roxy_core("patched", rate_limit={"enabled": False})
    found = by_id(find(capture(tmp_path, service.url, service.log_path)))
    assert set(found) == {"rate-limiting-off"}
    assert found["rate-limiting-off"].kind == "risk"


def keep_alive_findings(directory: Path, service: RunningService) -> dict[str, Finding]:
    """Findings of a short keep-alive capture, with the slow stress checks left out."""
    slow_checks = [
        "rate_limit_burst",
        "vanishing_client",
        "slow_command_vs_health",
        "slow_client_vs_others",
    ]
    bundle = capture(
        directory,
        service.url,
        service.log_path,
        load={"levels": [1, 5], "requests": 60, "keep_alive": True},
        stress={"disabled": slow_checks},
    )
    return by_id(find(bundle))


def test_small_write_stall_fires_on_two_writes_with_nagle(
    tmp_path: Path, start_roxy_core: StartService
) -> None:
    """Keep-alive against headers and body written apart: latency floored near 40 ms."""
    service = start_roxy_core("patched", single_write_responses=False)
    finding = keep_alive_findings(tmp_path, service)["small-write-stall"]
    assert finding.numbers["server_p50_ms"] is not None
    assert "TCP_NODELAY" in finding.action


def test_small_write_stall_is_silent_with_one_write(
    tmp_path: Path, start_roxy_core: StartService
) -> None:
    """The same keep-alive load against single writes finds no stall."""
    service = start_roxy_core("patched")
    assert "small-write-stall" not in keep_alive_findings(tmp_path, service)


def test_no_listener_fires(tmp_path: Path) -> None:
    """A port nothing listens on is a critical cause."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    bundle = capture(tmp_path, f"http://127.0.0.1:{port}", None, "--no-load")
    finding = by_id(find(bundle))["no-listener"]
    assert finding.severity == "critical"
    assert finding.title == f"Nothing listens on port {port}"


def test_two_listeners_fire(tmp_path: Path) -> None:
    """Two sockets on one port with SO_REUSEPORT are a cause."""
    with two_listeners() as port:
        bundle = capture(tmp_path, f"http://127.0.0.1:{port}", None, "--no-load")
    assert by_id(find(bundle))["several-listeners"].title == (
        f"2 sockets listen on port {port}"
    )


CROWDED = """
import resource, socket, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
held = [open("/dev/null") for _ in range(56)]
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(5)
print(s.getsockname()[1], flush=True)
time.sleep(60)
"""


def test_descriptors_near_the_limit_fire(tmp_path: Path) -> None:
    """A listener holding 58 of its 64 descriptors is a risk."""
    process = subprocess.Popen(
        [sys.executable, "-c", CROWDED], stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(process.stdout.readline())
        bundle = capture(tmp_path, f"http://127.0.0.1:{port}", None, "--no-load")
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
    finding = by_id(find(bundle))["descriptors-near-limit"]
    assert finding.kind == "risk"
    assert "of 64)" in finding.title


def test_client_bound_level_is_a_caveat(tmp_path: Path) -> None:
    """A level whose client used a whole core is flagged, on recorded evidence.

    The client is rarely the bottleneck against a real service here, so the
    summary is written as the engine writes it rather than provoked.
    """
    staging = Staging(tmp_path / "staging", Redactor())
    level = {
        "concurrency": 50,
        "client": {"bound": True, "cpu_share": 0.97},
        "errors": {},
        "statuses": {},
        "finished": 10,
        "latency_ms": {"p95": 1.0},
    }
    staging.write_json(
        "load/summary.json", {"levels": [level], "plan": {"keep_alive": False}}
    )
    finding = by_id(find(staging))["client-bound"]
    assert finding.kind == "caveat"
    assert finding.title == "The load client was the bottleneck at C=50 (97% of a core)"


def test_rules_without_evidence_say_nothing(tmp_path: Path) -> None:
    """An empty bundle holds no evidence, so no rule says anything."""
    assert find(Staging(tmp_path / "empty", Redactor())) == []
