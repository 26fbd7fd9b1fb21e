"""Connection handling: reading request heads and writing JSON responses.

Both profiles share this handler; what differs between them is config:
deadlines on reads, one write or two per response, and whether a bad
request gets a clean 4xx or the stock behaviour.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import struct
import time
from email.utils import formatdate
from functools import lru_cache
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

from roxy_core import __version__
from roxy_core.exchange import DISCONNECTS, Exchange
from roxy_core.telemetry import ACCESS, ERROR

if TYPE_CHECKING:
    from roxy_core.server import RoxyServer

ROUTES: dict[str, dict[str, str]] = {
    "/health": {"GET": "health"},
    "/run": {"POST": "run"},
}
MAX_REQUEST_LINE = 65536
MAX_HEADER_LINE = 65536
MAX_HEADERS = 100
PHRASES = {status.value: status.phrase for status in HTTPStatus}
# How long, and how much, a refused client's remaining request is drained.
LINGER_S = 2.0
LINGER_BYTES = 8 * 1024 * 1024


class DeadlineSocketReader(io.RawIOBase):
    """Socket reads bounded by a deadline for the whole phase, not per recv.

    A per-recv timeout never fires on a client that trickles one byte a
    second; the header and body timeouts must bound the total instead.
    Until the first byte of a request arrives, the idle timeout applies.

    The socket stays in blocking mode and the remaining time goes into
    SO_RCVTIMEO. Python's own socket timeouts add a poll() before every
    recv and an ioctl on every change, each of which releases and retakes
    the GIL; under 50 concurrent connections that handoff, not the work,
    limited the request rate.
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock
        self._budget_s: float | None = None
        self._idle_s: float | None = None
        self._deadline: float | None = None
        self._armed_s: float | None = None
        self.received = 0

    def begin(self, budget_s: float | None, idle_s: float | None = None) -> None:
        """Start a phase whose budget runs from its first byte."""
        self._budget_s, self._idle_s = budget_s, idle_s
        self._deadline = None
        self.received = 0

    def begin_now(self, budget_s: float | None) -> None:
        """Start a phase whose budget runs from now."""
        self.begin(budget_s)
        if budget_s is not None:
            self._deadline = time.monotonic() + budget_s

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._deadline is None and self.received and self._budget_s is not None:
            self._deadline = time.monotonic() + self._budget_s
        if self._deadline is None:
            self._arm(self._idle_s)
        else:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("deadline passed")
            self._arm(remaining)
        try:
            count = self._sock.recv_into(buffer)
        except BlockingIOError:
            # SO_RCVTIMEO expired: recv reports EAGAIN on a blocking socket.
            raise TimeoutError("receive timed out") from None
        self.received += count
        return count

    def _arm(self, timeout_s: float | None) -> None:
        if timeout_s == self._armed_s:
            return
        seconds = 0.0 if timeout_s is None else max(timeout_s, 0.001)
        whole = int(seconds)
        timeval = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        self._armed_s = timeout_s


class SocketWriter(io.BufferedIOBase):
    """Whole writes straight to the socket, with no buffering in between."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._sock.sendall(data)
        return len(data)


class Headers(dict[str, str]):
    """Request headers by lower-cased name, first occurrence kept."""

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(name.lower(), default)


class RoxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"roxy-core/{__version__}"
    server: RoxyServer
    headers: Headers  # type: ignore[assignment]

    def setup(self) -> None:
        self.connection = self.request
        if self.server.config.single_write_responses:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = DeadlineSocketReader(self.connection)
        self.rfile = io.BufferedReader(self.reader)
        self.wfile = SocketWriter(self.connection)
        self.linger = False

    def finish(self) -> None:
        if self.linger:
            self._linger()
        super().finish()

    def _linger(self) -> None:
        """Read and drop what the client still sends after a refusal, briefly.

        A client sending a body we refused (413) is still writing when the
        answer goes out; closing at once resets the connection and its
        unread answer with it. Draining for a moment, as nginx's lingering
        close does, lets the client read why it was refused.
        """
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)
            self.reader.begin_now(LINGER_S)
            drained = 0
            while drained < LINGER_BYTES:
                chunk = self.rfile.read1(64 * 1024)
                if not chunk:
                    break
                drained += len(chunk)

    def handle_one_request(self) -> None:
        config = self.server.config
        self.reader.begin(config.header_timeout_s, config.keepalive_idle_s)
        self.close_connection = True
        try:
            self.raw_requestline = self.rfile.readline(MAX_REQUEST_LINE + 1)
            if not self.raw_requestline:
                return
            if config.validate_requests and self._cut_short():
                return
            if not self.parse_request():
                return
        except TimeoutError:
            self.close_connection = True
            if self.reader.received:
                self._timed_out("header")
            return
        self._dispatch()

    def _cut_short(self) -> bool:
        """True when the client closed halfway through its request line."""
        line = self.raw_requestline
        if line.endswith(b"\n") or len(line) > MAX_REQUEST_LINE:
            return False
        ACCESS.info(
            "client %s closed after %d bytes of a request line; nothing to answer",
            self.client_address[0],
            len(line),
        )
        return True

    def parse_request(self) -> bool:
        """Parse the request line and headers; answer and return False if bad.

        The standard handler parses headers with the email package, which cost
        more than everything else a fast-path request does; request heads
        need no more than lines split at the first colon.
        """
        self.command = ""
        self.request_version = "HTTP/1.0"
        self.requestline = self.raw_requestline.decode("iso-8859-1").rstrip("\r\n")
        if len(self.raw_requestline) > MAX_REQUEST_LINE:
            self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
            return False
        words = self.requestline.split()
        if len(words) != 3 or not words[2].startswith("HTTP/"):
            self.send_error(HTTPStatus.BAD_REQUEST, "malformed request line")
            return False
        self.command, self.path, version = words
        if version not in ("HTTP/1.0", "HTTP/1.1"):
            self.send_error(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, f"{version[:16]}")
            return False
        self.request_version = version
        headers = self._read_headers()
        if headers is None:
            return False
        self.headers = headers
        tokens = headers.get("connection", "").lower()
        if version == "HTTP/1.1":
            self.close_connection = "close" in tokens
        else:
            self.close_connection = "keep-alive" not in tokens
        if (
            headers.get("expect", "").lower() == "100-continue"
            and version == "HTTP/1.1"
        ):
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return True

    def _read_headers(self) -> Headers | None:
        headers = Headers()
        for _ in range(MAX_HEADERS):
            line = self.rfile.readline(MAX_HEADER_LINE + 1)
            if len(line) > MAX_HEADER_LINE:
                self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
                return None
            if line in (b"\r\n", b"\n"):
                return headers
            name, colon, value = line.decode("iso-8859-1").partition(":")
            if not line or not colon or not name or name != name.strip():
                # A closed connection, a line with no name, or folding and
                # padded names, which request smuggling relies on.
                self.send_error(HTTPStatus.BAD_REQUEST, "malformed header line")
                return None
            key, value = name.lower(), value.strip()
            if key in headers and key == "content-length" and headers[key] != value:
                self.send_error(HTTPStatus.BAD_REQUEST, "conflicting Content-Length")
                return None
            headers.setdefault(key, value)
        self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "too many headers")
        return None

    def _dispatch(self) -> None:
        path = self.path.partition("?")[0]
        methods = ROUTES.get(path)
        if methods is not None and self.command in methods:
            self.server.serve_exchange(Exchange(self, methods[self.command]))
        elif self.server.config.validate_requests and methods is not None:
            allow = ", ".join(methods)
            self.close_connection = True
            self.reply(
                HTTPStatus.METHOD_NOT_ALLOWED,
                f"{path} takes {allow}",
                [("Allow", allow)],
            )
        elif self.command in ("GET", "POST") or self.server.config.validate_requests:
            self.close_connection = True
            self.reply(HTTPStatus.NOT_FOUND, f"no route {path}")
        else:
            # What the stock handler answers for a method it has no do_X for.
            self.close_connection = True
            self.reply(HTTPStatus.NOT_IMPLEMENTED, f"unsupported method {self.command}")

    def _timed_out(self, phase: str) -> None:
        ERROR.info(
            "%s timeout from %s after %d bytes",
            phase.capitalize(),
            self.client_address[0],
            self.reader.received,
        )
        self.reply(HTTPStatus.REQUEST_TIMEOUT, f"request {phase} timeout")

    def send_error(
        self, code: int, message: str | None = None, explain: str | None = None
    ) -> None:
        self.close_connection = True
        self.reply(code, message or PHRASES.get(code, "error"))

    def reply(
        self, status: int, message: str, headers: list[tuple[str, str]] | None = None
    ) -> int:
        """Refuse a request with a JSON error; a client already gone is logged."""
        try:
            return self.write_json(
                status, {"status": "error", "error": message}, headers
            )
        except DISCONNECTS as err:
            self.close_connection = True
            if self.server.config.disconnect_logging == "traceback":
                raise
            ACCESS.info(
                "%s: client %s disconnected before its %d answer",
                type(err).__name__,
                self.client_address[0],
                status,
            )
            return 0

    def write_json(
        self,
        status: int,
        payload: dict[str, Any],
        headers: list[tuple[str, str]] | None = None,
    ) -> int:
        """Send one JSON response; return the body size."""
        if self.server.draining:
            self.close_connection = True
        body = json.dumps(payload, separators=(",", ":")).encode() + b"\n"
        fields = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            *(headers or ()),
        ]
        if self.close_connection:
            fields.append(("Connection", "close"))
            # A refusal may leave the client mid-body: drain before closing.
            self.linger = status >= 400 and self.server.config.validate_requests
        elif self.request_version == "HTTP/1.0":
            # An HTTP/1.0 client assumes close unless told otherwise.
            fields.append(("Connection", "keep-alive"))
        if self.server.config.single_write_responses:
            self.wfile.write(self._head(status, fields) + body)
        else:
            # Headers and body as two writes, as the stock handler does; with
            # Nagle on, the body waits for the client's delayed ACK.
            self.send_response(status)
            for name, value in fields:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        return len(body)

    def _head(self, status: int, fields: list[tuple[str, str]]) -> bytes:
        lines = [
            f"HTTP/1.1 {status} {PHRASES.get(status, '')}",
            f"Server: {self.server_version}",
            f"Date: {http_date()}",
            *(f"{name}: {value}" for name, value in fields),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def log_message(self, format: str, *args: Any) -> None:
        # The stock handler's access line; the telemetry lines replace it.
        ACCESS.debug("%s " + format, self.client_address[0], *args)


def http_date() -> str:
    """The Date header, formatted once a second rather than per response."""
    return _http_date(int(time.time()))


@lru_cache(maxsize=2)
def _http_date(second: int) -> str:
    return formatdate(second, usegmt=True)
