"""Collectors against real listeners, the real roxy-core, and real tools."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import psutil
import pytest

from roxy_triage.collect.journal import analyse, parse_log_file
from roxy_triage.collect.sockets import parse_listeners
from tests.collecting import (
    collect,
    fake_binary,
    listener,
    log_file_config,
    make_config,
    summary,
    two_listeners,
)
from tests.plugins.services import RunningService, StartService
from tests.test_service import call, vanish_mid_request


@pytest.fixture
def empty_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH with none of the usual tools on it, as on a minimal host."""
    directory = tmp_path / "bin-empty"
    directory.mkdir()
    monkeypatch.setenv("PATH", str(directory))
    return directory


@pytest.fixture
def fake_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory put first on PATH, for scripts standing in for a broken tool."""
    directory = tmp_path / "bin-fake"
    directory.mkdir()
    monkeypatch.setenv("PATH", f"{directory}:{os.environ['PATH']}")
    return directory


def test_sockets_reads_backlog_and_owner_from_ss(tmp_path: Path) -> None:
    """ss gives the listener's backlog, queue and owning process."""
    with listener(backlog=7) as sock:
        port = sock.getsockname()[1]
        record, staging = collect("sockets", make_config(tmp_path, port), tmp_path)
    found = summary(staging, "sockets")
    assert record.status == "ok" and found["source"] == "ss"
    assert found["listener_count"] == 1
    (entry,) = found["listeners"]
    assert (entry["backlog"], entry["recv_q"]) == (7, 0)
    assert entry["processes"][0]["pid"] == os.getpid()
    assert record.commands[0].argv[:2] == ["ss", "-Hltnpe"]
    assert record.commands[0].exit_code == 0


def test_sockets_sees_a_full_accept_queue(tmp_path: Path) -> None:
    """A listener that never accepts shows Recv-Q beyond its backlog."""
    with listener(backlog=1) as sock:
        port = sock.getsockname()[1]
        clients = []
        for _ in range(4):
            client = socket.socket()
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", port))
            clients.append(client)
        time.sleep(0.2)
        _, staging = collect("sockets", make_config(tmp_path, port), tmp_path)
        for client in clients:
            client.close()
    (entry,) = summary(staging, "sockets")["listeners"]
    assert entry["backlog"] == 1 and entry["recv_q"] >= 2


def test_sockets_counts_two_listeners(tmp_path: Path) -> None:
    """Two sockets sharing a port with SO_REUSEPORT are two listeners."""
    with two_listeners() as port:
        _, staging = collect("sockets", make_config(tmp_path, port), tmp_path)
    assert summary(staging, "sockets")["listener_count"] == 2


def test_sockets_falls_back_to_psutil_without_ss(
    tmp_path: Path, empty_path: Path
) -> None:
    """Without ss the listener still shows, from psutil, and the record says why."""
    with listener() as sock:
        port = sock.getsockname()[1]
        record, staging = collect("sockets", make_config(tmp_path, port), tmp_path)
    found = summary(staging, "sockets")
    assert record.status == "ok"
    assert "ss is not installed" in record.notes[0]
    assert found["source"] == "psutil" and found["listener_count"] == 1
    assert found["listeners"][0]["backlog"] is None
    assert found["listener_pids"] == [os.getpid()]


def test_sockets_with_nothing_listening(tmp_path: Path) -> None:
    """An empty port is an answer: zero listeners, status ok."""
    with listener() as sock:
        port = sock.getsockname()[1]
    record, staging = collect("sockets", make_config(tmp_path, port), tmp_path)
    assert record.status == "ok"
    assert summary(staging, "sockets")["listener_count"] == 0


def test_parse_listeners_from_captured_ss_output() -> None:
    """ss output captured from a real machine parses to backlog and owner."""
    text = (
        "LISTEN 0      5      127.0.0.1:8766 0.0.0.0:* "
        'users:(("roxy-core",pid=26610,fd=3)) ino:939254 sk:d cgroup:/ <->\n'
        "LISTEN 6      5      [::]:8766 [::]:*\n"
    )
    first, second = parse_listeners(text)
    assert first == {
        "local": "127.0.0.1:8766",
        "recv_q": 0,
        "backlog": 5,
        "processes": [{"name": "roxy-core", "pid": 26610, "fd": 3}],
    }
    assert (second["recv_q"], second["processes"]) == (6, [])


def test_lsof_lists_the_listener_and_its_files(
    tmp_path: Path, patched: RunningService
) -> None:
    """lsof names the listener's process and counts its open files."""
    record, staging = collect("lsof", make_config(tmp_path, patched.port), tmp_path)
    found = summary(staging, "lsof")
    assert record.status == "ok" and found["source"] == "lsof"
    (entry,) = found["listeners"]
    assert entry["pid"] == patched.pid
    assert entry["open_files"] > 3
    assert staging.exists(f"before/lsof/lsof_pid_{patched.pid}.txt")


def test_lsof_falls_back_to_psutil(
    tmp_path: Path, patched: RunningService, empty_path: Path
) -> None:
    """Without lsof, psutil names the listener and counts its descriptors."""
    record, staging = collect("lsof", make_config(tmp_path, patched.port), tmp_path)
    found = summary(staging, "lsof")
    assert record.status == "ok" and "lsof is not installed" in record.notes[0]
    assert found["source"] == "psutil"
    assert found["listeners"][0]["pid"] == patched.pid


def test_process_tree_of_the_patched_service(
    tmp_path: Path, patched: RunningService
) -> None:
    """The listener's process: threads, fds against the limit, memory, age."""
    record, staging = collect("process", make_config(tmp_path, patched.port), tmp_path)
    (entry,) = summary(staging, "process")["listeners"]
    root = entry["tree"][0]
    assert record.status == "ok"
    assert root["pid"] == patched.pid and "roxy_core.server" in root["cmdline"]
    assert root["threads"] >= 2 and root["fds"] >= 4
    assert root["rlimit_nofile"][0] > 0 and 0 < root["fd_usage"] < 1
    assert root["memory"]["rss"] > 1_000_000 and root["uptime_s"] >= 0


def test_process_tree_shows_the_legacy_subprocess(
    tmp_path: Path, legacy: RunningService
) -> None:
    """A command in flight on the legacy profile is a child in the tree."""
    worker = threading.Thread(
        target=call, args=(legacy,), kwargs={"command": "sleep 1"}
    )
    worker.start()
    legacy.wait_for_log(r"Command: sleep 1")
    time.sleep(0.2)
    _, staging = collect("process", make_config(tmp_path, legacy.port), tmp_path)
    worker.join()
    tree = summary(staging, "process")["listeners"][0]["tree"]
    assert any("roxy_core.commands" in member["cmdline"] for member in tree[1:])


def test_host_reads_sysctls_and_counters(tmp_path: Path) -> None:
    """The host collector carries somaxconn and the kernel's TCP counters."""
    record, staging = collect("host", make_config(tmp_path, 1), tmp_path)
    found = summary(staging, "host")
    somaxconn = Path("/proc/sys/net/core/somaxconn").read_text().strip()
    assert record.status == "ok"
    assert found["sysctls"]["net.core.somaxconn"] == somaxconn
    assert "TcpExt.ListenOverflows" in found["tcp_counters"]
    assert staging.read_text("before/host/proc_net_netstat.txt").startswith("TcpExt:")


def test_versions_names_tools_and_service(
    tmp_path: Path, patched: RunningService
) -> None:
    """Versions of the tool, the service (from its Server header) and ss."""
    _, staging = collect("versions", make_config(tmp_path, patched.port), tmp_path)
    found = summary(staging, "versions")
    assert found["service"].startswith("roxy-core/")
    assert found["ss"].startswith("ss utility, iproute2")
    assert found["systemd"].startswith("systemd ")
    assert found["roxy-triage"] and found["python"]


def test_systemd_is_unavailable_without_a_manager(tmp_path: Path) -> None:
    """Outside a systemd host, the systemd collector says so and the capture goes on."""
    for scope in ("system", "user"):
        config = make_config(tmp_path, 1, target={"scope": scope})
        record, _ = collect("systemd", config, tmp_path / scope)
        assert record.status == "unavailable", record
        assert record.reason.startswith(f"no systemd {scope} manager")


def test_docker_is_unavailable_without_a_daemon(tmp_path: Path) -> None:
    """No Docker daemon at the socket: unavailable, with the socket named."""
    url = f"unix://{tmp_path}/no-docker.sock"
    record, _ = collect(
        "docker", make_config(tmp_path, 1, target={"docker_host": url}), tmp_path
    )
    assert record.status == "unavailable"
    assert record.reason == f"no Docker daemon at {url} (No such file or directory)"


def test_journal_unavailable_without_journal_or_log(tmp_path: Path) -> None:
    """No journal directory and no log file: unavailable, saying both."""
    config = make_config(
        tmp_path, 1, target={"journal_directory": str(tmp_path / "none")}
    )
    record, _ = collect("journal", config, tmp_path)
    assert record.status == "unavailable"
    assert "does not exist" in record.reason and "no log_file" in record.reason


def test_journal_reads_the_log_file_when_there_is_no_journal(
    tmp_path: Path, start_roxy_core: StartService
) -> None:
    """The service's log file stands in for the journal, with telemetry per route."""
    service = start_roxy_core("legacy")
    for _ in range(3):
        call(service, command="ping")
    vanish_mid_request(service)
    service.wait_for_log("ERROR roxy_core.error Exception while handling")
    time.sleep(0.1)
    config = log_file_config(tmp_path, service.port, service.log_path)
    record, staging = collect("journal", config, tmp_path)
    found = summary(staging, "journal")
    assert record.status == "ok" and found["source"] == "log_file"
    assert found["unexpected_errors"] == 1 and found["tracebacks"] == 1
    assert found["broken_pipes_unhandled"] == 1
    (signature,) = found["signatures"]
    assert signature["signature"].startswith(
        ("BrokenPipeError", "ConnectionResetError")
    )
    route = found["telemetry"]["routes"]["subprocess"]
    assert route["requests"] >= 3 and route["subprocess_share"] > 0.5
    assert any(
        "Route: subprocess" in line
        for line in found["telemetry"]["samples"]["subprocess"]
    )


def test_journal_counts_a_handled_disconnect_as_expected(
    tmp_path: Path, start_roxy_core: StartService
) -> None:
    """The patched profile's INFO disconnect line is no unexpected error."""
    service = start_roxy_core("patched")
    vanish_mid_request(service)
    service.wait_for_log("client disconnected after")
    config = log_file_config(tmp_path, service.port, service.log_path)
    _, staging = collect("journal", config, tmp_path)
    found = summary(staging, "journal")
    assert found["unexpected_errors"] == 0 and found["tracebacks"] == 0
    assert found["handled_disconnects"] == 1 and found["broken_pipes"] == 1


def test_log_file_window_drops_old_lines() -> None:
    """Lines older than the window are left out; continuation lines follow theirs."""
    lines = [
        "2020-01-01T00:00:00.000 ERROR roxy_core.error old failure\n",
        "Traceback (most recent call last):\n",
        "2030-01-01T00:00:00.000 ERROR roxy_core.error new failure\n",
        "Traceback (most recent call last):\n",
        '  File "x.py", line 1, in <module>\n',
        "ValueError: bad value 42\n",
    ]
    entries = list(parse_log_file(lines, since=time.time()))
    assert [entry["message"].split()[-1] for entry in entries] == [
        "failure",
        "last):",
        "<module>",
        "42",
    ]
    result = analyse(entries)
    assert result["unexpected_errors"] == 1
    assert result["signatures"][0]["signature"] == "ValueError: bad value N"


def test_hanging_command_is_killed_with_its_group(
    tmp_path: Path, fake_bin: Path
) -> None:
    """A tool that hangs is killed at the deadline; what it printed is kept."""
    fake_binary(
        fake_bin,
        "ss",
        'echo "LISTEN 0 5 127.0.0.1:1 0.0.0.0:*"\nsleep 300 &\nsleep 300',
    )
    config = make_config(tmp_path, 1, collect={"timeout_s": 1})
    began = time.monotonic()
    record, staging = collect("sockets", config, tmp_path)
    assert time.monotonic() - began < 4
    assert record.status == "timed_out"
    assert record.commands[0].timed_out and record.commands[0].exit_code == -9
    assert "LISTEN 0 5" in staging.read_text("before/sockets/ss_listeners.txt")
    left = [
        p
        for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"] == ["sleep", "300"]
    ]
    assert left == []


def test_a_gigabyte_of_output_keeps_only_the_tail(
    tmp_path: Path, fake_bin: Path
) -> None:
    """A tool that prints a gigabyte leaves at most the cap on disk, tail kept."""
    fake_binary(
        fake_bin, "ss", "yes 'LISTEN 0 5 127.0.0.1:1 0.0.0.0:*' | head -c 1073741824"
    )
    cap = 256 * 1024
    config = make_config(tmp_path, 1, collect={"timeout_s": 4, "max_output_bytes": cap})
    rss_before = psutil.Process().memory_info().rss
    record, staging = collect("sockets", config, tmp_path)
    grown = psutil.Process().memory_info().rss - rss_before
    command = record.commands[0]
    kept = staging.path("before/sockets/ss_listeners.txt")
    assert command.bytes_dropped > 10 * cap
    assert command.bytes_kept <= cap and kept.stat().st_size <= cap + 200
    assert kept.read_text().startswith("[roxy-triage: output over 262144 bytes")
    assert grown < 64 * 1024 * 1024
    assert [p.name for p in kept.parent.iterdir() if ".part" in p.name] == []
