"""Findings: rules applied to a bundle's evidence, each naming what it rests on.

A rule reads evidence files and returns findings, or nothing. A rule whose
evidence is absent says nothing: no finding is ever a guess. Each finding
carries the files and figures it rests on and what to do about it; the
report lists causes first, then risks, then caveats about the measurement.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from roxy_triage.staging import Evidence

SEVERITIES = ("critical", "high", "medium", "low")
# cause: explains a symptom; risk: will hurt later; caveat: limits what the
# measurement shows.
KINDS = ("cause", "risk", "caveat")


@dataclass
class Cited:
    """Figures from one evidence file."""

    file: str
    figures: str

    def to_dict(self) -> dict[str, str]:
        return {"file": self.file, "figures": self.figures}


@dataclass
class Finding:
    id: str
    severity: str
    kind: str
    title: str
    evidence: list[Cited]
    action: str
    detail: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "severity": self.severity,
            "kind": self.kind,
            "title": self.title,
            "evidence": [cited.to_dict() for cited in self.evidence],
            "action": self.action,
            "detail": self.detail,
            "numbers": self.numbers,
        }


Rule = Callable[[Evidence], list[Finding]]
RULES: list[Rule] = []


def rule(function: Rule) -> Rule:
    RULES.append(function)
    return function


def read(evidence: Evidence, relative: str) -> Any | None:
    """A JSON evidence file, or None when the bundle does not hold it."""
    return evidence.read_json(relative) if evidence.has(relative) else None


def load_records(evidence: Evidence) -> Iterator[dict[str, Any]]:
    """The load's raw records, one dict per request."""
    if not evidence.has("load/records.jsonl"):
        return
    for line in evidence.read_text("load/records.jsonl").splitlines():
        if line.strip():
            yield json.loads(line)


def find(evidence: Evidence) -> list[Finding]:
    """Every rule over the evidence, causes first and the worst first."""
    from roxy_triage.findings import network, platform, service  # noqa: F401

    findings = [finding for check in RULES for finding in check(evidence)]
    return sorted(
        findings, key=lambda f: (KINDS.index(f.kind), SEVERITIES.index(f.severity))
    )
