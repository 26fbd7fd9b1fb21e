"""The stress suite against roxy-core: patched passes, legacy fails where it should."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from roxy_triage.cli import cli
from roxy_triage.config import load_config
from roxy_triage.errors import ConfigError
from roxy_triage.stress import SUITE, resolve
from tests.collecting import write_config
from tests.plugins.services import StartService


def suite_config(directory: Path, port: int, log_file: Path, **sections: dict) -> Path:
    target = {
        "url": f"http://127.0.0.1:{port}",
        "log_file": str(log_file),
        "journal_directory": str(directory / "no-journal"),
    }
    return write_config(directory, target=target, **sections)


def run_stress(config: Path) -> tuple[int, dict]:
    result = CliRunner().invoke(cli, ["stress", "--json", "--config", str(config)])
    return result.exit_code, json.loads(result.stdout)


def test_suite_has_at_least_thirteen_named_checks() -> None:
    """The suite is data: at least 13 checks, each with a unique name."""
    names = [spec.name for spec in SUITE]
    assert len(names) >= 13 and len(set(names)) == len(names)


def test_patched_profile_passes_every_check(
    tmp_path: Path, start_roxy_core: StartService
) -> None:
    """The patched roxy-core passes the whole suite; exit 0."""
    service = start_roxy_core("patched")
    code, outcome = run_stress(suite_config(tmp_path, service.port, service.log_path))
    failed = [check for check in outcome["checks"] if not check["passed"]]
    assert failed == []
    assert code == 0 and outcome["passed"] == outcome["total"] == len(SUITE)


def test_legacy_profile_fails_the_original_faults(
    tmp_path: Path, start_roxy_core: StartService
) -> None:
    """The legacy profile fails exactly the checks its faults break; exit 1."""
    service = start_roxy_core("legacy")
    code, outcome = run_stress(suite_config(tmp_path, service.port, service.log_path))
    failed = {
        check["name"]: check["evidence"]
        for check in outcome["checks"]
        if not check["passed"]
    }
    assert code == 1
    always = {
        "malformed_json",
        "wrong_method",
        "oversized_body",
        "connection_burst",
        "vanishing_client",
        "rate_limit_burst",
        "healthy_after",
    }
    # 50 pings through 45 ms subprocesses outrun a bucket of 20 refilled at
    # 10/s on an idle machine; on a busy one the subprocesses slow down
    # enough for the refill to keep up, so rapid_fire may pass. keep_alive
    # meets whatever the bucket holds after the bursts before it.
    assert always <= set(failed) <= always | {"rapid_fire", "keep_alive"}
    assert "closed without a response" in failed["malformed_json"]
    assert "501" in failed["wrong_method"]
    assert "0 carried Retry-After" in failed["rate_limit_burst"]
    assert "unexpected errors in the log_file" in failed["vanishing_client"]


def test_table_output_names_each_check(
    tmp_path: Path, start_roxy_core: StartService
) -> None:
    """Without --json, one line per check with its verdict and evidence."""
    service = start_roxy_core("patched")
    config = suite_config(
        tmp_path,
        service.port,
        service.log_path,
        stress={
            "disabled": [
                "vanishing_client",
                "slow_command_vs_health",
                "slow_client_vs_others",
                "rate_limit_burst",
            ]
        },
    )
    result = CliRunner().invoke(cli, ["stress", "--config", str(config)])
    lines = result.stdout.splitlines()
    assert result.exit_code == 0
    assert lines[0].startswith("PASS  fast_path_ping ")
    assert lines[-1] == f"{len(SUITE) - 4}/{len(SUITE) - 4} checks passed"
    assert "stress: 12 checks against" in result.stderr


def test_config_overrides_check_parameters(tmp_path: Path) -> None:
    """[stress.checks.NAME] changes parameters; [stress] disabled drops checks."""
    config = load_config(
        write_config(
            tmp_path,
            stress={
                "disabled": ["oversized_body"],
                "checks": {"rapid_fire": {"count": 5}},
            },
        )
    )
    specs = {spec.name: spec for spec in resolve(config)}
    assert "oversized_body" not in specs
    assert specs["rapid_fire"].params["count"] == 5
    assert specs["rapid_fire"].params["path"] == "/run"


@pytest.mark.parametrize(
    ("stress", "message"),
    [
        ({"disabled": ["no_such"]}, "[stress] no check named 'no_such'"),
        (
            {"checks": {"rapid_fire": {"cout": 5}}},
            "[stress.checks.rapid_fire] unknown key 'cout'",
        ),
    ],
)
def test_bad_stress_config_names_the_key(
    tmp_path: Path, stress: dict, message: str
) -> None:
    """A misspelt check or parameter is a config error naming it."""
    path = write_config(tmp_path, stress=stress)
    with pytest.raises(ConfigError) as raised:
        resolve(load_config(path))
    assert raised.value.message == f"{path}: {message}"
