"""The load matrix: every concurrency level in turn, with evidence around each.

Around each level the kernel's TCP counters are read before and after, so
their growth belongs to that level (nothing else should load the host while
the matrix runs: the counters are system-wide), and the client's own CPU
time is measured so that a level where the client was the bottleneck says
so instead of blaming the target.
"""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from roxy_triage import kernel
from roxy_triage.config import LoadPlan, build
from roxy_triage.errors import ConfigError, TargetUnreachable
from roxy_triage.load.endpoint import request_bytes, resolve
from roxy_triage.load.engine import ClientExhausted, LoadSpec
from roxy_triage.load.records import LevelRecords, write_jsonl
from roxy_triage.load.stats import CLIENT_BOUND_SHARE, ClientUsage, LevelSummary
from roxy_triage.load.stats import summarize as summarize_records
from roxy_triage.load.workers import EVENT_LOOP, InProcess, WorkerPool

Progress = Callable[[str], None]

# Levels shorter than this print one line when they end; longer ones also
# print how far they are every so often.
PROGRESS_EVERY_S = 2.0
# File descriptors the process needs besides one per concurrent connection.
_SPARE_FDS = 64


@dataclass(frozen=True)
class MatrixResult:
    """The load matrix's outcome: one summary per level that ran."""

    url: str
    plan: LoadPlan
    started_at: str
    event_loop: str
    levels: list[LevelSummary]
    interrupted: bool
    records_path: str | None

    @property
    def mode(self) -> str:
        return _mode(self.plan)

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "started_at": self.started_at,
            "mode": self.mode,
            "open_loop_rate": self.plan.rate or None,
            "event_loop": self.event_loop,
            "client_bound_rule": (
                f"client CPU >= {CLIENT_BOUND_SHARE:.0%} of one core per worker"
            ),
            "interrupted": self.interrupted,
            "records_path": self.records_path,
            "plan": asdict(self.plan),
            "levels": [summary.to_dict() for summary in self.levels],
        }


def run_matrix(
    plan: LoadPlan,
    url: str,
    records_path: Path | None,
    *,
    progress: Progress | None = None,
    allow_remote: bool = False,
    progress_every_s: float = PROGRESS_EVERY_S,
) -> MatrixResult:
    """Run every level of ``plan`` against ``url``, raw records to ``records_path``.

    Ctrl-C stops the run cleanly: requests in flight are dropped, what
    finished is recorded and summarised, and the result says it was
    interrupted. Raises TargetUnreachable, after the records are written,
    when every request of the first level was refused.
    """
    if plan.duration_s and not plan.rate:
        raise ConfigError("a duration needs a rate: it sets how long an open loop runs")
    endpoint = resolve(url, allow_remote=allow_remote)
    spec = LoadSpec(
        endpoint=endpoint,
        request=request_bytes(
            endpoint, plan.method, plan.body, plan.headers, keep_alive=plan.keep_alive
        ),
        timeout_s=plan.timeout_s,
        keep_alive=plan.keep_alive,
        head_only=plan.method.upper() == "HEAD",
    )
    _raise_open_file_limit(max(plan.levels) + _SPARE_FDS)
    say = progress or _silent
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    say(
        f"load: {plan.method} {url}, {_mode(plan)}, levels "
        f"{','.join(map(str, plan.levels))}, {_arrivals(plan)} each, "
        f"timeout {plan.timeout_s:g} s ({EVENT_LOOP}"
        + (f", {plan.workers} workers)" if plan.workers > 1 else ")")
    )
    if EVENT_LOOP != "uvloop":
        say("load: pip install 'roxy-triage[fast]' for uvloop, about twice the rate")
    summaries: list[LevelSummary] = []
    interrupted = False
    with _records_file(records_path) as stream, _executor(spec, plan) as executor:
        try:
            for number, concurrency in enumerate(plan.levels):
                summary, interrupted = _run_level(
                    executor, plan, number, concurrency, stream, say, progress_every_s
                )
                if summary is not None:
                    summaries.append(summary)
                    say(_level_line(summary))
                if interrupted or (number == 0 and summary and _all_refused(summary)):
                    break
        except KeyboardInterrupt:
            interrupted = True
    if interrupted:
        say("load: interrupted; kept the records of what finished")
    result = MatrixResult(
        url=url,
        plan=plan,
        started_at=started_at,
        event_loop=EVENT_LOOP,
        levels=summaries,
        interrupted=interrupted,
        records_path=str(records_path) if records_path is not None else None,
    )
    if summaries and _all_refused(summaries[0]):
        first = summaries[0]
        raise TargetUnreachable(
            f"nothing answers at {url}: all {first.finished} requests at "
            f"C={first.concurrency} were refused"
        )
    return result


def _run_level(
    executor: InProcess | WorkerPool,
    plan: LoadPlan,
    number: int,
    concurrency: int,
    stream: IO[str] | None,
    say: Progress,
    every_s: float,
) -> tuple[LevelSummary | None, bool]:
    """Run one level between two readings of the kernel counters."""
    records = LevelRecords(number, concurrency, _arrival_count(plan))

    def tick(done: int, failed: int, elapsed: float) -> None:
        rate = done / elapsed if elapsed > 0 else 0.0
        say(
            f"  C={concurrency}: {done}/{len(records)} done, {rate:,.0f} req/s, "
            f"{failed} errors, {elapsed:.0f} s"
        )

    counters_before = kernel.read_counters()
    try:
        outcome = executor.run(records, plan.rate, tick, every_s)
    except ClientExhausted:
        _write(records, stream)
        raise
    counters_after = kernel.read_counters()
    _write(records, stream)
    summary = summarize_records(records)
    if not summary.finished:
        return None, outcome.interrupted
    summary = replace(
        summary,
        kernel=kernel.delta(counters_before, counters_after) or None,
        client=ClientUsage(outcome.cpu_s, outcome.wall_s, outcome.workers),
    )
    return summary, outcome.interrupted


def _write(records: LevelRecords, stream: IO[str] | None) -> None:
    if stream is not None:
        write_jsonl(records, stream)
        stream.flush()


@contextlib.contextmanager
def _executor(spec: LoadSpec, plan: LoadPlan) -> Iterator[InProcess | WorkerPool]:
    executor = WorkerPool(spec, plan.workers) if plan.workers > 1 else InProcess(spec)
    try:
        yield executor
    finally:
        executor.close()


def _silent(line: str) -> None:
    """Progress sink for callers that want none."""


def _all_refused(summary: LevelSummary) -> bool:
    return summary.finished > 0 and summary.errors["refused"] == summary.finished


def _arrival_count(plan: LoadPlan) -> int:
    if plan.rate and plan.duration_s:
        return max(1, int(plan.rate * plan.duration_s))
    return plan.requests


def _arrivals(plan: LoadPlan) -> str:
    if plan.rate and plan.duration_s:
        return f"{plan.rate:g} req/s for {plan.duration_s:g} s"
    if plan.rate:
        return f"{plan.requests} requests at {plan.rate:g} req/s"
    return f"{plan.requests} requests"


def _mode(plan: LoadPlan) -> str:
    mode = "keep-alive" if plan.keep_alive else "new connection per request"
    return f"open loop, {mode}" if plan.rate else mode


def _level_line(summary: LevelSummary) -> str:
    line = (
        f"  C={summary.concurrency}: {summary.finished}/{summary.planned} in "
        f"{summary.duration_s:.2f} s, {summary.success_rate:.1%} ok"
    )
    if summary.latency is not None:
        line += f", p95 {summary.latency.p95:,.1f} ms"
    line += f", {summary.throughput:,.0f} req/s"
    overflows = (summary.kernel or {}).get("TcpExt.ListenOverflows", 0)
    if overflows:
        line += f", ListenOverflows +{overflows}"
    if summary.client_bound:
        line += ", client-bound"
    return line


@contextlib.contextmanager
def _records_file(path: Path | None) -> Iterator[IO[str] | None]:
    if path is None:
        yield None
        return
    try:
        stream = path.open("w", encoding="utf-8")
    except OSError as err:
        raise ConfigError(
            f"{path}: cannot write load records: {err.strerror}"
        ) from None
    with stream:
        yield stream


def _raise_open_file_limit(needed: int) -> None:
    """Raise the soft open-file limit for the connections a level opens."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise ConfigError(
            f"concurrency needs about {needed} open files but the hard limit is "
            f"{hard}; raise it (ulimit -Hn) or lower the concurrency"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


# Methods whose requests carry no body unless one is given explicitly.
_BODILESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})


def with_overrides(plan: LoadPlan, **overrides: Any) -> LoadPlan:
    """``plan`` with the options given on the command line (None: not given).

    Headers add to the plan's, a later one replacing an earlier of the same
    name. A method that normally has no body drops the plan's default body
    unless a body is given too.
    """
    given = {name: value for name, value in overrides.items() if value is not None}
    if "headers" in given:
        given["headers"] = {**plan.headers, **given["headers"]}
    method = str(given.get("method", plan.method)).upper()
    if "method" in given:
        given["method"] = method
        if "body" not in given and method in _BODILESS_METHODS:
            given["body"] = ""
    return build(LoadPlan, {**asdict(plan), **given}, "command line")
