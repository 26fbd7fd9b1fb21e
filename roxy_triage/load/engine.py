"""The load client: one level of requests over asyncio protocols.

A level has C slots. Each slot carries one request at a time and, when it
finishes, takes the next request number at once (closed loop) or at that
request's arrival time (open loop). Nothing is retried: every request ends
in exactly one record, success or one error class.

The hot path is callbacks, not coroutines: a response completes in
``data_received``, is recorded, and the slot's next request is written from
the same callback. Per-request timeouts are enforced by one sweep over the
slots a few times a second instead of a timer per request.
"""

from __future__ import annotations

import asyncio
import errno
import math
import time
from dataclasses import dataclass

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from roxy_triage.errors import TriageError
from roxy_triage.load.endpoint import Endpoint
from roxy_triage.load.records import (
    BROKEN_PIPE,
    CONNECT_TIMEOUT,
    EMPTY_REPLY,
    PROTOCOL,
    READ_TIMEOUT,
    REFUSED,
    RESET,
    LevelRecords,
    status_error,
)

perf_counter = time.perf_counter
NAN = math.nan

# Failures of the client itself, not of the target: recording them as the
# target's errors would blame the service for the load generator's limits.
_CLIENT_ERRNOS = {
    errno.EMFILE: "open files (raise `ulimit -n`)",
    errno.ENFILE: "open files system-wide",
    errno.EADDRNOTAVAIL: "local ports (see net.ipv4.ip_local_port_range)",
    errno.ENOBUFS: "socket buffers",
    errno.ENOMEM: "memory",
}
# No route to the address: as far as the client can tell, nothing answers.
_UNREACHABLE_ERRNOS = {
    errno.ENETUNREACH,
    errno.EHOSTUNREACH,
    errno.ENETDOWN,
    errno.EHOSTDOWN,
}


class ClientExhausted(TriageError):
    """The load client ran out of a local resource; its results would lie."""


@dataclass(frozen=True)
class LoadSpec:
    """What every request of a run is: its target, its bytes, how long it may take."""

    endpoint: Endpoint
    request: bytes
    timeout_s: float
    keep_alive: bool
    # A response to HEAD announces a body it never sends.
    head_only: bool = False


class LevelRun:
    """One level: ``records.concurrency`` slots sending ``len(records)`` requests."""

    def __init__(
        self, spec: LoadSpec, records: LevelRecords, rate: float = 0.0
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.endpoint = spec.endpoint
        self.request = spec.request
        self.timeout_s = spec.timeout_s
        self.keep_alive = spec.keep_alive
        self.head_only = spec.head_only
        self.records = records
        self.concurrency = records.concurrency
        self.planned = len(records)
        self.rate = rate
        self.origin = 0.0
        self.next_index = 0
        self.done = 0
        self.failed = 0
        self.stopped = False
        self.slots: list[_Exchange | None] = [None] * self.concurrency
        self.active = 0
        self.finished: asyncio.Future[None] = self.loop.create_future()
        self._timers: list[asyncio.TimerHandle | None] = [None] * self.concurrency
        self._sweeper: asyncio.TimerHandle | None = None
        # Fine enough that a timeout fires within a tenth of itself, coarse
        # enough that the sweep costs nothing next to the requests.
        self._sweep_every = min(0.1, max(0.005, spec.timeout_s / 10))

    async def run(self, origin: float | None = None) -> None:
        """Send every planned request; on cancellation, drop what is in flight.

        ``origin`` is the level's start on the monotonic clock when several
        worker processes share a level and must start together.
        """
        if origin is not None:
            await asyncio.sleep(max(0.0, origin - perf_counter()))
        self.records.origin = self.origin = perf_counter() if origin is None else origin
        self.active = self.concurrency
        for slot in range(self.concurrency):
            self.begin(slot, None)
        self._sweeper = self.loop.call_later(self._sweep_every, self._sweep)
        try:
            await self.finished
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop sending; abandon requests in flight without recording them."""
        self.stopped = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for timer in self._timers:
            if timer is not None:
                timer.cancel()
        for exchange in self.slots:
            if exchange is not None:
                exchange.drop()

    def begin(self, slot: int, exchange: _Exchange | None) -> None:
        """Start the slot's next request, on ``exchange`` if it can carry one."""
        index = self.next_index
        if index >= self.planned or self.stopped:
            self._slot_done()
            return
        self.next_index = index + 1
        if not self.rate:
            self.send(slot, exchange, index, NAN)
            return
        intended = self.origin + index / self.rate
        delay = intended - perf_counter()
        if delay > 0:
            self._timers[slot] = self.loop.call_later(
                delay, self.send, slot, exchange, index, intended
            )
        else:
            # Late: the arrival was due while every slot was busy. Its latency
            # still counts from when it was due, so a stalled server cannot
            # hide its stall by holding the client back.
            self.send(slot, exchange, index, intended)

    def send(
        self, slot: int, exchange: _Exchange | None, index: int, intended: float
    ) -> None:
        """Send request ``index`` now, on a new connection unless one is reusable."""
        if self.stopped:
            self._slot_done()
            return
        start = perf_counter()
        if intended != intended:
            intended = start
        if exchange is not None and exchange.reusable():
            exchange.send(index, intended, start)
            return
        exchange = self.slots[slot] = _Exchange(self, slot)
        exchange.open(index, intended, start)

    def store(
        self,
        index: int,
        exchange: _Exchange,
        end: float,
        status: int,
        code: int,
    ) -> None:
        """Write one finished request into the level's columns."""
        records = self.records
        records.intended[index] = exchange.intended
        records.start[index] = exchange.start
        records.connect[index] = exchange.connected
        records.first_byte[index] = exchange.first_byte
        records.end[index] = end
        records.status[index] = status
        records.bytes[index] = exchange.received
        records.error[index] = code
        self.done += 1
        if code:
            self.failed += 1

    def fail(self, err: ClientExhausted) -> None:
        """End the level early: the client, not the target, cannot go on."""
        if not self.finished.done():
            self.finished.set_exception(err)

    def _slot_done(self) -> None:
        self.active -= 1
        if self.active == 0 and not self.finished.done():
            self.finished.set_result(None)

    def _sweep(self) -> None:
        limit = perf_counter() - self.timeout_s
        for exchange in self.slots:
            if exchange is not None and exchange.index >= 0 and exchange.start < limit:
                # The timeout covers connect and response together; which of
                # the two it caught is what the on-call engineer needs.
                connecting = exchange.transport is None
                exchange.abandon(CONNECT_TIMEOUT if connecting else READ_TIMEOUT)
        self._sweeper = self.loop.call_later(self._sweep_every, self._sweep)


class _Exchange(asyncio.Protocol):
    """One connection of a slot and the request it carries, if any."""

    __slots__ = (
        "connected",
        "connecting",
        "first_byte",
        "head",
        "headers_done",
        "index",
        "intended",
        "level",
        "parser",
        "received",
        "slot",
        "start",
        "transport",
    )

    def __init__(self, level: LevelRun, slot: int) -> None:
        self.level = level
        self.slot = slot
        self.transport: asyncio.Transport | None = None
        self.connecting: asyncio.Task[object] | None = None
        self.parser = HttpResponseParser(self)
        self.index = -1
        self.intended = self.start = self.connected = self.first_byte = NAN
        self.received = 0
        self.head = b""
        self.headers_done = False

    # -- the slot's side ---------------------------------------------------

    def open(self, index: int, intended: float, start: float) -> None:
        """Connect, then send request ``index`` from ``connection_made``."""
        self._prepare(index, intended, start)
        level = self.level
        endpoint = level.endpoint
        connect = level.loop.create_connection(
            self._itself, endpoint.address, endpoint.port, family=endpoint.family
        )
        self.connecting = level.loop.create_task(connect)
        self.connecting.add_done_callback(self._connect_done)

    def send(self, index: int, intended: float, start: float) -> None:
        """Send request ``index`` on this already open connection."""
        self._prepare(index, intended, start)
        self.connected = NAN
        self.transport.write(self.level.request)  # type: ignore[union-attr]

    def reusable(self) -> bool:
        transport = self.transport
        return transport is not None and not transport.is_closing()

    def abandon(self, code: int) -> None:
        """End the request in flight with error ``code``; drop the connection."""
        self._finish(code, 0)
        self.drop()
        self.level.begin(self.slot, None)

    def drop(self) -> None:
        """Close the connection at once, recording nothing."""
        self.index = -1
        if self.connecting is not None:
            self.connecting.cancel()
            self._release()
        if self.transport is not None:
            self.transport.abort()
            self.transport = None

    def _release(self) -> None:
        # The parser holds this exchange's callbacks and the exchange holds
        # the parser: breaking the cycle by hand frees the pair at once, so
        # the level can run with the cyclic garbage collector paused.
        self.parser = _NO_PARSER

    def _prepare(self, index: int, intended: float, start: float) -> None:
        self.index = index
        self.intended = intended
        self.start = start
        self.first_byte = NAN
        self.received = 0
        self.head = b""
        self.headers_done = False

    def _finish(self, code: int, status: int) -> None:
        index = self.index
        self.index = -1
        self.level.store(index, self, perf_counter(), status, code)

    def _itself(self) -> _Exchange:
        return self

    def _connect_done(self, task: asyncio.Task[object]) -> None:
        self.connecting = None
        if task.cancelled():
            return
        err = task.exception()
        if err is None or self.index < 0:
            return
        self._release()
        code = _connect_error(err)
        if code is None:
            self.index = -1
            self.level.fail(_exhausted(err))
            return
        self._finish(code, 0)
        self.level.begin(self.slot, None)

    # -- asyncio's side ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.index < 0:
            # The request timed out while the handshake was finishing.
            transport.abort()
            return
        self.transport = transport  # type: ignore[assignment]
        self.connected = perf_counter()
        transport.write(self.level.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.index < 0:
            # Bytes nobody asked for on an idle connection (a server's 408 on
            # a keep-alive connection, say): no request owns them.
            self.drop()
            return
        if not self.headers_done:
            if self.received:
                self.head += data
            else:
                self.first_byte = perf_counter()
                self.head = data
        self.received += len(data)
        try:
            self.parser.feed_data(data)
        except (HttpParserError, HttpParserUpgrade):
            if self.index >= 0:
                self.abandon(PROTOCOL)

    def on_headers_complete(self) -> None:
        self.headers_done = True
        if self.level.head_only:
            # A response to HEAD announces a body it does not send; the parser
            # cannot know that, so the answer is complete here and the next
            # response gets a fresh parser.
            self.on_message_complete()
            self.parser = HttpResponseParser(self)

    def on_message_complete(self) -> None:
        if self.index < 0:
            return
        parser = self.parser
        status = parser.get_status_code()
        if status < 200:
            # An interim answer (100 Continue); the final one follows.
            self.head = b""
            self.headers_done = False
            return
        self._finish(status_error(status), status)
        if self.level.keep_alive and parser.should_keep_alive():
            self.level.begin(self.slot, self)
            return
        self.transport.close()  # type: ignore[union-attr]
        self.transport = None
        self.level.begin(self.slot, None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.index >= 0:
            self._lost(exc)
        self._release()

    def _lost(self, exc: Exception | None) -> None:
        status = 0
        if exc is not None:
            code = _transfer_error(exc)
        elif not self.received:
            code = EMPTY_REPLY
        elif self.headers_done and _body_ends_at_close(self.head):
            status = self.parser.get_status_code()
            code = status_error(status)
        else:
            # Closed part-way through a response that said how long it was.
            code = PROTOCOL
        self._finish(code, status)
        self.level.begin(self.slot, None)


def _connect_error(err: BaseException) -> int | None:
    """The error class of a failed connect; None when the client is at fault."""
    if isinstance(err, ConnectionRefusedError):
        return REFUSED
    if isinstance(err, (ConnectionResetError, ConnectionAbortedError)):
        return RESET
    if isinstance(err, BrokenPipeError):
        return BROKEN_PIPE
    if isinstance(err, TimeoutError):
        # The kernel gave up on its SYN retries before our own timeout.
        return CONNECT_TIMEOUT
    if isinstance(err, OSError) and err.errno in _UNREACHABLE_ERRNOS:
        return REFUSED
    return None


def _transfer_error(err: BaseException) -> int:
    """The error class of a connection lost while a request was in flight."""
    if isinstance(err, BrokenPipeError):
        return BROKEN_PIPE
    if isinstance(err, TimeoutError):
        return READ_TIMEOUT
    return RESET


def _exhausted(err: BaseException) -> ClientExhausted:
    number = getattr(err, "errno", None)
    what = _CLIENT_ERRNOS.get(number or 0)
    if what:
        return ClientExhausted(f"the load client ran out of {what}: {err}")
    return ClientExhausted(f"the load client could not connect: {err!r}")


class _HeaderNames:
    """Collects the header names of one response, for ``_body_ends_at_close``."""

    def __init__(self) -> None:
        self.names: set[bytes] = set()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.names.add(name.lower())


def _body_ends_at_close(head: bytes) -> bool:
    """True when a response has neither Content-Length nor chunked framing.

    Such a body legitimately ends when the server closes the connection.
    httptools does not expose llhttp's end-of-input call, so on that rare
    path the response head is parsed once more to see how it was framed.
    """
    names = _HeaderNames()
    try:
        HttpResponseParser(names).feed_data(head)
    except HttpParserError:
        return False
    return not names.names & {b"content-length", b"transfer-encoding"}


_NO_PARSER = HttpResponseParser(_HeaderNames())
