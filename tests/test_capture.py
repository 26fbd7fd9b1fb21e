"""The whole capture against roxy-core: snapshot, load, stress, after, gates, seal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from roxy_triage.bundle import Bundle, verify
from roxy_triage.capture import is_loopback, why_no_load
from roxy_triage.cli import cli
from tests.collecting import write_config
from tests.plugins.services import RunningService, StartService


def capture_config(directory: Path, service: RunningService, **sections: Any) -> Path:
    target = {
        "url": service.url,
        "log_file": str(service.log_path),
        "journal_directory": str(directory / "no-journal"),
        "docker_host": f"unix://{directory}/no-docker.sock",
    }
    load = {"levels": [1, 50], "requests": 100, **sections.pop("load", {})}
    return write_config(directory, target=target, load=load, **sections)


def capture(
    directory: Path, config: Path, *extra: str
) -> tuple[int, dict[str, Any], Bundle]:
    out = directory / "out"
    result = CliRunner().invoke(
        cli, ["capture", "--json", "--config", str(config), "--out", str(out), *extra]
    )
    summary = json.loads(result.stdout)
    return result.exit_code, summary, Bundle.open(Path(summary["bundle"]))


def test_patched_capture_passes_both_gates(
    tmp_path: Path, start_roxy_core: StartService
) -> None:
    """Load, stress and gates run; every stage's evidence is sealed; exit 0."""
    service = start_roxy_core("patched")
    code, summary, bundle = capture(tmp_path, capture_config(tmp_path, service))
    gates = bundle.read_json("gates.json")
    assert code == 0 and gates["holds"]
    assert [gate["verdict"] for gate in gates["gates"]] == ["pass", "pass"]
    for relative in (
        "load/records.jsonl",
        "load/summary.json",
        "load/journal.json",
        "stress/results.json",
        "after/sockets/summary.json",
        "after/host/summary.json",
        "after/journal/summary.json",
    ):
        assert bundle.has(relative), relative
    records = bundle.read_text("load/records.jsonl").splitlines()
    assert len(records) == 200
    levels = bundle.read_json("load/summary.json")["levels"]
    assert [level["concurrency"] for level in levels] == [1, 50]
    assert all(level["kernel"]["TcpExt.ListenOverflows"] == 0 for level in levels)
    assert summary["stress"]["failed"] == 0
    assert verify(bundle.path).ok


def test_a_failed_gate_exits_one(tmp_path: Path, start_roxy_core: StartService) -> None:
    """An unreachable threshold fails the gate: exit 1, measured value recorded."""
    service = start_roxy_core("patched")
    config = capture_config(
        tmp_path,
        service,
        gates={"ping_load": {"max_p95_ms": 0.001}},
        stress={"disabled": ["vanishing_client", "slow_command_vs_health"]},
    )
    code, _, bundle = capture(tmp_path, config)
    (criterion,) = [
        c
        for gate in bundle.read_json("gates.json")["gates"]
        for c in gate["criteria"]
        if c["id"] == "ping_load.max_p95_ms"
    ]
    assert code == 1
    assert criterion["verdict"] == "fail" and criterion["measured"] > 0.001
    assert criterion["source"] == "load/summary.json"


def test_legacy_capture_shows_the_incident(
    tmp_path: Path, start_roxy_core: StartService
) -> None:
    """Legacy: accept-queue overflows at C=50, failed gates, waived here to exit 0."""
    service = start_roxy_core("legacy")
    waivers = {
        "ping_load.min_success_ratio": "reproducing the incident",
        "ping_load.max_p95_ms": "reproducing the incident",
        "full_stress.max_failed_checks": "reproducing the incident",
        "full_stress.max_unexpected_journal_errors": "reproducing the incident",
    }
    config = capture_config(tmp_path, service, gates={"waivers": waivers})
    result = CliRunner().invoke(
        cli, ["capture", "--config", str(config), "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.stdout
    assert "(waived: reproducing the incident)" in result.stdout
    bundle = Bundle.open(next((tmp_path / "out").glob("*.tar.gz")))
    top = bundle.read_json("load/summary.json")["levels"][-1]
    assert top["concurrency"] == 50
    assert top["kernel"]["TcpExt.ListenOverflows"] > 0
    assert top["statuses"].get("429", 0) > 0
    assert bundle.read_json("gates.json")["gates"][0]["verdict"] == "fail (waived)"


def test_no_load_means_no_gates(runner_out: Path, patched: RunningService) -> None:
    """--no-load takes the state alone: no load files and no gates judged."""
    result = CliRunner().invoke(
        cli, ["capture", "--no-load", "--url", patched.url, "--out", str(runner_out)]
    )
    bundle = Bundle.open(next(runner_out.glob("*.tar.gz")))
    assert result.exit_code == 0
    assert "No load: state only (--no-load)" in result.stdout
    assert not bundle.has("load/summary.json") and not bundle.has("gates.json")


@pytest.fixture
def runner_out(tmp_path: Path) -> Path:
    return tmp_path / "out"


@pytest.mark.parametrize(
    ("asked", "reach_error", "host", "reason"),
    [
        (None, "", "127.0.0.1", ""),
        (None, "", "::1", ""),
        (None, "", "localhost", ""),
        (False, "", "127.0.0.1", "state only (--no-load)"),
        (None, "Connection refused", "127.0.0.1", "the target does not answer"),
        (None, "", "192.0.2.7", "192.0.2.7 is not on loopback; pass --load"),
        (True, "", "192.0.2.7", ""),
    ],
)
def test_load_goes_to_loopback_unless_asked(
    asked: bool | None, reach_error: str, host: str, reason: str
) -> None:
    """Only loopback targets are loaded by default; --load overrides, --no-load wins."""
    assert why_no_load(asked, reach_error, host).startswith(reason)
    assert bool(why_no_load(asked, reach_error, host)) == bool(reason)


def test_loopback_detection() -> None:
    """Names and addresses resolving only to loopback count as loopback."""
    assert is_loopback("127.0.0.2") and is_loopback("localhost")
    assert not is_loopback("192.0.2.7") and not is_loopback("no-such-host.invalid")


def test_ctrl_c_during_the_load_seals_a_partial_bundle(
    tmp_path: Path, start_roxy_core: StartService
) -> None:
    """Ctrl-C mid-load: exit 130, finished records kept, gates judged on them."""
    service = start_roxy_core("patched", sleep_cap_s=30)
    config = capture_config(
        tmp_path,
        service,
        load={"levels": [5], "requests": 1000, "body": '{"command": "sleep 0.2"}'},
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "roxy_triage",
            "capture",
            "--config",
            str(config),
            "--out",
            str(tmp_path / "out"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    deadline = time.monotonic() + 30
    while (
        time.monotonic() < deadline and "Command: sleep 0.2" not in service.log_text()
    ):
        time.sleep(0.05)
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    bundle = Bundle.open(next((tmp_path / "out").glob("*.tar.gz")))
    summary = bundle.read_json("load/summary.json")
    assert summary["interrupted"] is True
    assert 0 < summary["levels"][0]["finished"] < 1000
    assert not bundle.has("stress/results.json")
    assert bundle.manifest()["interrupted"] is True
    assert bundle.read_json("gates.json")["holds"] is False
    assert [
        p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")
    ] == []
