"""Acceptance gates: thresholds from config, judged on the evidence, pass or fail.

A criterion passes or fails; there is no partial pass. A criterion whose
evidence is missing fails, saying what was not measured: a gate exists to
prove something, and nothing is proven without evidence. A waiver in the
config lets a named criterion fail without failing the run, and its reason
is shown wherever the verdict is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from roxy_triage.config import Config
from roxy_triage.errors import ConfigError
from roxy_triage.staging import Evidence

GATES_FILE = "gates.json"
LOAD_SUMMARY = "load/summary.json"
LOAD_JOURNAL = "load/journal.json"
STRESS_RESULTS = "stress/results.json"
JOURNAL_AFTER = "after/journal/summary.json"
SOCKETS_AFTER = "after/sockets/summary.json"


@dataclass
class Criterion:
    id: str
    label: str
    measured: Any
    shown: str
    threshold: str
    passed: bool
    source: str
    waiver: str | None = None

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else "fail"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "measured": self.measured,
            "shown": self.shown,
            "threshold": self.threshold,
            "verdict": self.verdict,
            "source": self.source,
            "waiver": self.waiver,
        }


@dataclass
class Gate:
    name: str
    title: str
    criteria: list[Criterion] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(criterion.passed for criterion in self.criteria)

    @property
    def holds(self) -> bool:
        """Passed, or failed only on waived criteria."""
        return all(c.passed or c.waiver for c in self.criteria)

    @property
    def verdict(self) -> str:
        if self.passed:
            return "pass"
        return "fail (waived)" if self.holds else "fail"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "verdict": self.verdict,
            "criteria": [criterion.to_dict() for criterion in self.criteria],
        }


@dataclass
class Judgement:
    gates: list[Gate]

    @property
    def holds(self) -> bool:
        return all(gate.holds for gate in self.gates)

    def to_dict(self) -> dict[str, Any]:
        return {"holds": self.holds, "gates": [gate.to_dict() for gate in self.gates]}


CRITERIA = {
    "ping_load": (
        "min_success_ratio",
        "max_p95_ms",
        "max_broken_pipes",
        "max_journal_broken_pipes",
    ),
    "full_stress": ("max_failed_checks", "max_unexpected_journal_errors", "listeners"),
}


def check_waivers(config: Config) -> None:
    known = {f"{gate}.{name}" for gate, names in CRITERIA.items() for name in names}
    for key in config.gates.waivers:
        if key not in known:
            raise ConfigError(
                f"{config.source}: [gates.waivers] {key!r} is not a criterion; "
                f"choose from {', '.join(sorted(known))}"
            )


def judge(config: Config, evidence: Evidence) -> Judgement:
    """Every enabled gate, judged on the evidence at hand."""
    check_waivers(config)
    gates = []
    if config.gates.ping_load.enabled:
        gates.append(_ping_load(config, evidence))
    if config.gates.full_stress.enabled:
        gates.append(_full_stress(config, evidence))
    for gate in gates:
        for criterion in gate.criteria:
            criterion.waiver = config.gates.waivers.get(criterion.id)
    return Judgement(gates)


def _missing(cid: str, label: str, threshold: str, source: str, why: str) -> Criterion:
    return Criterion(cid, label, None, f"not measured: {why}", threshold, False, source)


def _ping_load(config: Config, evidence: Evidence) -> Gate:
    limits = config.gates.ping_load
    gate = Gate("ping_load", f"Ping load at C={limits.level}")
    level = _level(evidence, limits.level)
    ids = {name: f"ping_load.{name}" for name in CRITERIA["ping_load"]}
    if level is None:
        why = (
            f"no level C={limits.level} in {LOAD_SUMMARY}"
            if evidence.has(LOAD_SUMMARY)
            else "the load did not run"
        )
        gate.criteria += [
            _missing(
                ids["min_success_ratio"],
                "success",
                f">= {limits.min_success_ratio:.0%}",
                LOAD_SUMMARY,
                why,
            ),
            _missing(
                ids["max_p95_ms"],
                "p95 latency",
                f"< {limits.max_p95_ms:g} ms",
                LOAD_SUMMARY,
                why,
            ),
            _missing(
                ids["max_broken_pipes"],
                "broken pipes (client)",
                f"<= {limits.max_broken_pipes}",
                LOAD_SUMMARY,
                why,
            ),
        ]
    else:
        planned = level["planned"]
        ratio = level["successes"] / planned if planned else 0.0
        p95 = (level.get("latency_ms") or {}).get("p95")
        pipes = level["errors"].get("broken_pipe", 0)
        gate.criteria += [
            Criterion(
                ids["min_success_ratio"],
                "success",
                ratio,
                f"{level['successes']}/{planned} ({ratio:.1%})",
                f">= {limits.min_success_ratio:.0%}",
                ratio >= limits.min_success_ratio,
                LOAD_SUMMARY,
            ),
            Criterion(
                ids["max_p95_ms"],
                "p95 latency",
                p95,
                "no requests finished" if p95 is None else f"{p95:,.0f} ms",
                f"< {limits.max_p95_ms:g} ms",
                p95 is not None and p95 < limits.max_p95_ms,
                LOAD_SUMMARY,
            ),
            Criterion(
                ids["max_broken_pipes"],
                "broken pipes (client)",
                pipes,
                str(pipes),
                f"<= {limits.max_broken_pipes}",
                pipes <= limits.max_broken_pipes,
                LOAD_SUMMARY,
            ),
        ]
    gate.criteria.append(
        _journal_count(
            evidence,
            LOAD_JOURNAL,
            ids["max_journal_broken_pipes"],
            "broken pipes (journal, during the load)",
            "broken_pipes",
            limits.max_journal_broken_pipes,
        )
    )
    return gate


def _full_stress(config: Config, evidence: Evidence) -> Gate:
    limits = config.gates.full_stress
    gate = Gate("full_stress", "Full stress")
    if evidence.has(STRESS_RESULTS):
        results = evidence.read_json(STRESS_RESULTS)
        failed = results["failed"]
        names = [c["name"] for c in results["checks"] if not c["passed"]]
        shown = f"{results['passed']}/{results['total']} passed"
        if names:
            shown += f"; failed: {', '.join(names)}"
        gate.criteria.append(
            Criterion(
                "full_stress.max_failed_checks",
                "stress checks",
                failed,
                shown,
                "all pass"
                if limits.max_failed_checks == 0
                else f"<= {limits.max_failed_checks} failed",
                failed <= limits.max_failed_checks,
                STRESS_RESULTS,
            )
        )
    else:
        gate.criteria.append(
            _missing(
                "full_stress.max_failed_checks",
                "stress checks",
                "all pass",
                STRESS_RESULTS,
                "the stress suite did not run",
            )
        )
    gate.criteria.append(
        _journal_count(
            evidence,
            JOURNAL_AFTER,
            "full_stress.max_unexpected_journal_errors",
            "unexpected journal errors",
            "unexpected_errors",
            limits.max_unexpected_journal_errors,
        )
    )
    if evidence.has(SOCKETS_AFTER):
        count = evidence.read_json(SOCKETS_AFTER)["listener_count"]
        gate.criteria.append(
            Criterion(
                "full_stress.listeners",
                "listeners on the port",
                count,
                str(count),
                f"== {limits.listeners}",
                count == limits.listeners,
                SOCKETS_AFTER,
            )
        )
    else:
        gate.criteria.append(
            _missing(
                "full_stress.listeners",
                "listeners on the port",
                f"== {limits.listeners}",
                SOCKETS_AFTER,
                "sockets were not read",
            )
        )
    return gate


def _journal_count(
    evidence: Evidence, source: str, cid: str, label: str, key: str, limit: int
) -> Criterion:
    threshold = f"<= {limit}"
    if not evidence.has(source):
        return _missing(cid, label, threshold, source, "no journal or log was read")
    window = evidence.read_json(source)
    if window.get("unavailable"):
        return _missing(cid, label, threshold, source, window["unavailable"])
    count = window[key]
    return Criterion(
        cid,
        label,
        count,
        f"{count} (from the {window['source']})",
        threshold,
        count <= limit,
        source,
    )


def _level(evidence: Evidence, concurrency: int) -> dict[str, Any] | None:
    if not evidence.has(LOAD_SUMMARY):
        return None
    for level in evidence.read_json(LOAD_SUMMARY)["levels"]:
        if level["concurrency"] == concurrency:
            return level
    return None
