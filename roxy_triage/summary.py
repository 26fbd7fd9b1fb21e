"""The one-screen summaries commands print on stdout."""

from __future__ import annotations

from roxy_triage.capture import CaptureResult
from roxy_triage.demo import DemoResult
from roxy_triage.gates import Judgement
from roxy_triage.load import render_table
from roxy_triage.stress import SuiteResult


def render_capture_summary(result: CaptureResult) -> str:
    """Collectors and their status, then the bundle: what a capture did, at a glance."""
    width = max((len(record.name) for record in result.collectors), default=8)
    lines = [f"Capture {result.started_at:%Y-%m-%d %H:%M:%S} UTC"]
    if result.interrupted:
        lines.append("INTERRUPTED: the bundle holds what finished before Ctrl-C")
    lines.append("")
    for record in result.collectors:
        detail = record.reason or "; ".join(record.notes)
        lines.append(
            f"  {record.name:<{width}}  {record.status:<11}  {detail}".rstrip()
        )
    if result.skipped:
        lines += ["", f"No load: {result.skipped}"]
    if result.matrix is not None:
        lines += ["", render_table(result.matrix)]
    if result.suite is not None:
        failed = [check.name for check in result.suite.failed]
        total = len(result.suite.results)
        lines += [
            "",
            f"Stress: {total - len(failed)}/{total} checks passed"
            + (f"; failed: {', '.join(failed)}" if failed else ""),
        ]
    if result.judgement is not None:
        lines += ["", render_gates(result.judgement)]
    lines += [
        "",
        f"Bundle  {result.bundle.path}",
        f"SHA-256 {result.bundle.sha256}",
    ]
    return "\n".join(lines)


def render_gates(judgement: Judgement) -> str:
    """Each gate's verdict, and each criterion's measured value beside its threshold."""
    lines = []
    for gate in judgement.gates:
        lines.append(f"Gate {gate.title}: {gate.verdict.upper()}")
        for criterion in gate.criteria:
            waived = f"  (waived: {criterion.waiver})" if criterion.waiver else ""
            lines.append(
                f"  {criterion.verdict:<4}  {criterion.label:<40} {criterion.shown}"
                f"  [{criterion.threshold}]{waived}"
            )
    return "\n".join(lines)


def render_stress_table(outcome: SuiteResult) -> str:
    """One line per check: verdict, name and the evidence behind it."""
    width = max((len(result.name) for result in outcome.results), default=10)
    lines = []
    for result in outcome.results:
        verdict = "PASS" if result.passed else "FAIL"
        lines.append(f"{verdict}  {result.name:<{width}}  {result.evidence}")
    total = len(outcome.results)
    lines.append("")
    lines.append(f"{total - len(outcome.failed)}/{total} checks passed")
    if outcome.interrupted:
        lines.append("INTERRUPTED: the checks after the last one shown did not run")
    return "\n".join(lines)


def render_demo_summary(result: DemoResult) -> str:
    """Where the two bundles and the before/after report are, and the verdicts."""
    lines = []
    for name, capture in (("legacy", result.legacy), ("patched", result.patched)):
        judgement = capture.judgement
        verdicts = (
            ", ".join(
                f"{gate.title} {gate.verdict.upper()}" for gate in judgement.gates
            )
            if judgement
            else f"not judged ({capture.skipped})"
        )
        lines += [
            f"{name}:",
            f"  bundle   {capture.bundle.path}",
            f"  report   {capture.report}",
            f"  gates    {verdicts}",
        ]
        causes = [f for f in capture.findings if f.kind == "cause"]
        if causes:
            lines.append(f"  cause    {causes[0].title}")
        lines.append("")
    lines.append(
        "The fix shows: legacy fails its gates, patched passes both."
        if result.story_holds
        else "UNEXPECTED: the gates did not come out as legacy FAIL, patched PASS."
    )
    lines.append(f"Before/after report: {result.patched.report}")
    return "\n".join(lines)
