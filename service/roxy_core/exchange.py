"""One request on ``/run`` or ``/health``: limit, read, route, run, answer, log."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from dataclasses import asdict
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from roxy_core import commands
from roxy_core.ratelimit import retry_after_header
from roxy_core.telemetry import ACCESS, ERROR

if TYPE_CHECKING:
    from roxy_core.handler import RoxyHandler

DISCONNECTS = (BrokenPipeError, ConnectionResetError)


class Refused(Exception):
    """A request answered with an error status before any command ran."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Exchange:
    """One request, from its first telemetry line to its last."""

    def __init__(self, handler: RoxyHandler, route: str) -> None:
        self.handler = handler
        self.route_name = route
        self.server = handler.server
        self.config = handler.server.config
        # Eight hex digits as in the reference log format; getrandbits needs no
        # syscall, unlike uuid4, so the id costs no GIL handoff.
        self.request_id = f"{random.getrandbits(32):08x}"
        self.client = handler.client_address[0]
        self.started = time.perf_counter()
        self.route = "rejected"
        self.subprocess_ms = 0
        self.extra_headers: list[tuple[str, str]] = []
        self.disconnected = False

    def elapsed_ms(self) -> int:
        return round((time.perf_counter() - self.started) * 1000)

    def run(self) -> int:
        """Answer the request; return the HTTP status sent."""
        ACCESS.info("[%s] Request start from %s", self.request_id, self.client)
        try:
            status, payload = self._answer()
        except Refused as refusal:
            status, payload = refusal.status, {"status": "error", "error": str(refusal)}
        return self._send(status, payload)

    def _answer(self) -> tuple[int, dict[str, Any]]:
        limit = self.config.rate_limit
        if not limit.exempt_fast_path:
            # The original limiter ran before anything else, on every route;
            # the body stays unread, so the connection cannot carry another.
            self._check_rate_limit(close=True)
        command = "health" if self.route_name == "health" else self._read_command()
        ACCESS.info("[%s] Command: %s", self.request_id, command[:100])
        try:
            name, args = commands.parse(command)
        except commands.CommandError as err:
            raise Refused(HTTPStatus.BAD_REQUEST, str(err)) from None
        if limit.exempt_fast_path and name not in commands.FAST_PATH:
            self._check_rate_limit(close=False)
        return self._execute(name, args)

    def _check_rate_limit(self, close: bool) -> None:
        limiter = self.server.limiter
        if limiter is None:
            return
        wait_s = limiter.admit(self.client)
        if wait_s <= 0:
            return
        ACCESS.info(
            "[%s] Rate limited: %s, next token in %.0fms",
            self.request_id,
            self.client,
            wait_s * 1000,
        )
        if close:
            self.handler.close_connection = True
        if self.config.rate_limit.retry_after:
            self.extra_headers.append(("Retry-After", retry_after_header(wait_s)))
        raise Refused(HTTPStatus.TOO_MANY_REQUESTS, "rate limited")

    def _read_command(self) -> str:
        """The command from the JSON body."""
        body = self._read_body()
        if not self.config.validate_requests:
            # The original service trusted its clients: a bad body raises here
            # and surfaces as a traceback with no response.
            return str(json.loads(body)["command"])
        try:
            document = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise Refused(HTTPStatus.BAD_REQUEST, f"malformed JSON: {err}") from None
        if not isinstance(document, dict) or not isinstance(
            document.get("command"), str
        ):
            raise Refused(
                HTTPStatus.BAD_REQUEST,
                "body must be a JSON object with a string 'command'",
            )
        return document["command"]

    def _read_body(self) -> bytes:
        handler = self.handler
        declared = handler.headers.get("content-length")
        if declared is None:
            if self.config.validate_requests:
                raise Refused(
                    HTTPStatus.LENGTH_REQUIRED, "a body with Content-Length is required"
                )
            declared = "0"
        if not declared.isdigit():
            handler.close_connection = True
            raise Refused(
                HTTPStatus.BAD_REQUEST, f"bad Content-Length {declared[:32]!r}"
            )
        length = int(declared)
        limit = self.config.max_body_bytes
        if limit is not None and length > limit:
            handler.close_connection = True
            raise Refused(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"body of {length} bytes is over the {limit}-byte limit",
            )
        handler.reader.begin_now(self.config.body_timeout_s)
        body = bytearray()
        try:
            # read1 in a loop rather than read(length), so a timeout still
            # knows how much of the body had arrived.
            while len(body) < length:
                chunk = handler.rfile.read1(length - len(body))
                if not chunk:
                    break
                body += chunk
        except TimeoutError:
            handler.close_connection = True
            ERROR.info(
                "[%s] Body timeout from %s after %d of %d bytes",
                self.request_id,
                self.client,
                len(body),
                length,
            )
            raise Refused(HTTPStatus.REQUEST_TIMEOUT, "request body timeout") from None
        if len(body) < length:
            handler.close_connection = True
            raise Refused(HTTPStatus.BAD_REQUEST, "body ended before Content-Length")
        return bytes(body)

    def _execute(self, name: str, args: str) -> tuple[int, dict[str, Any]]:
        if self.config.fast_path and name in commands.FAST_PATH:
            self.route = "ping_fastpath"
        elif self.config.subprocess_all:
            self.route = "subprocess"
            return self._execute_in_subprocess(name, args)
        else:
            self.route = "in_process"
        try:
            result = commands.run(name, args, self.server.context())
        except commands.CommandError as err:
            raise Refused(HTTPStatus.BAD_REQUEST, str(err)) from None
        finally:
            self._log_route()
        return HTTPStatus.OK, {"status": "ok", "command": name, "result": result}

    def _execute_in_subprocess(
        self, name: str, args: str
    ) -> tuple[int, dict[str, Any]]:
        context = json.dumps(asdict(self.server.context()))
        argv = [sys.executable, "-m", "roxy_core.commands", context, name]
        if args:
            argv.append(args)
        began = time.perf_counter()
        try:
            child = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                check=False,
                timeout=self.config.command_timeout_s,
            )
        except subprocess.TimeoutExpired:
            raise Refused(HTTPStatus.GATEWAY_TIMEOUT, f"{name} timed out") from None
        finally:
            self.subprocess_ms = round((time.perf_counter() - began) * 1000)
            self._log_route()
        try:
            outcome = json.loads(child.stdout)
        except json.JSONDecodeError:
            ERROR.error(
                "[%s] Command %s exited %d: %s",
                self.request_id,
                name,
                child.returncode,
                child.stderr.strip()[-2000:],
            )
            return HTTPStatus.INTERNAL_SERVER_ERROR, {
                "status": "error",
                "error": f"{name} failed",
            }
        if "error" in outcome:
            raise Refused(HTTPStatus.BAD_REQUEST, outcome["error"])
        return HTTPStatus.OK, {
            "status": "ok",
            "command": name,
            "result": outcome["result"],
        }

    def _log_route(self) -> None:
        if self.route == "subprocess":
            ACCESS.info(
                "[%s] Route: subprocess (subprocess: %dms)",
                self.request_id,
                self.subprocess_ms,
            )
        else:
            ACCESS.info("[%s] Route: %s (no subprocess)", self.request_id, self.route)

    def _send(self, status: int, payload: dict[str, Any]) -> int:
        payload["request_id"] = self.request_id
        try:
            size = self.handler.write_json(status, payload, self.extra_headers)
        except DISCONNECTS as err:
            self.handler.close_connection = True
            self.disconnected = True
            if self.config.disconnect_logging == "traceback":
                # The original service let this reach socketserver, which
                # logged it as an error with its traceback.
                raise
            ACCESS.info(
                "[%s] %s: client disconnected after %dms",
                self.request_id,
                type(err).__name__,
                self.elapsed_ms(),
            )
            return status
        ACCESS.info(
            "[%s] Complete: route=%s, total=%dms, subprocess=%dms, size=%db, status=%d",
            self.request_id,
            self.route,
            self.elapsed_ms(),
            self.subprocess_ms,
            size,
            status,
        )
        return status
