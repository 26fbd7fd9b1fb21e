"""The Markdown report: a model built from a bundle's evidence, rendered by Jinja2.

The model is plain data (it is also the ``--format json`` output); the
template only lays it out. Every figure in the report names the bundle file
it comes from, so a reader can check it.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from roxy_triage.bundle import Bundle
from roxy_triage.errors import BundleError
from roxy_triage.findings import Evidence, Finding, find, load_records
from roxy_triage.gates import GATES_FILE, LOAD_SUMMARY, STRESS_RESULTS
from roxy_triage.picture import latency_svg

TEMPLATE = "report.md.j2"
REPORT_FILE = "report.md"
PICTURE_FILE = "latency.svg"
# The report and its picture are derived from the rest; the report's file
# table leaves them out, so that rendering a sealed bundle again gives the
# report it holds.
DERIVED = (REPORT_FILE, PICTURE_FILE)
JOURNALS = ("after/journal/summary.json", "before/journal/summary.json")


@dataclass
class Rendered:
    markdown: str
    svg: str | None
    model: dict[str, Any]


def templates_dir() -> Path:
    """The packaged templates, or the checkout's when running from source."""
    packaged = resources.files("roxy_triage").joinpath("templates")
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "templates"


def _read(evidence: Evidence, relative: str) -> Any | None:
    return evidence.read_json(relative) if evidence.has(relative) else None


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f} ms"
    if value >= 10:
        return f"{value:.1f} ms"
    return f"{value:.2f} ms"


def factor(
    before: float | None, after: float | None, lower_is_better: bool = True
) -> str:
    """How much better or worse ``after`` is, as a reader says it: '192x faster'."""
    if before is None or after is None:
        return "-"
    if before == after:
        return "same"
    if lower_is_better:
        if after == 0:
            return "eliminated" if before else "same"
        ratio = before / after
        return f"{ratio:,.1f}x faster" if ratio >= 1 else f"{1 / ratio:,.1f}x slower"
    if before == 0:
        return "from none"
    ratio = after / before
    return f"{ratio:,.1f}x better" if ratio >= 1 else f"{1 / ratio:,.1f}x worse"


def cell(value: Any) -> str:
    """Text safe inside a Markdown table cell on GitHub and GitLab."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def operating_limit(
    levels: list[dict[str, Any]], limits: dict[str, Any]
) -> dict[str, Any]:
    """The highest level where every ping-load criterion held, and what broke next."""
    held = None
    for level in sorted(levels, key=lambda entry: entry["concurrency"]):
        broken = _broken(level, limits)
        if broken:
            return {
                "held_up_to": held,
                "broke_at": level["concurrency"],
                "broke": broken,
            }
        held = level["concurrency"]
    return {"held_up_to": held, "broke_at": None, "broke": []}


def _broken(level: dict[str, Any], limits: dict[str, Any]) -> list[str]:
    broken = []
    ratio = level["successes"] / level["planned"] if level["planned"] else 0.0
    if ratio < limits["min_success_ratio"]:
        broken.append(f"success {ratio:.0%} < {limits['min_success_ratio']:.0%}")
    p95 = (level.get("latency_ms") or {}).get("p95")
    if p95 is None or p95 >= limits["max_p95_ms"]:
        broken.append(f"p95 {ms(p95)} >= {limits['max_p95_ms']:g} ms")
    pipes = level["errors"].get("broken_pipe", 0)
    if pipes > limits["max_broken_pipes"]:
        broken.append(f"{pipes} broken pipes")
    return broken


def build_model(
    evidence: Evidence,
    manifest: dict[str, Any],
    files: list[dict[str, Any]],
    findings: list[Finding] | None = None,
    svg_href: str | None = None,
) -> dict[str, Any]:
    """Everything the report says, as plain data."""
    findings = find(evidence) if findings is None else findings
    load = _read(evidence, LOAD_SUMMARY)
    gates = _read(evidence, GATES_FILE)
    stress = _read(evidence, STRESS_RESULTS)
    limits = manifest["config"]["gates"]["ping_load"]
    model: dict[str, Any] = {
        "manifest": {
            key: manifest.get(key)
            for key in (
                "label",
                "started_at",
                "ended_at",
                "duration_s",
                "interrupted",
                "target",
                "host",
                "tool",
                "stages",
            )
        },
        "collectors": manifest["collectors"],
        "files": files,
        "load": load,
        "operating_limit": operating_limit(load["levels"], limits) if load else None,
        "gates": gates,
        "stress": stress,
        "findings": [finding.to_dict() for finding in findings],
        "telemetry": _telemetry(evidence),
        "latency_svg": svg_href,
        "baseline": None,
        "comparison": None,
    }
    model["not_proven"] = not_proven(model, manifest)
    model["next_steps"] = next_steps(findings, gates)
    return model


def _telemetry(evidence: Evidence) -> dict[str, Any] | None:
    for source in JOURNALS:
        journal = _read(evidence, source)
        telemetry = (journal or {}).get("telemetry")
        if telemetry and telemetry.get("routes"):
            return {**telemetry, "source": source, "log": journal.get("source")}
    return None


def not_proven(model: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
    """What this capture did not test, so nobody reads more into it than it shows."""
    gaps = []
    load = model["load"]
    if load is None:
        skipped = (manifest.get("stages") or {}).get("load", "")
        gaps.append(f"Behaviour under load: the load did not run ({skipped}).")
    else:
        plan = load["plan"]
        top = (
            max(level["concurrency"] for level in load["levels"])
            if load["levels"]
            else 0
        )
        gaps.append(f"Concurrency above C={top}: not tested.")
        if not plan["keep_alive"]:
            gaps.append(
                "Keep-alive clients: the load opened a new connection per request."
            )
        gaps.append(
            f"Requests other than the load's `{plan['method']} {plan['path']}` "
            f"{plan['body'] or ''}".rstrip()
            + " under load."
        )
        longest = max((level["duration_s"] for level in load["levels"]), default=0)
        gaps.append(f"Sustained load: the longest level lasted {longest:.1f} s.")
    for record in manifest["collectors"]:
        if record["status"] != "ok" and record.get("phase", "before") == "before":
            gaps.append(f"{record['name']}: {record['status']} ({record['reason']}).")
    disabled = manifest["config"]["stress"]["disabled"]
    if disabled:
        gaps.append(f"Stress checks left out by config: {', '.join(disabled)}.")
    return list(dict.fromkeys(gaps))


def next_steps(findings: list[Finding], gates: dict[str, Any] | None) -> list[str]:
    steps = list(dict.fromkeys(finding.action for finding in findings))
    if steps:
        steps.append(
            "After the fix, capture again with `--baseline` pointing at this bundle to "
            "show the before and after."
        )
    elif gates and gates["holds"]:
        steps.append(
            "No action needed. Keep this bundle as the baseline for next time."
        )
    return steps


def compare(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any] | None:
    """The before/after table: levels matched by concurrency, with the change."""
    if not before["load"] or not after["load"]:
        return None
    old = {level["concurrency"]: level for level in before["load"]["levels"]}
    rows = []
    for level in after["load"]["levels"]:
        was = old.get(level["concurrency"])
        if was is None:
            continue
        rows.append(
            {
                "concurrency": level["concurrency"],
                "success": (was["success_rate"], level["success_rate"]),
                "p95": (was["latency_ms"]["p95"], level["latency_ms"]["p95"]),
                "p95_change": factor(
                    was["latency_ms"]["p95"], level["latency_ms"]["p95"]
                ),
                "errors": (_errors(was), _errors(level)),
                "overflows": (
                    (was.get("kernel") or {}).get("TcpExt.ListenOverflows"),
                    (level.get("kernel") or {}).get("TcpExt.ListenOverflows"),
                ),
            }
        )
    return {"rows": rows, "headline": _headline(before, after)}


def _errors(level: dict[str, Any]) -> str:
    shown = [f"{count} {name}" for name, count in level["errors"].items() if count]
    return ", ".join(shown) or "none"


def _headline(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    low = min(before["load"]["levels"], key=lambda level: level["concurrency"])
    high = max(before["load"]["levels"], key=lambda level: level["concurrency"])
    for name, pick, lower_is_better, shape in (
        (
            f"p95 latency at C={low['concurrency']}",
            lambda m: _level(m, low["concurrency"], "p95"),
            True,
            ms,
        ),
        (
            f"p95 latency at C={high['concurrency']}",
            lambda m: _level(m, high["concurrency"], "p95"),
            True,
            ms,
        ),
        (
            f"success at C={high['concurrency']}",
            lambda m: _level(m, high["concurrency"], "success_rate"),
            False,
            lambda v: "-" if v is None else f"{v:.0%}",
        ),
        (
            f"listen overflows at C={high['concurrency']}",
            lambda m: _level(m, high["concurrency"], "overflows"),
            True,
            lambda v: "-" if v is None else f"{v:,}",
        ),
        (
            "stress checks failed",
            lambda m: (m["stress"] or {}).get("failed"),
            True,
            lambda v: "-" if v is None else str(v),
        ),
    ):
        was, now = pick(before), pick(after)
        rows.append(
            {
                "metric": name,
                "before": shape(was),
                "after": shape(now),
                "change": factor(was, now, lower_is_better),
            }
        )
    return rows


def _level(model: dict[str, Any], concurrency: int, what: str) -> float | None:
    for level in (model["load"] or {}).get("levels", []):
        if level["concurrency"] == concurrency:
            if what == "p95":
                return level["latency_ms"]["p95"]
            if what == "overflows":
                return (level.get("kernel") or {}).get("TcpExt.ListenOverflows")
            return level[what]
    return None


def evidence_files(files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in files if entry["path"] not in DERIVED]


def model_of(bundle: Bundle) -> dict[str, Any]:
    """The report model of a sealed bundle, e.g. a baseline."""
    manifest = bundle.manifest()
    return build_model(
        bundle, manifest, evidence_files(manifest["files"]), svg_href=None
    )


def render_bundle(
    bundle: Bundle, baseline: Bundle | None = None, svg_href: str | None = None
) -> Rendered:
    """The report of a sealed bundle, as ``roxy-triage report`` prints it."""
    manifest = bundle.manifest()
    return render(
        bundle,
        manifest,
        evidence_files(manifest["files"]),
        model_of(baseline) if baseline is not None else None,
        svg_href,
    )


def write_report(out_dir: Path, name: str, rendered: Rendered) -> Path:
    """``<name>.md`` and ``<name>.svg`` in ``out_dir``; return the report's path."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if rendered.svg:
            (out_dir / f"{name}.svg").write_text(rendered.svg)
        path = out_dir / f"{name}.md"
        path.write_text(rendered.markdown)
    except OSError as err:
        raise BundleError(
            f"cannot write the report to {out_dir}: {err.strerror}"
        ) from None
    return path


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        # Markdown, not HTML: escaping would litter the text with entities.
        autoescape=False,  # noqa: S701
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(ms=ms, cell=cell, factor=factor)
    return env


def render(
    evidence: Evidence,
    manifest: dict[str, Any],
    files: list[dict[str, Any]],
    baseline: dict[str, Any] | None = None,
    svg_href: str | None = "latency.svg",
    findings: list[Finding] | None = None,
) -> Rendered:
    """The report for one bundle, with a before/after section when given a baseline."""
    model = build_model(evidence, manifest, files, findings, svg_href)
    svg = None
    if model["load"] and model["load"]["levels"]:
        title = f"Latency per level, {model['manifest']['target']['url']}"
        svg = latency_svg(model["load"]["levels"], load_records(evidence), title)
    else:
        model["latency_svg"] = None
    if baseline is not None:
        model["baseline"] = {
            "manifest": baseline["manifest"],
            "gates": baseline["gates"],
        }
        model["comparison"] = compare(baseline, model)
    markdown = environment().get_template(TEMPLATE).render(**model)
    return Rendered(markdown, svg, model)
