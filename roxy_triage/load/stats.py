"""Level summaries computed from raw records: exact percentiles by nearest rank.

Latency is a request's whole wait: from when it was due (its intended start)
to its outcome, whatever the outcome. Timeouts therefore weigh in at the
timeout, as they did for the users of the original incident, and an open
loop charges the client's queueing to the server that caused it. Connect
time is from the request's start to the end of the TCP handshake, over the
requests that opened a connection.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from roxy_triage.load.records import ERROR_CLASSES, UNFINISHED, LevelRecords

PERCENTILES = (50, 90, 95, 99)

# The client is the bottleneck of a level when its single event loop was busy
# for at least this share of the level's wall time: requests then waited for
# the client, and latencies and throughput describe the client, not the
# target.
CLIENT_BOUND_SHARE = 0.9


def nearest_rank(ordered: Sequence[float], percentile: float) -> float:
    """The ``percentile``-th value of sorted data by the nearest-rank method.

    The smallest value with at least ``percentile`` % of the data at or below
    it: always a value that was measured, never an interpolation.
    """
    if not ordered:
        raise ValueError("no values")
    rank = max(1, math.ceil(percentile / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Distribution:
    """Percentiles and maximum of a set of durations, in milliseconds."""

    p50: float
    p90: float
    p95: float
    p99: float
    max: float
    count: int

    @classmethod
    def of(cls, seconds: Iterable[float]) -> Distribution | None:
        ordered = sorted(seconds)
        if not ordered:
            return None
        p50, p90, p95, p99 = (
            nearest_rank(ordered, percentile) * 1000 for percentile in PERCENTILES
        )
        return cls(p50, p90, p95, p99, ordered[-1] * 1000, len(ordered))


@dataclass(frozen=True)
class ClientUsage:
    """How busy the load client itself was during a level."""

    cpu_s: float
    wall_s: float
    # Worker processes that shared the level, each with its own event loop.
    workers: int = 1

    @property
    def share(self) -> float:
        """CPU time per wall second per worker: 1.0 is one core flat out."""
        return self.cpu_s / (self.wall_s * self.workers) if self.wall_s else 0.0

    @property
    def bound(self) -> bool:
        return self.share >= CLIENT_BOUND_SHARE

    def to_dict(self) -> dict[str, Any]:
        return {
            "cpu_s": round(self.cpu_s, 4),
            "wall_s": round(self.wall_s, 4),
            "workers": self.workers,
            "cpu_share": round(self.share, 3),
            "bound": self.bound,
        }


@dataclass(frozen=True)
class LevelSummary:
    """What one concurrency level did, computed from its records."""

    level: int
    concurrency: int
    planned: int
    finished: int
    successes: int
    duration_s: float
    latency: Distribution | None
    connect: Distribution | None
    errors: dict[str, int]
    statuses: dict[int, int]
    # Filled by the matrix from around the level; absent when summarising
    # records read back from a file.
    kernel: dict[str, int] | None = None
    client: ClientUsage | None = None
    interrupted: bool = False

    @property
    def success_rate(self) -> float:
        return self.successes / self.finished if self.finished else 0.0

    @property
    def throughput(self) -> float:
        """Finished requests per second of the level's wall time."""
        return self.finished / self.duration_s if self.duration_s else 0.0

    @property
    def client_bound(self) -> bool:
        return self.client is not None and self.client.bound

    def to_dict(self) -> dict[str, Any]:
        document = {
            "level": self.level,
            "concurrency": self.concurrency,
            "planned": self.planned,
            "finished": self.finished,
            "successes": self.successes,
            "success_rate": round(self.success_rate, 6),
            "duration_s": round(self.duration_s, 6),
            "throughput_rps": round(self.throughput, 2),
            "latency_ms": _rounded(self.latency),
            "connect_ms": _rounded(self.connect),
            "errors": self.errors,
            "statuses": {str(code): n for code, n in sorted(self.statuses.items())},
            "kernel": self.kernel,
            "client": self.client.to_dict() if self.client else None,
            "client_bound": self.client_bound,
            "interrupted": self.interrupted,
        }
        return document


def _rounded(distribution: Distribution | None) -> dict[str, float] | None:
    if distribution is None:
        return None
    return {
        name: value if name == "count" else round(value, 3)
        for name, value in asdict(distribution).items()
    }


def summarize(records: LevelRecords) -> LevelSummary:
    """Summarise a level from its records alone."""
    # A request's columns are written together when it finishes, so an
    # unfinished one is NaN throughout and drops out of every comprehension.
    latency = array(
        "d",
        (
            end - intended
            for end, intended, code in zip(
                records.end, records.intended, records.error, strict=True
            )
            if code != UNFINISHED
        ),
    )
    connect_times = array(
        "d",
        (
            connect - start
            for connect, start in zip(records.connect, records.start, strict=True)
            if connect == connect
        ),
    )
    errors = Counter(records.error)
    unfinished = errors.pop(UNFINISHED, 0)
    statuses = Counter(records.status)
    statuses.pop(0, None)
    last_end = max((end for end in records.end if end == end), default=records.origin)
    return LevelSummary(
        level=records.level,
        concurrency=records.concurrency,
        planned=len(records),
        finished=len(latency),
        successes=errors[0],
        duration_s=last_end - records.origin,
        latency=Distribution.of(latency),
        connect=Distribution.of(connect_times),
        errors={name: errors[code] for code, name in enumerate(ERROR_CLASSES, 1)},
        statuses=dict(statuses),
        interrupted=unfinished > 0,
    )
