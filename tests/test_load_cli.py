"""`roxy-triage load` through click's CliRunner against real roxy-core."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from roxy_triage.cli import cli
from tests.plugins.services import RunningService
from tests.support import free_port


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, ["load", *args])


def test_table_on_stdout_progress_on_stderr(patched: RunningService) -> None:
    """The matrix prints as a table on stdout; progress goes to stderr."""
    result = run("-c", "1,5", "-n", "20", f"{patched.url}/run")
    assert result.exit_code == 0, result.output
    header, _rule, *rows = result.stdout.splitlines()
    assert header.split()[:8] == [
        "C", "requests", "success", "p50", "ms", "p95", "ms", "p99",
    ]  # fmt: skip
    assert {"overflows", "drops", "client", "broken_pipe"} <= set(header.split())
    assert [row.split()[:3] for row in rows[:2]] == [
        ["1", "20", "100.0%"],
        ["5", "20", "100.0%"],
    ]
    assert "C=5: 20/20" in result.stderr
    assert "C=5" not in result.stdout.split("\n\n")[-1]


def test_json_output(patched: RunningService) -> None:
    """--json prints the matrix summary as JSON on stdout."""
    result = run("--json", "-c", "2", "-n", "10", "--keep-alive", f"{patched.url}/run")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["mode"] == "keep-alive"
    (level,) = document["levels"]
    assert (level["concurrency"], level["finished"], level["success_rate"]) == (
        2,
        10,
        1,
    )
    assert set(level["latency_ms"]) == {"p50", "p90", "p95", "p99", "max", "count"}
    assert level["errors"] == dict.fromkeys(level["errors"], 0)
    assert "TcpExt.ListenOverflows" in level["kernel"]
    assert set(level["client"]) >= {"cpu_s", "wall_s", "bound"}


def test_out_writes_raw_records(patched: RunningService, tmp_path: Path) -> None:
    """--out writes one JSON line per request."""
    out = tmp_path / "records.jsonl"
    result = run("-c", "1,3", "-n", "7", "--out", str(out), f"{patched.url}/run")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(line["concurrency"], line["status"]) for line in lines] == [
        (1, 200)
    ] * 7 + [(3, 200)] * 7


def test_config_file_sets_the_plan(patched: RunningService, tmp_path: Path) -> None:
    """--config supplies the load plan; options on the command line win."""
    config = tmp_path / "roxy-triage.toml"
    config.write_text('[load]\nlevels = [2, 4]\nrequests = 5\nmethod = "GET"\n')
    result = run("--config", str(config), "--json", "-n", "3", f"{patched.url}/health")
    assert result.exit_code == 0, result.output
    levels = json.loads(result.stdout)["levels"]
    assert [(level["concurrency"], level["finished"]) for level in levels] == [
        (2, 3),
        (4, 3),
    ]
    assert levels[0]["statuses"] == {"200": 3}


def test_unreachable_exits_3_and_keeps_records(tmp_path: Path) -> None:
    """Nothing listening: exit 3, the refused records are still written."""
    out = tmp_path / "records.jsonl"
    url = f"http://127.0.0.1:{free_port()}/run"
    result = run("-c", "2", "-n", "4", "--out", str(out), url)
    assert result.exit_code == 3
    assert "Error: nothing answers" in result.stderr
    assert [json.loads(line)["error"] for line in out.read_text().splitlines()] == [
        "refused"
    ] * 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ftp://127.0.0.1/run"], "http://"),
        (["http://:8766/run"], "http://"),
        (["http://192.0.2.1:8766/run"], "--allow-remote"),
        (["-c", "1,x", "http://127.0.0.1:1/"], "comma list"),
        (["-H", "no colon", "http://127.0.0.1:1/"], "Name: value"),
        (["-n", "0", "http://127.0.0.1:1/"], "x>=1"),
        (["-m", "GE T", "http://127.0.0.1:1/"], "not an HTTP method"),
        (["--duration", "5", "http://127.0.0.1:1/"], "a duration needs a rate"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    """A bad URL, a remote target or a malformed option exits 2 with a reason."""
    result = run(*args)
    assert result.exit_code == 2
    assert message in result.stderr
