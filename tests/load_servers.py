"""Small misbehaving HTTP servers on loopback, one fault each, for the load tests."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable

# A connection's script: gets the accepted socket, the server, and the number
# of the connection (0 for the first).
Script = Callable[[socket.socket, "ScriptedServer", int], None]

OK_BODY = b'{"ok": true}'
OK = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(OK_BODY), OK_BODY)
)


class ScriptedServer:
    """A threaded loopback listener that runs one script per connection."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/run"
        self.closing = threading.Event()
        self.requests = 0
        self._lock = threading.Lock()
        self._connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        number = 0
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self._connections.append(connection)
            threading.Thread(
                target=self._run, args=(connection, number), daemon=True
            ).start()
            number += 1

    def _run(self, connection: socket.socket, number: int) -> None:
        # The client hanging up mid-script is part of several scripts' point.
        with contextlib.suppress(OSError):
            self.script(connection, self, number)

    def read_request(self, connection: socket.socket) -> bool:
        """Read one whole request; False when the client closed first."""
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = connection.recv(65536)
            if not chunk:
                return False
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            chunk = connection.recv(65536)
            if not chunk:
                return False
            body += chunk
        with self._lock:
            self.requests += 1
        return True

    def hold(self, connection: socket.socket) -> None:
        """Keep a connection open, silent, until the test ends."""
        self.closing.wait()

    def close(self) -> None:
        self.closing.set()
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for connection in self._connections:
            connection.close()
        self._thread.join(timeout=5)


def answer(payload: bytes) -> Script:
    """Answer every request of a connection with ``payload``, keep-alive."""

    def script(connection: socket.socket, server: ScriptedServer, number: int) -> None:
        while server.read_request(connection):
            connection.sendall(payload)

    return script


def reset(connection: socket.socket, server: ScriptedServer, number: int) -> None:
    """Read the request, then abort the connection with an RST."""
    server.read_request(connection)
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()


def close_silently(
    connection: socket.socket, server: ScriptedServer, number: int
) -> None:
    """Read the request, then close cleanly without a byte of answer."""
    server.read_request(connection)
    connection.close()


def one_answer_then_half_close(
    connection: socket.socket, server: ScriptedServer, number: int
) -> None:
    """Answer one request as keep-alive, then stop talking (FIN).

    The client has already sent its next request on the connection when the
    FIN reaches it: the stale keep-alive connection every client meets.
    """
    server.read_request(connection)
    connection.sendall(OK)
    connection.shutdown(socket.SHUT_WR)
    server.read_request(connection)
    connection.close()


def stall(connection: socket.socket, server: ScriptedServer, number: int) -> None:
    """Read the request and never answer."""
    server.read_request(connection)
    server.hold(connection)


def answer_first(count: int) -> Script:
    """Answer the first ``count`` requests of the server, then stall."""

    def script(connection: socket.socket, server: ScriptedServer, number: int) -> None:
        while server.read_request(connection):
            if server.requests > count:
                server.hold(connection)
                return
            connection.sendall(OK)

    return script


def stall_first(seconds: float) -> Script:
    """Hold the very first request for ``seconds``; answer the rest at once."""

    def script(connection: socket.socket, server: ScriptedServer, number: int) -> None:
        while server.read_request(connection):
            if server.requests == 1:
                server.closing.wait(seconds)
            connection.sendall(OK)

    return script


def chunked(connection: socket.socket, server: ScriptedServer, number: int) -> None:
    """Answer with a chunked body written in separate pieces, keep-alive."""
    while server.read_request(connection):
        connection.sendall(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        connection.sendall(b"6\r\n world\r\n")
        connection.sendall(b"0\r\n\r\n")


def body_until_close(
    connection: socket.socket, server: ScriptedServer, number: int
) -> None:
    """Answer with a body framed only by the end of the connection."""
    server.read_request(connection)
    connection.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
    connection.close()


def truncated(connection: socket.socket, server: ScriptedServer, number: int) -> None:
    """Promise 100 bytes of body, send 10, close."""
    server.read_request(connection)
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
    connection.close()


def answer_and_close(
    connection: socket.socket, server: ScriptedServer, number: int
) -> None:
    """Answer one request with Connection: close, then close."""
    server.read_request(connection)
    connection.sendall(
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    )
    connection.close()


class FullBacklog:
    """A listener whose accept queue is full: new SYNs are dropped, unanswered.

    listen(0) admits one connection to the accept queue and it never accepts;
    a few non-blocking connects fill it, and any further handshake waits on
    SYN retransmissions (1 s, 3 s, ...) that the test's timeout cuts short.
    """

    def __init__(self) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/run"
        self.fillers = []
        for _ in range(3):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", self.port))
            self.fillers.append(filler)

    def close(self) -> None:
        for filler in self.fillers:
            filler.close()
        self.listener.close()
