"""Where a level runs: in this process's event loop, or sharded over worker processes.

One event loop drives one core. Keep-alive load from one loop outpaces most
local services, but a new connection per request costs the client about
three times the CPU, so a level can be spread over worker processes, each
with its own loop, its share of the slots and its share of the requests
(the split is fixed up front, as wrk splits connections over threads).
Workers start their share at the same monotonic instant, so every record
of a level is timed from one origin, and each reports the CPU it used.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import os
import resource
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from roxy_triage.load.engine import ClientExhausted, LevelRun, LoadSpec
from roxy_triage.load.records import LevelRecords

try:
    import uvloop
except ImportError:  # pragma: no cover - exercised on installs without [fast]
    uvloop = None

EVENT_LOOP = "uvloop" if uvloop is not None else "asyncio"
# Time for the level message to reach every worker before they all start.
_START_DELAY_S = 0.05

# Called with (requests done, requests failed, seconds since the level began).
Tick = Callable[[int, int, float], None]


@dataclass(frozen=True)
class LevelOutcome:
    """How a level ran: the client's CPU over it and whether Ctrl-C cut it short."""

    cpu_s: float
    wall_s: float
    workers: int
    interrupted: bool


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _new_loop() -> asyncio.AbstractEventLoop:
    return uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()


class InProcess:
    """Runs each level in this process, in a fresh event loop."""

    workers = 1

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec

    def run(
        self, records: LevelRecords, rate: float, tick: Tick, every_s: float
    ) -> LevelOutcome:
        cpu_before, wall_before = _cpu_seconds(), time.perf_counter()
        # Collection pauses would land inside requests' timings; the engine
        # breaks its own reference cycles, so nothing piles up meanwhile.
        gc.disable()
        try:
            # asyncio.Runner turns Ctrl-C into a cancellation of the level,
            # which _level answers by keeping what finished.
            with asyncio.Runner(loop_factory=_new_loop) as runner:
                interrupted = runner.run(
                    _level(self.spec, records, rate, tick, every_s)
                )
        finally:
            gc.enable()
        return LevelOutcome(
            cpu_s=_cpu_seconds() - cpu_before,
            wall_s=time.perf_counter() - wall_before,
            workers=1,
            interrupted=interrupted,
        )

    def close(self) -> None:
        """Nothing to release: the event loop lives only as long as a level."""


class WorkerPool:
    """Runs each level across ``count`` worker processes started once per run."""

    def __init__(self, spec: LoadSpec, count: int) -> None:
        self.spec = spec
        self.workers = count
        self._links: list[Connection] = []
        self._processes: list[Any] = []
        # fork, not spawn: spawn re-imports the caller's main module, which
        # runs any script that lacks a __main__ guard a second time. No
        # event loop exists in this process while the pool starts.
        context = multiprocessing.get_context("fork")
        for _ in range(count):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=_worker_main, args=(theirs, spec), daemon=True
            )
            process.start()
            theirs.close()
            self._links.append(ours)
            self._processes.append(process)

    def run(
        self, records: LevelRecords, rate: float, tick: Tick, every_s: float
    ) -> LevelOutcome:
        shares = _shares(records.concurrency, len(records), self.workers)
        start_at = time.perf_counter() + _START_DELAY_S
        pending: dict[Connection, int] = {}
        for link, (concurrency, count, offset) in zip(
            self._links, shares, strict=False
        ):
            if concurrency and count:
                share_rate = rate * concurrency / records.concurrency
                link.send(
                    ("level", records.level, concurrency, count, share_rate, start_at)
                )
                pending[link] = offset
        records.origin = start_at
        progress = {link: (0, 0) for link in pending}
        cpu = 0.0
        interrupted = False
        failure: str | None = None
        next_tick = start_at + every_s
        while pending:
            try:
                ready = wait(
                    list(pending), timeout=max(0.0, next_tick - time.perf_counter())
                )
            except KeyboardInterrupt:
                # Workers ignore SIGINT; the parent tells them to stop and
                # still collects what they finished.
                interrupted = True
                for link in pending:
                    link.send(("stop",))
                continue
            for link in ready:
                message = link.recv()
                if message[0] == "tick":
                    progress[link] = message[1], message[2]
                    continue
                _, columns, worker_cpu, worker_interrupted, worker_failure = message
                records.place(pending.pop(link), columns)
                cpu += worker_cpu
                interrupted = interrupted or worker_interrupted
                failure = failure or worker_failure
            now = time.perf_counter()
            if pending and now >= next_tick:
                done = sum(done for done, _ in progress.values())
                failed = sum(failed for _, failed in progress.values())
                tick(done, failed, now - start_at)
                next_tick = now + every_s
        if failure:
            raise ClientExhausted(failure)
        return LevelOutcome(
            cpu_s=cpu,
            wall_s=time.perf_counter() - start_at,
            workers=len(progress),
            interrupted=interrupted,
        )

    def close(self) -> None:
        """Tell every worker to exit and wait for it."""
        for link in self._links:
            with contextlib.suppress(OSError):
                link.send(None)
        for process in self._processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()
        for link in self._links:
            link.close()


def _shares(
    concurrency: int, requests: int, workers: int
) -> list[tuple[int, int, int]]:
    """Split slots and requests over workers: (slots, requests, first index) each."""
    shares = []
    slots_before = 0
    for worker in range(workers):
        slots = concurrency // workers + (1 if worker < concurrency % workers else 0)
        first = requests * slots_before // concurrency
        slots_before += slots
        shares.append((slots, requests * slots_before // concurrency - first, first))
    return shares


async def _level(
    spec: LoadSpec,
    records: LevelRecords,
    rate: float,
    tick: Tick,
    every_s: float,
    origin: float | None = None,
    stop_link: Connection | None = None,
) -> bool:
    """Run one level in the current loop; True when it was cut short."""
    run = LevelRun(spec, records, rate)
    loop = run.loop
    task = asyncio.current_task()
    ticker = _Ticker(run, tick, every_s)
    if stop_link is not None:
        loop.add_reader(stop_link.fileno(), _stop_on_message, stop_link, task)
    try:
        await run.run(origin)
    except asyncio.CancelledError:
        task.uncancel()  # type: ignore[union-attr]
        return True
    finally:
        ticker.cancel()
        if stop_link is not None:
            loop.remove_reader(stop_link.fileno())
            # The event loop made the pipe non-blocking; the worker's next
            # recv() between levels must block again.
            os.set_blocking(stop_link.fileno(), True)
    return False


def _stop_on_message(link: Connection, task: asyncio.Task[Any]) -> None:
    link.recv()
    task.cancel()


class _Ticker:
    """Reports a level's progress every ``every_s`` seconds while it runs."""

    def __init__(self, run: LevelRun, tick: Tick, every_s: float) -> None:
        self.run = run
        self.tick = tick
        self.every_s = every_s
        self.handle = run.loop.call_later(every_s, self._fire)

    def _fire(self) -> None:
        run = self.run
        self.tick(run.done, run.failed, time.perf_counter() - run.origin)
        self.handle = run.loop.call_later(self.every_s, self._fire)

    def cancel(self) -> None:
        self.handle.cancel()


def _worker_main(link: Connection, spec: LoadSpec) -> None:
    """A worker process: run level shares as the parent sends them."""
    # Ctrl-C reaches the whole process group; only the parent acts on it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        message = link.recv()
        if message is None:
            return
        if message[0] != "level":
            # A stop that arrived after the share had already finished.
            continue
        _, level, concurrency, count, rate, start_at = message
        records = LevelRecords(level, concurrency, count)
        cpu_before = _cpu_seconds()
        failure = None
        interrupted = False

        def report(done: int, failed: int, elapsed: float) -> None:
            link.send(("tick", done, failed))

        gc.disable()
        try:
            with asyncio.Runner(loop_factory=_new_loop) as runner:
                interrupted = runner.run(
                    _level(spec, records, rate, report, 1.0, start_at, link)
                )
        except ClientExhausted as err:
            failure = err.message
        finally:
            gc.enable()
        link.send(
            ("done", records.dump(), _cpu_seconds() - cpu_before, interrupted, failure)
        )
