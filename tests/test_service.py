"""roxy-core over real HTTP: both profiles, their faults and their fixes."""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.plugins.services import RunningService, StartService


def call(
    service: RunningService,
    method: str = "POST",
    path: str = "/run",
    body: bytes | str | None = None,
    command: str | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 10.0,
) -> tuple[int, dict[str, str], Any]:
    """One request on a fresh connection; (status, headers, JSON or None)."""
    if command is not None:
        body = json.dumps({"command": command})
    connection = http.client.HTTPConnection(
        "127.0.0.1", service.port, timeout=timeout_s
    )
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        raw = response.read()
    finally:
        connection.close()
    try:
        payload = json.loads(raw)
    except json.JSONDecodeError:
        payload = None
    return response.status, {k.lower(): v for k, v in response.getheaders()}, payload


def children_seen_during(
    service: RunningService, request: Callable[[], Any]
) -> set[str]:
    """Names of child processes of the service seen while ``request`` ran."""
    server = psutil.Process(service.pid)
    seen: set[str] = set()
    worker = threading.Thread(target=request)
    worker.start()
    while worker.is_alive():
        for child in server.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                seen.add(" ".join(child.cmdline()))
        time.sleep(0.001)
    worker.join()
    return seen


def listen_backlog(port: int) -> int:
    """The listen backlog ss reports for the listener on ``port``."""
    output = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert output[0] == "LISTEN", output
    return int(output[2])


def abort(sock: socket.socket) -> None:
    """Close with an RST, as a client that gives up does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_fast_path_answers_without_a_child_process(patched: RunningService) -> None:
    """The patched profile answers ping and health in-process, logged as fast path."""
    seen = children_seen_during(
        patched, lambda: [call(patched, command="ping") for _ in range(20)]
    )
    status, _, payload = call(patched, "GET", "/health")

    assert seen == set()
    assert status == 200 and payload["result"] == {"healthy": True}
    rid = payload["request_id"]
    patched.wait_for_log(rf"\[{rid}\] Route: ping_fastpath \(no subprocess\)")
    patched.wait_for_log(
        rf"\[{rid}\] Complete: route=ping_fastpath, total=\d+ms, subprocess=0ms, "
        r"size=\d+b, status=200"
    )


def test_legacy_ping_spawns_a_subprocess(legacy: RunningService) -> None:
    """The legacy profile runs even ping in a fresh interpreter, and says so."""
    replies: list[Any] = []
    seen = children_seen_during(
        legacy, lambda: replies.append(call(legacy, command="ping"))
    )
    status, _, payload = replies[0]

    assert status == 200 and payload["result"] == "pong"
    assert any("roxy_core.commands" in cmdline for cmdline in seen), seen
    legacy.wait_for_log(
        rf"\[{payload['request_id']}\] Route: subprocess \(subprocess: \d+ms\)"
    )


def test_request_telemetry_lines_in_order(patched: RunningService) -> None:
    """Each request logs start, command, route and completion with its id."""
    _, _, payload = call(patched, command="echo hello")
    rid = payload["request_id"]
    patched.wait_for_log(rf"\[{rid}\] Complete")

    lines = [line for line in patched.log_text().splitlines() if f"[{rid}]" in line]
    assert [re.sub(r".*\] ", "", line).split(":")[0] for line in lines] == [
        "Request start from 127.0.0.1",
        "Command",
        "Route",
        "Complete",
    ]
    assert "Command: echo hello" in lines[1]
    assert "roxy_core.access" in lines[0]


def test_legacy_listens_with_backlog_five(legacy: RunningService) -> None:
    """ss shows socketserver's default backlog of 5 on the legacy listener."""
    assert listen_backlog(legacy.port) == 5


def test_patched_backlog_defaults_to_somaxconn(patched: RunningService) -> None:
    """ss shows min(somaxconn, 4096) on the patched listener."""
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert listen_backlog(patched.port) == min(somaxconn, 4096)


def test_patched_backlog_from_config(start_roxy_core: StartService) -> None:
    """A configured listen_backlog is what the kernel gets."""
    service = start_roxy_core("patched", listen_backlog=321)
    assert listen_backlog(service.port) == 321


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("time", lambda r: r["utc"].endswith("+00:00") and r["epoch"] > 1.7e9),
        ("uptime", lambda r: r["host_s"] > 0 and r["service_s"] >= 0),
        ("disk", lambda r: r["total"] >= r["used"] > 0 and r["path"] == "/"),
        ("load", lambda r: set(r) == {"1m", "5m", "15m", "cpus"}),
        ("echo  spaced  words", lambda r: r == "spaced  words"),
        ("sleep 0.05", lambda r: r == {"slept_s": 0.05}),
        ("status", lambda r: r["profile"] == "patched" and r["requests"]["total"] >= 1),
    ],
)
def test_commands_do_real_work(
    patched: RunningService, command: str, expected: Callable[[Any], bool]
) -> None:
    """Every allow-listed command answers with its own kind of result."""
    status, _, payload = call(patched, command=command)
    assert status == 200 and payload["status"] == "ok"
    assert expected(payload["result"]), payload


def test_sleep_is_capped(start_roxy_core: StartService) -> None:
    """sleep never holds a thread longer than sleep_cap_s."""
    service = start_roxy_core("patched", sleep_cap_s=0.2)
    began = time.monotonic()
    _, _, payload = call(service, command="sleep 30")
    assert payload["result"] == {"slept_s": 0.2}
    assert time.monotonic() - began < 5


def test_status_counts_requests(start_roxy_core: StartService) -> None:
    """status reports the profile, pid and request counters."""
    service = start_roxy_core("patched")
    call(service, command="ping")
    call(service, command="nope")
    _, _, payload = call(service, command="status")
    result = payload["result"]
    assert result["pid"] == service.pid and result["profile"] == "patched"
    assert result["requests"]["ok"] == 1
    assert result["requests"]["client_errors"] == 1
    assert result["requests"]["total"] == 3


@pytest.mark.parametrize("profile", ["legacy", "patched"])
def test_unknown_command_is_400_naming_it(
    request: pytest.FixtureRequest, profile: str
) -> None:
    """An unknown command gets 400 with a JSON error that names it."""
    service = request.getfixturevalue(profile)
    status, _, payload = call(service, command="rm -rf /")
    assert status == 400
    assert payload["error"] == "unknown command 'rm'"


def test_malformed_json_is_400(patched: RunningService) -> None:
    """A body that is not JSON gets a clean 400 in the patched profile."""
    status, _, payload = call(patched, body="{not json")
    assert status == 400 and payload["error"].startswith("malformed JSON")
    status, _, payload = call(patched, body='["ping"]')
    assert status == 400 and "'command'" in payload["error"]


def test_legacy_malformed_json_leaves_a_traceback(
    start_roxy_core: StartService,
) -> None:
    """The legacy profile answers nothing to bad JSON and logs a traceback."""
    service = start_roxy_core("legacy")
    with pytest.raises(http.client.RemoteDisconnected):
        call(service, body="{not json")
    service.wait_for_log(r"ERROR roxy_core\.error Exception while handling a request")
    assert "json.decoder.JSONDecodeError" in service.log_text()


def test_wrong_method_is_405_with_allow(patched: RunningService) -> None:
    """A known path with the wrong method gets 405 and an Allow header."""
    status, headers, _ = call(patched, "PUT", "/run", body="{}")
    assert (status, headers["allow"]) == (405, "POST")
    status, headers, _ = call(patched, "POST", "/health", body="{}")
    assert (status, headers["allow"]) == (405, "GET")
    status, _, _ = call(patched, "GET", "/nowhere")
    assert status == 404


def test_legacy_wrong_method_is_501(legacy: RunningService) -> None:
    """The legacy profile keeps the stock handler's 501 for unknown methods."""
    status, _, _ = call(legacy, "PUT", "/run", body="{}")
    assert status == 501


def test_oversized_body_is_413(patched: RunningService) -> None:
    """A body over max_body_bytes gets 413 without being read."""
    status, headers, payload = call(patched, body="x" * (64 * 1024 + 1))
    assert status == 413 and headers["connection"] == "close"
    assert "65536-byte limit" in payload["error"]


def test_missing_content_length_is_411(patched: RunningService) -> None:
    """A POST without Content-Length gets 411."""
    with socket.create_connection(("127.0.0.1", patched.port), timeout=5) as sock:
        sock.sendall(b"POST /run HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(200).startswith(b"HTTP/1.1 411 ")


def test_trickled_headers_get_408(start_roxy_core: StartService) -> None:
    """Headers trickled past header_timeout_s get 408 and a closed connection."""
    service = start_roxy_core("patched", header_timeout_s=0.5)
    with socket.create_connection(("127.0.0.1", service.port), timeout=5) as sock:
        began = time.monotonic()
        reply = b""
        for chunk in (
            b"GET /hea",
            b"lth HTTP/1.1\r\n",
            b"Host: x\r\n",
            b"X-Slow: 1\r\n",
        ):
            try:
                sock.sendall(chunk)
            except OSError:
                break
            time.sleep(0.2)
        reply = sock.recv(4096)
        waited = time.monotonic() - began
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert b"request header timeout" in reply
    assert 0.45 < waited < 2


def test_trickled_body_gets_408(start_roxy_core: StartService) -> None:
    """A body slower than body_timeout_s gets 408."""
    service = start_roxy_core("patched", body_timeout_s=0.5)
    with socket.create_connection(("127.0.0.1", service.port), timeout=5) as sock:
        sock.sendall(b"POST /run HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n{")
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 408 ")
    service.wait_for_log(r"Body timeout from 127\.0\.0\.1 after 1 of 40 bytes")


def test_idle_connection_is_closed_without_an_answer(
    start_roxy_core: StartService,
) -> None:
    """A connection that never sends a byte is closed silently when idle."""
    service = start_roxy_core("patched", keepalive_idle_s=0.3)
    with socket.create_connection(("127.0.0.1", service.port), timeout=5) as sock:
        assert sock.recv(4096) == b""


def test_keep_alive_serves_several_requests(patched: RunningService) -> None:
    """One HTTP/1.1 connection carries several requests."""
    connection = http.client.HTTPConnection("127.0.0.1", patched.port, timeout=5)
    ids = set()
    for _ in range(3):
        connection.request("POST", "/run", body='{"command": "ping"}')
        response = connection.getresponse()
        ids.add(json.loads(response.read())["request_id"])
    local_port = connection.sock.getsockname()[1]
    connection.close()
    assert len(ids) == 3 and local_port


def test_http10_keep_alive_is_acknowledged(patched: RunningService) -> None:
    """An HTTP/1.0 client asking for keep-alive is told it got it."""
    with socket.create_connection(("127.0.0.1", patched.port), timeout=5) as sock:
        sock.sendall(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert b"Connection: keep-alive" in sock.recv(4096)
        sock.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")


def burst(
    service: RunningService, requests: int, **request: Any
) -> list[tuple[int, dict]]:
    """Fire ``requests`` requests back to back, one connection each."""
    return [call(service, **request)[:2] for _ in range(requests)]


@pytest.mark.parametrize("profile", ["legacy", "patched"])
def test_burst_beyond_the_limit_gets_429(
    start_roxy_core: StartService, profile: str
) -> None:
    """Commands past the token bucket's burst are refused with 429."""
    service = start_roxy_core(profile)
    # The legacy limiter runs before the command is even parsed, so an unknown
    # command spends a token without a slow subprocess: the burst outruns the
    # refill however loaded the machine is.
    command, answer = ("echo hi", 200) if profile == "patched" else ("nope", 400)
    results = burst(service, 160 if profile == "patched" else 60, command=command)
    statuses = [status for status, _ in results]
    limited = [headers for status, headers in results if status == 429]
    assert statuses[:20] == [answer] * 20
    assert limited, statuses
    if profile == "patched":
        assert all(int(headers["retry-after"]) >= 1 for headers in limited)
    else:
        assert all("retry-after" not in headers for headers in limited)
    service.wait_for_log(r"Rate limited: 127\.0\.0\.1")


def test_patched_health_is_exempt_from_the_limit(start_roxy_core: StartService) -> None:
    """Fast-path commands pass while the same client is being limited."""
    service = start_roxy_core("patched", rate_limit={"rate_per_s": 1, "burst": 5})
    commands = [call(service, command="echo x")[0] for _ in range(10)]
    health = [call(service, "GET", "/health")[0] for _ in range(100)]
    pings = [call(service, command="ping")[0] for _ in range(50)]
    assert 429 in commands
    assert set(health) == {200} and set(pings) == {200}


def test_legacy_limits_health_too(start_roxy_core: StartService) -> None:
    """The legacy limiter runs before routing, so health checks get 429 too."""
    service = start_roxy_core(
        "legacy",
        rate_limit={
            "rate_per_s": 1,
            "burst": 3,
            "exempt_fast_path": False,
            "retry_after": False,
        },
    )
    health = [call(service, "GET", "/health")[0] for _ in range(8)]
    assert health[:3] == [200, 200, 200]
    assert 429 in health[3:]


def vanish_mid_request(service: RunningService) -> None:
    """Ask for a one-second command and abort the connection before it ends."""
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=5)
    body = b'{"command": "sleep 1"}'
    sock.sendall(
        b"POST /run HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body)
    )
    time.sleep(0.3)
    abort(sock)


def test_patched_logs_a_vanished_client_once_at_info(
    start_roxy_core: StartService,
) -> None:
    """A client gone mid-response leaves one INFO line with id and elapsed ms."""
    service = start_roxy_core("patched")
    vanish_mid_request(service)
    found = service.wait_for_log(
        r"INFO roxy_core\.access \[(\w{8})\] (BrokenPipeError|ConnectionResetError): "
        r"client disconnected after (\d+)ms"
    )
    time.sleep(0.2)
    log = service.log_text()
    assert 900 <= int(found[3]) < 3000
    assert log.count("client disconnected") == 1
    assert "Traceback" not in log and " ERROR " not in log
    assert f"[{found[1]}] Complete" not in log


def test_legacy_logs_a_vanished_client_as_an_error(
    start_roxy_core: StartService,
) -> None:
    """The legacy profile logs the same disconnect as an ERROR with a traceback."""
    service = start_roxy_core("legacy")
    vanish_mid_request(service)
    service.wait_for_log(r"ERROR roxy_core\.error Exception while handling a request")
    service.wait_for_log(r"(BrokenPipeError|ConnectionResetError)")
    assert "Traceback (most recent call last)" in service.log_text()


def test_sigterm_drains_an_in_flight_request(start_roxy_core: StartService) -> None:
    """SIGTERM stops new connections but lets a running sleep 1 finish."""
    service = start_roxy_core("patched")
    replies: list[Any] = []
    worker = threading.Thread(
        target=lambda: replies.append(call(service, command="sleep 1"))
    )
    worker.start()
    service.wait_for_log(r"Command: sleep 1")
    service.process.send_signal(signal.SIGTERM)
    service.wait_for_log(r"Stopping: no new connections; draining 1 in-flight")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", service.port), timeout=2).close()
    worker.join(timeout=10)
    status, headers, payload = replies[0]

    assert status == 200 and payload["result"] == {"slept_s": 1.0}
    assert headers["connection"] == "close"
    assert service.process.wait(timeout=10) == 0
    assert "Stopped: all in-flight requests drained" in service.log_text()


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"listen_backlog": 5, "workers": 4}, "unknown key 'workers'"),
        ({"listen_backlog": -1}, "key 'listen_backlog' must be at least 1"),
        ({"rate_limit": {"rate": 5}}, "unknown key 'rate_limit.rate'"),
        ({"disconnect_logging": "loud"}, "key 'disconnect_logging' must be"),
        ({"header_timeout_s": "10"}, "key 'header_timeout_s' must be a number"),
    ],
)
def test_bad_config_refuses_to_start(
    tmp_path: Path, document: dict, message: str
) -> None:
    """An unknown key or bad value stops roxy-core with exit 2, naming the key."""
    config = tmp_path / "bad.json"
    config.write_text(json.dumps(document))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "roxy_core.server",
            "--config",
            str(config),
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"roxy-core: {config}: ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_unparsable_config_names_line(tmp_path: Path) -> None:
    """A config that is not JSON is refused with its line and column."""
    config = tmp_path / "broken.json"
    config.write_text('{\n  "port": 1,\n  oops\n}')
    result = subprocess.run(
        [sys.executable, "-m", "roxy_core.server", "--config", str(config), "--check"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert f"{config}:3:3: invalid JSON" in result.stderr


def test_busy_port_is_a_clear_error(patched: RunningService) -> None:
    """Starting on a port already taken exits 1 and says which address."""
    result = subprocess.run(
        [sys.executable, "-m", "roxy_core.server", "--port", str(patched.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{patched.port}: Address already in use" in (
        result.stderr
    )


def test_patched_client_closing_mid_request_line_is_no_error(
    start_roxy_core: StartService,
) -> None:
    """A client that closes halfway through its request line leaves one INFO line."""
    service = start_roxy_core("patched")
    with socket.create_connection(("127.0.0.1", service.port), timeout=5) as sock:
        sock.sendall(b"GET /hea")
    service.wait_for_log(r"client 127\.0\.0\.1 closed after 8 bytes of a request line")
    time.sleep(0.1)
    assert " ERROR " not in service.log_text()
