"""roxy-core's HTTP server: ``POST /run`` and ``GET /health`` over HTTP/1.1.

Both profiles run on the standard library's ``ThreadingHTTPServer`` so that
the legacy profile keeps the original service's faults exactly (listen
backlog 5, a subprocess per command, errors on vanished clients) and the
patched profile shows what fixing each of them alone changes.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from pathlib import Path
from queue import SimpleQueue
from typing import Any

from roxy_core import __version__, commands, telemetry
from roxy_core.config import ConfigError, ServiceConfig, load_config, profile_path
from roxy_core.exchange import Exchange
from roxy_core.handler import RoxyHandler
from roxy_core.ratelimit import TokenBuckets
from roxy_core.telemetry import ERROR


class RequestCounters:
    """Request totals for the ``status`` command, safe across handler threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._counts = {
            "total": 0,
            "ok": 0,
            "client_errors": 0,
            "server_errors": 0,
            "rate_limited": 0,
            "disconnects": 0,
        }
        self.in_flight = 0

    def started(self) -> None:
        with self._lock:
            self._counts["total"] += 1
            self.in_flight += 1

    def finished(self, status: int, disconnected: bool) -> None:
        with self._lock:
            self.in_flight -= 1
            if disconnected:
                self._counts["disconnects"] += 1
            elif status == HTTPStatus.TOO_MANY_REQUESTS:
                self._counts["rate_limited"] += 1
            elif status < 400:
                self._counts["ok"] += 1
            elif status < 500:
                self._counts["client_errors"] += 1
            else:
                self._counts["server_errors"] += 1
            if self.in_flight == 0:
                self._idle.notify_all()

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {**self._counts, "in_flight": self.in_flight}

    def wait_idle(self, timeout_s: float) -> int:
        """Wait for in-flight requests to finish; return how many remain."""
        with self._lock:
            self._idle.wait_for(lambda: self.in_flight == 0, timeout=timeout_s)
            return self.in_flight


class HandlerPool:
    """Handler threads that outlive their connection, up to a limit.

    Starting a thread per connection costs a GIL handoff while the accept
    loop waits for the new thread to run; reusing threads removes it from
    the accept path. Past the limit, accepted connections wait their turn
    here rather than in the kernel's accept queue.
    """

    # Threads started before the first connection, so a burst of new clients
    # right after start-up does not wait for threads to be born.
    PRESTART = 32

    def __init__(self, limit: int, work: Callable[[Any, Any], None]) -> None:
        self._limit = limit
        self._work = work
        self._queue: SimpleQueue[tuple[Any, Any]] = SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        # Idle threads minus connections not yet picked up.
        self._spare = 0
        for _ in range(min(limit, self.PRESTART)):
            with self._lock:
                self._spare += 1
            self._start_thread()

    def submit(self, request: Any, client_address: Any) -> None:
        with self._lock:
            grow = self._spare <= 0 and self._threads < self._limit
            if not grow:
                self._spare -= 1
        self._queue.put((request, client_address))
        if grow:
            self._start_thread()

    def _start_thread(self) -> None:
        with self._lock:
            self._threads += 1
            name = f"handler-{self._threads}"
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def _serve(self) -> None:
        while True:
            request, client_address = self._queue.get()
            self._work(request, client_address)
            with self._lock:
                self._spare += 1


class RoxyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        # socketserver passes this to listen(); the legacy profile's 5 is the
        # class default it inherited.
        self.request_queue_size = config.effective_backlog()
        self.counters = RequestCounters()
        self.started_at = time.time()
        self.draining = False
        limit = config.rate_limit
        self.limiter = (
            TokenBuckets(limit.rate_per_s, limit.burst) if limit.enabled else None
        )
        self.pool = (
            HandlerPool(config.worker_threads, self.process_request_thread)
            if config.worker_threads
            else None
        )
        super().__init__((config.host, config.port), RoxyHandler)

    def shutdown_request(self, request: Any) -> None:
        # The handler holds no second reference to the socket, so close()
        # alone sends the FIN; the stock shutdown(SHUT_WR) first is one more
        # syscall, and GIL handoff, per connection.
        request.close()

    def process_request(self, request: Any, client_address: Any) -> None:
        if self.pool is None:
            # The original service: a new thread for every connection.
            super().process_request(request, client_address)
        else:
            self.pool.submit(request, client_address)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def context(self) -> commands.Context:
        return commands.Context(
            profile=self.config.profile,
            pid=os.getpid(),
            started_at=self.started_at,
            sleep_cap_s=self.config.sleep_cap_s,
            counters=self.counters.snapshot(),
        )

    def serve_exchange(self, exchange: Exchange) -> None:
        self.counters.started()
        # A request that raised is counted as the 500 it would have been.
        status = HTTPStatus.INTERNAL_SERVER_ERROR
        try:
            status = exchange.run()
        finally:
            self.counters.finished(status, exchange.disconnected)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The stock version prints to stderr behind logging's back; route it
        # to the error channel so journald and the log file both carry it.
        ERROR.exception("Exception while handling a request from %s", client_address[0])


def notify_systemd(state: str) -> None:
    """Tell the service manager about readiness or stopping, if it listens."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    try:
        from systemd import daemon
    except ImportError:
        ERROR.warning(
            "NOTIFY_SOCKET is set but systemd-python is missing "
            "(pip install 'roxy-triage[systemd]'); systemd will not see %s",
            state.splitlines()[0],
        )
        return
    daemon.notify(state)


def serve(server: RoxyServer) -> int:
    config = server.config
    if config.drain_timeout_s is None:
        # The original service: SIGTERM's default action ends the process with
        # whatever was in flight.
        server.serve_forever()
        return 0
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    loop = threading.Thread(
        target=server.serve_forever, name="accept-loop", daemon=True
    )
    loop.start()
    stop.wait()
    return drain(server, config.drain_timeout_s)


def drain(server: RoxyServer, timeout_s: float) -> int:
    """Stop accepting, let in-flight requests finish, then return the exit code."""
    notify_systemd("STOPPING=1")
    server.draining = True
    server.shutdown()
    # Closing the listening socket makes the kernel refuse new connections
    # instead of queueing them behind a server that will not accept them.
    server.socket.close()
    ERROR.info(
        "Stopping: no new connections; draining %d in-flight requests (up to %ss)",
        server.counters.snapshot()["in_flight"],
        timeout_s,
    )
    left = server.counters.wait_idle(timeout_s)
    if left:
        ERROR.warning(
            "Stopped with %d requests still in flight after %ss", left, timeout_s
        )
    else:
        ERROR.info("Stopped: all in-flight requests drained")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="roxy-core", description=__doc__.splitlines()[0]
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--profile", default="patched", help="bundled profile: legacy or patched"
    )
    source.add_argument("--config", type=Path, help="a profile file of your own")
    parser.add_argument("--host", help="address to listen on (overrides the profile)")
    parser.add_argument(
        "--port", type=int, help="port to listen on; 0 picks a free one"
    )
    parser.add_argument("--log-file", help="also write the log here")
    parser.add_argument(
        "--check", action="store_true", help="check the config and exit"
    )
    parser.add_argument(
        "--version", action="version", version=f"roxy-core {__version__}"
    )
    return parser.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> ServiceConfig:
    path = args.config if args.config is not None else profile_path(args.profile)
    config = load_config(path)
    overrides = {
        key: value
        for key, value in (
            ("host", args.host),
            ("port", args.port),
            ("log_file", args.log_file),
        )
        if value is not None
    }
    if "port" in overrides and not 0 <= overrides["port"] <= 65535:
        raise ConfigError(f"--port must be 0 to 65535, got {overrides['port']}")
    return replace(config, **overrides)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = resolve_config(args)
    except ConfigError as err:
        print(f"roxy-core: {err}", file=sys.stderr)
        return 2
    if args.check:
        print(f"roxy-core: config OK (profile {config.profile})")
        return 0
    telemetry.configure(config.log_level, config.log_file)
    try:
        server = RoxyServer(config)
    except OSError as err:
        print(
            f"roxy-core: cannot listen on {config.host}:{config.port}: {err.strerror}",
            file=sys.stderr,
        )
        return 1
    ERROR.info(
        "Listening on %s:%d (profile %s, backlog %d, pid %d)",
        config.host,
        server.port,
        config.profile,
        server.request_queue_size,
        os.getpid(),
    )
    where = f"{config.host}:{server.port}"
    notify_systemd(f"READY=1\nSTATUS=listening on {where}\nMAINPID={os.getpid()}")
    return serve(server)


if __name__ == "__main__":
    sys.exit(main())
