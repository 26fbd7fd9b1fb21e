"""roxy-triage's load engine side by side with wrk, hey and ab, on loopback.

    .venv/bin/python benchmarks/load_peers.py [--repeats 3] [--quick]

Starts a loopback nginx (a minimal config in a temp dir: a small static
answer, access log off) and roxy-core in its patched profile, then drives
both with this engine and with every peer it finds (installing the missing
ones with apt-get when run as root), at the same concurrency and comparable
request counts. Each measurement is repeated and the MEDIAN is reported,
because a small shared machine is noisy. It ends with a memory check (a
one-million-request keep-alive run, peak RSS of the engine process) and a
verdict per target. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from roxy_core.launch import launch

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
CONCURRENCY = 50
PEER_PACKAGES = {"wrk": "wrk", "hey": "hey", "ab": "apache2-utils"}
PING_BODY = '{"command": "ping"}'
MEMORY_LIMIT_MB = 300

NGINX_CONF = """\
worker_processes auto;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ return 200 "pong\\n"; }}
    }}
}}
"""


@dataclass(frozen=True)
class Sample:
    """One tool's run: requests per second and latency percentiles in ms."""

    rps: float
    p50_ms: float
    p99_ms: float
    peak_rss_mb: float = 0.0


@dataclass(frozen=True)
class Row:
    tool: str
    samples: list[Sample]

    def median(self, name: str) -> float:
        return statistics.median(getattr(sample, name) for sample in self.samples)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_measured(argv: list[str], timeout_s: float = 300) -> tuple[str, float]:
    """Run a command; return its stdout and its own peak RSS in MB."""
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                process.kill()
                raise SystemExit(f"timed out: {' '.join(argv)}")
            time.sleep(0.05)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    if process.returncode not in (0,):
        raise SystemExit(f"failed ({process.returncode}): {' '.join(argv)}\n{text}")
    return text, usage.ru_maxrss / 1024


# -- the tools and how to read them -----------------------------------------


def ours(url: str, requests: int, *extra: str) -> Sample:
    argv = [sys.executable, "-m", "roxy_triage", "load", "--json", "-c"]
    argv += [str(CONCURRENCY), "-n", str(requests), *extra, url]
    text, rss = run_measured(argv)
    (level,) = json.loads(text)["levels"]
    if level["successes"] != requests:
        raise SystemExit(f"roxy-triage: not all requests succeeded: {level['errors']}")
    latency = level["latency_ms"]
    return Sample(level["throughput_rps"], latency["p50"], latency["p99"], rss)


def wrk(url: str, duration_s: float) -> Sample:
    # wrk runs for a whole number of seconds, not a request count.
    seconds = max(1, round(duration_s))
    argv = ["wrk", "-t2", f"-c{CONCURRENCY}", f"-d{seconds}s", "--latency", url]
    text, _ = run_measured(argv)
    return Sample(
        float(_find(r"Requests/sec:\s+([\d.]+)", text)),
        _wrk_ms(_find(r"\s50%\s+([\d.]+\w+)", text)),
        _wrk_ms(_find(r"\s99%\s+([\d.]+\w+)", text)),
    )


def _wrk_ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(\w+)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def hey(url: str, requests: int, *extra: str) -> Sample:
    argv = ["hey", "-n", str(requests), "-c", str(CONCURRENCY), *extra, url]
    text, _ = run_measured(argv)
    return Sample(
        float(_find(r"Requests/sec:\s+([\d.]+)", text)),
        float(_find(r"50%\s+in\s+([\d.]+)\s+secs", text)) * 1000,
        float(_find(r"99%\s+in\s+([\d.]+)\s+secs", text)) * 1000,
    )


def ab(url: str, requests: int, *extra: str) -> Sample:
    argv = ["ab", "-q", "-n", str(requests), "-c", str(CONCURRENCY), *extra, url]
    text, _ = run_measured(argv)
    # ab reports whole milliseconds only.
    return Sample(
        float(_find(r"Requests per second:\s+([\d.]+)", text)),
        float(_find(r"\s50%\s+(\d+)", text)),
        float(_find(r"\s99%\s+(\d+)", text)),
    )


def _find(pattern: str, text: str) -> str:
    found = re.search(pattern, text)
    if not found:
        raise SystemExit(f"cannot find {pattern!r} in:\n{text}")
    return found[1]


# -- the targets ---------------------------------------------------------------


@contextmanager
def nginx(tmp: Path) -> Iterator[str]:
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port))
    process = subprocess.Popen(
        ["nginx", "-c", str(conf), "-p", str(tmp)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(port, process, tmp / "error.log")
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.send_signal(signal.SIGQUIT)
        process.wait(timeout=10)


@contextmanager
def roxy_core(tmp: Path) -> Iterator[str]:
    service = launch(["--profile", "patched"], tmp / "roxy.log")
    try:
        yield f"{service.url}/run"
    finally:
        service.stop()


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"nginx exited:\n{_text(log)}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit("nginx did not start listening")


def ensure_peers() -> list[str]:
    missing = [tool for tool in PEER_PACKAGES if shutil.which(tool) is None]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        packages = sorted({PEER_PACKAGES[tool] for tool in missing})
        print(f"installing missing peers with apt-get: {' '.join(packages)}")
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        subprocess.run(["apt-get", "update", "-qq"], check=False, **quiet)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", *packages],
            check=False,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            **quiet,
        )
    found = [tool for tool in PEER_PACKAGES if shutil.which(tool)]
    for tool in sorted(set(PEER_PACKAGES) - set(found)):
        print(f"{tool}: not installed and not installable here; left out")
    return found


# -- measuring and reporting -------------------------------------------------


def measure(
    title: str, runs: dict[str, Callable[[], Sample]], repeats: int
) -> dict[str, Row]:
    print(f"\n== {title} (C={CONCURRENCY}, median of {repeats})", flush=True)
    samples: dict[str, list[Sample]] = {tool: [] for tool in runs}
    # Interleaved, so a slow spell of the machine hits every tool alike.
    for _ in range(repeats):
        for tool, run in runs.items():
            samples[tool].append(run())
    rows = {tool: Row(tool, found) for tool, found in samples.items()}
    reference = rows[next(iter(rows))]
    print(f"{'tool':<26}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'ours/peer':>11}")
    for row in rows.values():
        ratio = (
            ""
            if row is reference
            else f"{reference.median('rps') / row.median('rps'):.2f}"
        )
        spread = ", ".join(f"{sample.rps:,.0f}" for sample in row.samples)
        print(
            f"{row.tool:<26}{row.median('rps'):>10,.0f}{row.median('p50_ms'):>9.2f}"
            f"{row.median('p99_ms'):>9.2f}{ratio:>11}   (runs: {spread})"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--quick", action="store_true", help="smaller counts, for a smoke run"
    )
    args = parser.parse_args()
    scale = 0.1 if args.quick else 1.0
    keep_alive_n = int(300_000 * scale)
    new_conn_n = int(30_000 * scale)
    roxy_n = int(5_000 * scale)
    memory_n = int(1_000_000 * scale)
    peers = ensure_peers()
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}")

    verdicts: list[str] = []
    with tempfile.TemporaryDirectory(prefix="load-peers-") as name:
        tmp = Path(name)
        with nginx(tmp) as url, roxy_core(tmp) as roxy_url:
            get = ("-m", "GET")
            keep_alive = {
                "roxy-triage --keep-alive": lambda: ours(
                    url, keep_alive_n, "--keep-alive", *get
                )
            }
            if "wrk" in peers:
                keep_alive["wrk -t2"] = lambda: wrk(
                    url, max(1.0, keep_alive_n / 80_000)
                )
            if "hey" in peers:
                keep_alive["hey"] = lambda: hey(url, keep_alive_n)
            if "ab" in peers:
                keep_alive["ab -k"] = lambda: ab(url, keep_alive_n, "-k")
            rows = measure("keep-alive, nginx", keep_alive, args.repeats)
            best = rows["roxy-triage --keep-alive"].median("rps")
            if "wrk -t2" in rows:
                wrk_rps = rows["wrk -t2"].median("rps")
                verdicts.append(
                    _verdict(
                        "keep-alive vs wrk: at least half of wrk's req/s",
                        best >= wrk_rps / 2,
                        f"{best:,.0f} vs {wrk_rps:,.0f} "
                        f"(ratio {best / wrk_rps:.2f}, target >= 0.50)",
                    )
                )
            if "hey" in rows:
                hey_rps = rows["hey"].median("rps")
                verdicts.append(
                    _verdict(
                        "keep-alive vs hey: more req/s than hey",
                        best > hey_rps,
                        f"{best:,.0f} vs {hey_rps:,.0f} (ratio {best / hey_rps:.2f})",
                    )
                )

            new_conn = {
                "roxy-triage -w 2": lambda: ours(url, new_conn_n, "-w", "2", *get),
                "roxy-triage -w 1": lambda: ours(url, new_conn_n, *get),
            }
            if "ab" in peers:
                new_conn["ab"] = lambda: ab(url, new_conn_n)
            if "hey" in peers:
                new_conn["hey -disable-keepalive"] = lambda: hey(
                    url, new_conn_n, "-disable-keepalive"
                )
            rows = measure("new connection per request, nginx", new_conn, args.repeats)
            verdicts += _against_ab("new connection, nginx", rows)

            new_conn_roxy = {"roxy-triage": lambda: ours(roxy_url, roxy_n)}
            with tempfile.NamedTemporaryFile("w", suffix=".json") as post:
                post.write(PING_BODY)
                post.flush()
                if "ab" in peers:
                    new_conn_roxy["ab"] = lambda: ab(
                        roxy_url, roxy_n, "-p", post.name, "-T", "application/json"
                    )
                if "hey" in peers:
                    new_conn_roxy["hey -disable-keepalive"] = lambda: hey(
                        roxy_url,
                        roxy_n,
                        "-disable-keepalive",
                        "-m",
                        "POST",
                        "-d",
                        PING_BODY,
                        "-T",
                        "application/json",
                    )
                rows = measure(
                    "new connection per request, roxy-core patched (POST /run ping)",
                    new_conn_roxy,
                    args.repeats,
                )
            verdicts += _against_ab("new connection, roxy-core patched", rows)

            print(f"\n== memory: {memory_n:,} keep-alive requests, C={CONCURRENCY}")
            records = tmp / "records.jsonl"
            sample = ours(url, memory_n, "--keep-alive", *get, "--out", str(records))
            size_mb = records.stat().st_size / 1e6
            print(
                f"peak RSS (ru_maxrss) {sample.peak_rss_mb:.0f} MB, "
                f"{sample.rps:,.0f} req/s, records file {size_mb:,.0f} MB"
            )
            verdicts.append(
                _verdict(
                    f"memory: {memory_n:,} requests, peak RSS < {MEMORY_LIMIT_MB} MB",
                    sample.peak_rss_mb < MEMORY_LIMIT_MB,
                    f"{sample.peak_rss_mb:.0f} MB",
                )
            )

    print("\n== verdicts")
    for line in verdicts:
        print(line)


def _against_ab(title: str, rows: dict[str, Row]) -> list[str]:
    if "ab" not in rows:
        return []
    ab_rps = rows["ab"].median("rps")
    ours_best = max(
        (row for tool, row in rows.items() if tool.startswith("roxy-triage")),
        key=lambda row: row.median("rps"),
    )
    best = ours_best.median("rps")
    return [
        _verdict(
            f"{title}: at least ab's req/s",
            best >= ab_rps,
            f"{ours_best.tool} {best:,.0f} vs ab {ab_rps:,.0f} "
            f"(ratio {best / ab_rps:.2f})",
        )
    ]


def _verdict(target: str, met: bool, figures: str) -> str:
    return f"{'MET    ' if met else 'NOT MET'}  {target}: {figures}"


if __name__ == "__main__":
    main()
