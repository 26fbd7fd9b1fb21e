#!/usr/bin/env python3
"""roxy-core's legacy and patched profiles side by side under 50 concurrent clients.

    .venv/bin/python benchmarks/profiles.py [--requests 200] [--runs 5]

Each profile is started on a free loopback port and loaded with GET /health
by roxy-triage's load engine: 50 concurrent clients, each opening a new
connection per request, as the original incident's clients did. Prints
median p50/p95/p99, success, errors and the kernel's listen-overflow
counter per profile, the ratio between them, and the verdict against the
targets: patched p95 under 25 ms with no errors, legacy p95 of a second or
more (the original symptom).

200 requests per run, as in the reference report's matrix: in longer runs
the legacy profile's rate limiter answers most requests with a fast 429,
and those swamp the percentiles that the accept queue's stalls set.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from roxy_core.launch import launch
from roxy_triage.config import LoadPlan
from roxy_triage.load import run_matrix

VENV_BIN = Path(sys.executable).parent
CONCURRENCY = 50
PATCHED_P95_MS = 25.0
LEGACY_P95_MS = 1000.0


def measure(profile: str, requests: int, runs: int, workdir: Path) -> dict[str, float]:
    """Median figures over ``runs`` fresh starts of one profile."""
    rows = []
    plan = LoadPlan(
        levels=[CONCURRENCY],
        requests=requests,
        method="GET",
        path="/health",
        body="",
        headers={},
        timeout_s=30.0,
    )
    for run in range(runs):
        service = launch(["--profile", profile], workdir / f"{profile}-{run}.log")
        try:
            level = run_matrix(plan, f"{service.url}/health", None).levels[0]
        finally:
            service.stop()
        errors = sum(level.errors.values())
        rows.append(
            {
                "p50": level.latency.p50,
                "p95": level.latency.p95,
                "p99": level.latency.p99,
                "success": level.success_rate,
                "errors": errors,
                "non_429_errors": errors - level.statuses.get(429, 0),
                "overflows": (level.kernel or {}).get("TcpExt.ListenOverflows", 0),
                "rps": level.throughput,
            }
        )
        print(
            f"  {profile:<8} run {run + 1}: p95 {level.latency.p95:8.1f} ms, "
            f"{level.success_rate:6.1%} ok, {errors} errors, "
            f"{rows[-1]['overflows']} listen overflows",
            file=sys.stderr,
        )
    return {key: statistics.median(row[key] for row in rows) for key in rows[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="roxy-profiles-") as scratch:
        patched = measure("patched", args.requests, args.runs, Path(scratch))
        legacy = measure("legacy", args.requests, args.runs, Path(scratch))
    print()
    print(
        f"GET /health, C={CONCURRENCY}, new connection per request, "
        f"{args.requests} requests, medians of {args.runs} runs"
    )
    print(f"{'':<22}{'legacy':>12}{'patched':>12}{'legacy/patched':>16}")
    for key, label in (
        ("p50", "p50 latency (ms)"),
        ("p95", "p95 latency (ms)"),
        ("p99", "p99 latency (ms)"),
        ("rps", "throughput (req/s)"),
    ):
        ratio = legacy[key] / patched[key] if patched[key] else float("inf")
        print(f"{label:<22}{legacy[key]:>12,.1f}{patched[key]:>12,.1f}{ratio:>15,.1f}x")
    for key, label, shape in (
        ("success", "success", ".1%"),
        ("errors", "errors (429 included)", ",.0f"),
        ("overflows", "listen overflows", ",.0f"),
    ):
        print(f"{label:<22}{legacy[key]:>12{shape}}{patched[key]:>12{shape}}")
    patched_ok = patched["p95"] < PATCHED_P95_MS and patched["errors"] == 0
    legacy_ok = legacy["p95"] >= LEGACY_P95_MS
    print(
        f"patched p95 < {PATCHED_P95_MS:g} ms with no errors: "
        f"{'met' if patched_ok else 'NOT met'} ({patched['p95']:.1f} ms, "
        f"{patched['errors']:.0f} errors)"
    )
    print(
        f"legacy shows the original symptom, p95 >= {LEGACY_P95_MS / 1000:g} s: "
        f"{'yes' if legacy_ok else 'NO'} ({legacy['p95']:,.0f} ms)"
    )
    return 0 if patched_ok and legacy_ok else 1


if __name__ == "__main__":
    sys.exit(main())
