"""The report: golden files from bundles sealed in the tests, and its Markdown shape.

The evidence in tests/data comes from a real `roxy-triage demo` run (see
tests/data/README.md). Set ROXY_UPDATE_GOLDEN=1 to rewrite the golden files
after an intended change to the report, and read the diff before committing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from roxy_triage.bundle import Bundle, bundle_name, seal, verify
from roxy_triage.cli import cli
from roxy_triage.redact import Redactor
from roxy_triage.report import render_bundle
from roxy_triage.staging import Staging
from tests.plugins.services import RunningService

DATA = Path(__file__).parent / "data"
GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("ROXY_UPDATE_GOLDEN") == "1"


def seal_evidence(profile: str, directory: Path) -> Path:
    """Seal the recorded evidence of one profile into a bundle, as capture does."""
    unpacked = directory / f"{profile}-unpacked"
    with tarfile.open(DATA / f"{profile}-evidence.tar.gz") as tar:
        tar.extractall(unpacked, filter="data")
    manifest = json.loads((unpacked / "manifest.json").read_text())
    started = datetime.fromisoformat(manifest["started_at"].replace("Z", "+00:00"))
    name = bundle_name(started, manifest["label"])
    staging = Staging(unpacked / "evidence", Redactor())
    return seal(staging, manifest, directory, name).path


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("sealed")
    return {
        profile: seal_evidence(profile, directory) for profile in ("legacy", "patched")
    }


def assert_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no golden file {path}; run with ROXY_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from its golden file"


def report(*args: str) -> str:
    result = CliRunner().invoke(cli, ["report", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_legacy_report_matches_golden(bundles: dict[str, Path]) -> None:
    """The legacy bundle's report, byte for byte."""
    assert_golden("report-legacy.md", report(str(bundles["legacy"])))


def test_before_after_report_matches_golden(bundles: dict[str, Path]) -> None:
    """The patched bundle against the legacy baseline, byte for byte."""
    text = report(str(bundles["patched"]), "--baseline", str(bundles["legacy"]))
    assert_golden("report-patched-vs-legacy.md", text)


def test_latency_picture_matches_golden(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    """--out writes the report and its SVG, which the report links to."""
    text = report(str(bundles["legacy"]), "--out", str(tmp_path))
    name = Bundle.open(bundles["legacy"]).root
    svg = (tmp_path / f"{name}.svg").read_text()
    assert f"![Latency of every request, per level]({name}.svg)" in text
    assert (tmp_path / f"{name}.md").read_text() == text
    assert_golden("latency-legacy.svg", svg)


def test_legacy_report_names_the_accept_queue_first(bundles: dict[str, Path]) -> None:
    """The first finding, and the summary's root cause, is the accept-queue overflow."""
    text = report(str(bundles["legacy"]))
    findings = re.findall(r"^### 1\. (.+)$", text, flags=re.MULTILINE)
    assert findings[0].startswith("Accept queue overflow")
    assert "second-scale latencies" in findings[0]
    assert "- **Root cause** (critical): Accept queue overflow" in text
    assert "GIL" not in text


def test_every_figure_names_its_file(bundles: dict[str, Path]) -> None:
    """Each finding's evidence line starts with the bundle file it comes from."""
    text = report(str(bundles["legacy"]))
    evidence = [line for line in text.splitlines() if line.startswith("- `")]
    known = set(Bundle.open(bundles["legacy"]).names())
    cited = {re.match(r"- `([^`]+)`", line)[1] for line in evidence}
    assert cited and cited <= known


def test_json_format_carries_the_model(bundles: dict[str, Path]) -> None:
    """--format json prints findings, gates, matrix and comparison as data."""
    model = json.loads(
        report(
            str(bundles["patched"]),
            "--baseline",
            str(bundles["legacy"]),
            "--format",
            "json",
        )
    )
    assert model["findings"] == []
    assert model["gates"]["holds"] is True
    assert [row["concurrency"] for row in model["comparison"]["rows"]] == [
        1,
        5,
        10,
        25,
        50,
    ]
    assert model["operating_limit"] == {"held_up_to": 50, "broke_at": None, "broke": []}


def table_widths(text: str) -> list[tuple[int, set[int]]]:
    """For each Markdown table, its line number and the cell counts of its rows."""
    tables = []
    rows: list[int] = []
    start = 0
    for number, line in enumerate([*text.splitlines(), ""], 1):
        if line.startswith("|"):
            if not rows:
                start = number
            rows.append(len(re.split(r"(?<!\\)\|", line.strip())) - 2)
        elif rows:
            tables.append((start, set(rows)))
            rows = []
    return tables


def test_tables_are_well_formed(bundles: dict[str, Path]) -> None:
    """Every row of every table has as many cells as its header (GitHub, GitLab)."""
    for profile, extra in (
        ("legacy", ()),
        ("patched", ("--baseline", str(bundles["legacy"]))),
    ):
        text = report(str(bundles[profile]), *extra)
        for start, widths in table_widths(text):
            assert len(widths) == 1, (
                f"{profile} report, table at line {start}: {widths}"
            )
        assert "\n\n\n" not in text


def test_report_in_a_bundle_renders_again_the_same(
    tmp_path: Path, patched: RunningService
) -> None:
    """A bundle's report.md is what `report` renders from the same bundle."""
    result = CliRunner().invoke(
        cli, ["capture", "--no-load", "--url", patched.url, "--out", str(tmp_path)]
    )
    assert result.exit_code == 0
    bundle = Bundle.open(next(tmp_path.glob("*.tar.gz")))
    again = render_bundle(bundle, svg_href="latency.svg").markdown
    assert bundle.read_text("report.md") == again
    beside = next(tmp_path.glob("*.md")).read_text()
    assert beside == again


def test_unreadable_baseline_is_a_clear_error(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    """A baseline that is not a bundle stops the report with one line."""
    junk = tmp_path / "junk.tar.gz"
    junk.write_text("not a bundle")
    result = CliRunner().invoke(
        cli, ["report", str(bundles["patched"]), "--baseline", str(junk)]
    )
    assert result.exit_code == 4
    assert result.stderr.startswith(f"Error: {junk}: not a readable bundle")


@pytest.mark.slow
def test_demo_end_to_end(tmp_path: Path) -> None:
    """The README's first command: legacy fails, patched passes, both bundles verify."""
    done = subprocess.run(
        [sys.executable, "-m", "roxy_triage", "demo", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "The fix shows: legacy fails its gates, patched passes both." in done.stdout
    legacy = next(tmp_path.glob("*_legacy.tar.gz"))
    patched = next(tmp_path.glob("*_patched.tar.gz"))
    assert verify(legacy).ok and verify(patched).ok
    legacy_report = next(tmp_path.glob("*_legacy.md")).read_text()
    assert re.search(r"^### 1\. Accept queue overflow", legacy_report, re.MULTILINE)
    after = next(tmp_path.glob("*_patched.md")).read_text()
    assert "## Before and after" in after
    assert "| Ping load at C=50 | FAIL | PASS |" in after
    assert "| Full stress | FAIL | PASS |" in after
