"""Gates: pass or fail per criterion, measured value beside threshold, waivers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from roxy_triage.config import load_config
from roxy_triage.errors import ConfigError
from roxy_triage.gates import judge
from roxy_triage.redact import Redactor
from roxy_triage.staging import Staging
from tests.collecting import write_config


def level(
    concurrency: int, successes: int = 200, p95: float = 20.0, **errors: int
) -> dict:
    return {
        "concurrency": concurrency,
        "planned": 200,
        "finished": 200,
        "successes": successes,
        "latency_ms": {"p95": p95},
        "errors": {"broken_pipe": 0, **errors},
    }


def evidence(tmp_path: Path, **files: Any) -> Staging:
    staging = Staging(tmp_path / "staging", Redactor())
    for relative, document in files.items():
        staging.write_json(
            relative.replace("__", "/").replace("_json", ".json"), document
        )
    return staging


def healthy(tmp_path: Path, **changes: Any) -> Staging:
    files = {
        "load__summary_json": {"levels": [level(1), level(50)]},
        "load__journal_json": {"broken_pipes": 0, "source": "journal"},
        "stress__results_json": {"passed": 16, "failed": 0, "total": 16, "checks": []},
        "after__journal__summary_json": {"unexpected_errors": 0, "source": "journal"},
        "after__sockets__summary_json": {"listener_count": 1},
    }
    files.update(changes)
    return evidence(tmp_path, **files)


def criteria(judgement: Any) -> dict[str, Any]:
    return {c.id: c for gate in judgement.gates for c in gate.criteria}


def test_healthy_evidence_passes_both_gates(tmp_path: Path) -> None:
    """Evidence within every threshold: both gates pass and the run holds."""
    judgement = judge(load_config(None), healthy(tmp_path))
    assert judgement.holds
    assert [gate.verdict for gate in judgement.gates] == ["pass", "pass"]
    shown = criteria(judgement)["ping_load.min_success_ratio"].shown
    assert shown == "200/200 (100.0%)"


def test_slow_level_fails_on_p95_alone(tmp_path: Path) -> None:
    """All requests succeeding does not rescue a p95 over the limit: no partial pass."""
    staging = healthy(tmp_path, load__summary_json={"levels": [level(50, p95=3312.0)]})
    judgement = judge(load_config(None), staging)
    found = criteria(judgement)
    assert not judgement.holds and judgement.gates[0].verdict == "fail"
    assert found["ping_load.max_p95_ms"].shown == "3,312 ms"
    assert found["ping_load.max_p95_ms"].threshold == "< 250 ms"
    assert found["ping_load.min_success_ratio"].passed


def test_client_broken_pipes_fail_the_load_gate(tmp_path: Path) -> None:
    """A broken pipe seen by the client fails the ping load gate."""
    staging = healthy(
        tmp_path, load__summary_json={"levels": [level(50, broken_pipe=3)]}
    )
    assert not criteria(judge(load_config(None), staging))[
        "ping_load.max_broken_pipes"
    ].passed


def test_missing_evidence_fails_and_says_why(tmp_path: Path) -> None:
    """Without a load summary or journal, criteria fail as not measured."""
    staging = evidence(tmp_path)
    found = criteria(judge(load_config(None), staging))
    assert all(not criterion.passed for criterion in found.values())
    assert found["ping_load.max_p95_ms"].shown == "not measured: the load did not run"
    assert found["full_stress.max_failed_checks"].shown == (
        "not measured: the stress suite did not run"
    )


def test_unavailable_journal_is_not_a_pass(tmp_path: Path) -> None:
    """A load window with no readable log fails its criterion with the reason."""
    staging = healthy(tmp_path, load__journal_json={"unavailable": "no journal files"})
    criterion = criteria(judge(load_config(None), staging))[
        "ping_load.max_journal_broken_pipes"
    ]
    assert not criterion.passed and criterion.shown == "not measured: no journal files"


def test_level_missing_from_the_plan(tmp_path: Path) -> None:
    """A gate level the plan did not run is named in the failure."""
    staging = healthy(tmp_path, load__summary_json={"levels": [level(1)]})
    criterion = criteria(judge(load_config(None), staging))[
        "ping_load.min_success_ratio"
    ]
    assert criterion.shown == "not measured: no level C=50 in load/summary.json"


def test_waiver_lets_a_criterion_fail_without_failing_the_run(tmp_path: Path) -> None:
    """A waived criterion still shows fail, with its reason, and the run holds."""
    config = load_config(
        write_config(
            tmp_path, gates={"waivers": {"ping_load.max_p95_ms": "INC-42 accepted"}}
        )
    )
    staging = healthy(tmp_path, load__summary_json={"levels": [level(50, p95=900.0)]})
    judgement = judge(config, staging)
    criterion = criteria(judgement)["ping_load.max_p95_ms"]
    assert judgement.holds
    assert criterion.verdict == "fail" and criterion.waiver == "INC-42 accepted"
    assert judgement.gates[0].verdict == "fail (waived)"


def test_thresholds_come_from_config(tmp_path: Path) -> None:
    """Gate level and thresholds are read from [gates.ping_load]."""
    config = load_config(
        write_config(tmp_path, gates={"ping_load": {"level": 1, "max_p95_ms": 10}})
    )
    judgement = judge(config, healthy(tmp_path))
    found = criteria(judgement)
    assert judgement.gates[0].title == "Ping load at C=1"
    assert not found["ping_load.max_p95_ms"].passed


def test_unknown_waiver_is_a_config_error(tmp_path: Path) -> None:
    """A waiver naming no criterion is refused, listing the ones there are."""
    path = write_config(tmp_path, gates={"waivers": {"ping_load.p95": "typo"}})
    with pytest.raises(
        ConfigError, match=r"'ping_load.p95' is not a criterion; choose from"
    ):
        judge(load_config(path), healthy(tmp_path))
