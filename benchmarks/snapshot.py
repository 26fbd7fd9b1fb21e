#!/usr/bin/env python3
"""Time the snapshot stage against sos report, side by side, in one run.

    .venv/bin/python benchmarks/snapshot.py [--runs 7] [--sos-runs 3]

Starts the bundled roxy-core (patched profile) on a free loopback port, then
runs `roxy-triage capture --no-load` against it and `sos report` with the
plugins that cover the same ground (networking, process, systemd, logs,
kernel, memory, host). Each run's wall time and peak RSS come from wait4()
of that run's process alone. Prints medians, ratios and the verdict against
the targets: at most 2 s wall and 150 MB peak RSS for the snapshot.

sos is installed with apt-get when missing and the script runs as root;
otherwise its column is left out. Sends no traffic beyond one health check
to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from roxy_core.launch import launch

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
SOS_PLUGINS = "networking,process,systemd,logs,kernel,memory,host"
TARGET_WALL_S = 2.0
TARGET_RSS_MB = 150.0


def timed(argv: list[str], cwd: Path) -> tuple[float, float, int]:
    """Run argv; return (wall seconds, peak RSS in MB, exit code) for it alone."""
    began = time.monotonic()
    process = subprocess.Popen(
        argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - began
    process.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss is in KiB on Linux.
    return wall, usage.ru_maxrss / 1024, process.returncode


def ensure_sos() -> str | None:
    sos = shutil.which("sos")
    if sos or os.geteuid() != 0 or not shutil.which("apt-get"):
        return sos
    print("benchmark: installing sosreport with apt-get", file=sys.stderr)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "sosreport"],
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        stdout=subprocess.DEVNULL,
        check=False,
    )
    return shutil.which("sos")


def measure(
    label: str, argv: list[str], runs: int, cwd: Path
) -> dict[str, float] | None:
    walls, peaks = [], []
    for index in range(runs):
        wall, peak, code = timed(argv, cwd)
        if code not in (0, 1):
            print(
                f"benchmark: {label} exited {code} on run {index + 1}", file=sys.stderr
            )
            return None
        walls.append(wall)
        peaks.append(peak)
        print(
            f"  {label:<12} run {index + 1}: {wall:6.2f} s  {peak:6.1f} MB",
            file=sys.stderr,
        )
    return {"wall": statistics.median(walls), "rss": max(peaks), "runs": runs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--sos-runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="roxy-bench-") as scratch:
        workdir = Path(scratch)
        log = workdir / "roxy-core.log"
        service = launch(["--profile", "patched"], log)
        port = service.port
        try:
            config = workdir / "roxy-triage.toml"
            config.write_text(
                f'[target]\nurl = "http://127.0.0.1:{port}"\nlog_file = "{log}"\n'
            )
            ours = measure(
                "roxy-triage",
                [
                    str(VENV_BIN / "roxy-triage"),
                    "capture",
                    "--no-load",
                    "--config",
                    str(config),
                    "--out",
                    str(workdir / "bundles"),
                ],
                args.runs,
                workdir,
            )
            sos = ensure_sos()
            theirs = None
            if sos and args.sos_runs > 0:
                (workdir / "sos").mkdir()
                theirs = measure(
                    "sos report",
                    [
                        sos,
                        "report",
                        "--batch",
                        "--quiet",
                        "--tmp-dir",
                        str(workdir / "sos"),
                        "-o",
                        SOS_PLUGINS,
                    ],
                    args.sos_runs,
                    workdir,
                )
        finally:
            service.stop()
    if ours is None:
        return 1
    print()
    print(f"{'snapshot':<28} {'median wall':>12} {'peak RSS':>10} {'runs':>5}")
    rows = [("roxy-triage capture --no-load", ours)]
    if theirs:
        rows.append((f"sos report -o ({SOS_PLUGINS.count(',') + 1} plugins)", theirs))
    for label, row in rows:
        print(
            f"{label:<28} {row['wall']:>10.2f} s {row['rss']:>7.1f} MB {row['runs']:>5}"
        )
    if theirs:
        print(
            f"ratio sos/roxy-triage: wall {theirs['wall'] / ours['wall']:.1f}x, "
            f"peak RSS {theirs['rss'] / ours['rss']:.2f}x"
        )
    wall_ok = ours["wall"] <= TARGET_WALL_S
    rss_ok = ours["rss"] <= TARGET_RSS_MB
    print(
        f"target wall <= {TARGET_WALL_S:g} s: {'met' if wall_ok else 'NOT met'} "
        f"({ours['wall']:.2f} s); target peak RSS <= {TARGET_RSS_MB:g} MB: "
        f"{'met' if rss_ok else 'NOT met'} ({ours['rss']:.1f} MB)"
    )
    return 0 if wall_ok and rss_ok else 1


if __name__ == "__main__":
    sys.exit(main())
