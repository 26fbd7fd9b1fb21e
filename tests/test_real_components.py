"""The real-component fixtures: systemd, journald, Docker and journal files.

These tests prove what the fixtures promise to later tests: roxy-core runs as
a real ``Type=notify`` unit with its telemetry in a real journal, Docker
reports real health states, journal files read back, and every session,
however it ends, leaves nothing behind.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import docker
import psutil
import pytest
from systemd import journal

from tests.plugins.real_components import RoxyCoreUnit
from tests.real.docker import IMAGE, ContainerStates, LiveDocker
from tests.real.lifecycle import ComponentUnavailable, cgroup_mounts, reap_stale
from tests.real.systemd import LiveSystemd

ROOT = Path(__file__).parents[1]
UNIT = "roxy-core.service"
InstallRoxyCore = Callable[..., RoxyCoreUnit]


def get_health(unit: RoxyCoreUnit) -> tuple[int, Any]:
    """``GET /health`` once, no retry: (status, JSON body)."""
    connection = http.client.HTTPConnection("127.0.0.1", unit.port, timeout=5)
    try:
        connection.request("GET", "/health")
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def listener_pid(port: int) -> int:
    listening = [
        connection.pid
        for connection in psutil.net_connections("tcp")
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port
    ]
    assert len(listening) == 1, f"listeners on {port}: {listening}"
    return listening[0]


def poll(produce: Callable[[], Any], timeout_s: float = 5) -> Any:
    """The first truthy result of ``produce()`` within the timeout, else the last."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = produce()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def journal_entries(directory: Path, **matches: str) -> list[dict[str, Any]]:
    reader = journal.Reader(path=str(directory))
    try:
        for field, value in matches.items():
            reader.add_match(**{field: value})
        return list(reader)
    finally:
        reader.close()


@pytest.fixture
def roxy_core(roxy_core_unit: InstallRoxyCore) -> RoxyCoreUnit:
    """roxy-core started as a unit, serving on its port."""
    unit = roxy_core_unit()
    assert unit.start() == 0
    return unit


# journald + systemd


def test_manager_and_journald_start_within_two_seconds(
    live_systemd: LiveSystemd,
) -> None:
    """journald and the manager answer systemctl within two seconds of launch."""
    assert live_systemd.startup_s < 2


def test_namespace_keeps_the_hosts_run_untouched(live_systemd: LiveSystemd) -> None:
    """/run/systemd is the private one inside the namespace and unchanged outside."""
    inside = live_systemd.run(["readlink", "/run/systemd/private"], check=True)
    host = Path("/run/systemd/private")

    assert inside.stdout.strip() == str(live_systemd.runtime_dir / "systemd/private")
    assert not host.is_symlink() or host.resolve() != Path(inside.stdout.strip())
    assert os.readlink(f"/proc/{live_systemd.manager_pid}/ns/mnt") != os.readlink(
        "/proc/self/ns/mnt"
    )


def test_start_returns_once_roxy_core_is_ready(roxy_core_unit: InstallRoxyCore) -> None:
    """systemctl start returns after READY=1, so /health answers at once."""
    unit = roxy_core_unit()

    assert unit.start() == 0
    status, body = get_health(unit)

    assert status == 200
    assert body["result"] == {"healthy": True}


def test_show_reports_active_with_the_listener_as_main_pid(
    roxy_core: RoxyCoreUnit,
) -> None:
    """systemctl show: active, MainPID is the listening process, readiness status."""
    shown = roxy_core.show("ActiveState", "SubState", "MainPID", "StatusText")

    assert shown["ActiveState"] == "active"
    assert shown["SubState"] == "running"
    assert int(shown["MainPID"]) == listener_pid(roxy_core.port)
    assert shown["StatusText"] == f"listening on 127.0.0.1:{roxy_core.port}"


def test_plain_systemctl_reaches_the_same_manager(
    live_systemd: LiveSystemd, roxy_core: RoxyCoreUnit
) -> None:
    """System-scope systemctl inside the namespace talks to the --user manager."""
    system = live_systemd.systemctl("show", UNIT, "--property=MainPID", check=True)
    user = live_systemd.systemctl(
        "--user", "show", UNIT, "--property=MainPID", check=True
    )

    assert system.stdout == user.stdout
    assert system.stdout != "MainPID=0\n"


def test_telemetry_reaches_journalctl_inside(
    live_systemd: LiveSystemd, roxy_core: RoxyCoreUnit
) -> None:
    """roxy-core's request lines are in journalctl -u inside the namespace."""
    _, body = get_health(roxy_core)
    request_id = body["request_id"]

    def lines() -> str:
        shown = live_systemd.journalctl("-u", UNIT, "-o", "cat")
        return (
            shown.stdout if f"[{request_id}] Complete: route=" in shown.stdout else ""
        )

    text = poll(lines)
    assert f"[{request_id}] Request start from 127.0.0.1" in text
    assert f"[{request_id}] Complete: route=ping_fastpath" in text


def test_telemetry_reaches_a_reader_outside(
    live_systemd: LiveSystemd, roxy_core: RoxyCoreUnit
) -> None:
    """systemd.journal.Reader on the journal dir from outside sees the same lines."""
    _, body = get_health(roxy_core)
    main_pid = roxy_core.show("MainPID")["MainPID"]

    def messages() -> list[str]:
        found = journal_entries(
            live_systemd.journal_dir, _SYSTEMD_UNIT=UNIT, _PID=main_pid
        )
        texts = [entry["MESSAGE"] for entry in found]
        return texts if any("Complete: route=" in text for text in texts) else []

    texts = poll(messages)
    assert (
        f"INFO roxy_core.access [{body['request_id']}] Request start from 127.0.0.1"
        in texts
    )


def test_unit_output_carries_the_system_unit_field(
    live_systemd: LiveSystemd, roxy_core: RoxyCoreUnit
) -> None:
    """A unit's lines carry _SYSTEMD_UNIT and no _SYSTEMD_USER_UNIT in this setup."""
    main_pid = roxy_core.show("MainPID")["MainPID"]

    entries = poll(lambda: journal_entries(live_systemd.journal_dir, _PID=main_pid))

    assert entries
    assert {entry["_SYSTEMD_UNIT"] for entry in entries} == {UNIT}
    assert not any("_SYSTEMD_USER_UNIT" in entry for entry in entries)
    assert {entry["_SYSTEMD_SLICE"] for entry in entries} == {"app.slice"}


def test_manager_messages_carry_the_user_unit_field(
    live_systemd: LiveSystemd, roxy_core: RoxyCoreUnit
) -> None:
    """The manager's "Started" line names the unit in USER_UNIT, not UNIT."""
    entries = poll(lambda: journal_entries(live_systemd.journal_dir, USER_UNIT=UNIT))
    started = [e for e in entries if e["MESSAGE"].startswith("Started ")]

    assert started, [e["MESSAGE"] for e in entries]
    assert "UNIT" not in started[-1]
    assert started[-1]["_PID"] == live_systemd.manager_pid
    assert started[-1]["_SYSTEMD_UNIT"] == "init.scope"


def test_bad_config_fails_with_exit_code_and_restarts(
    roxy_core_unit: InstallRoxyCore, tmp_path: Path
) -> None:
    """An unknown config key: start fails, Result=exit-code, status 2, restarts."""
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"profile": "patched", "no_such_key": 1}))
    unit = roxy_core_unit("--config", str(bad))

    def failed_after_a_restart() -> dict[str, str] | None:
        # Result reads "success" while a restart is starting; sample it in
        # auto-restart, the wait between attempts.
        shown = unit.show("SubState", "Result", "ExecMainStatus", "NRestarts")
        restarted = int(shown["NRestarts"]) >= 1
        return shown if restarted and shown["SubState"] == "auto-restart" else None

    assert unit.start() != 0
    shown = poll(failed_after_a_restart)

    assert shown, unit.show("SubState", "Result", "NRestarts")
    assert shown["Result"] == "exit-code"
    assert shown["ExecMainStatus"] == "2"


def test_bad_config_reason_is_in_the_journal(
    live_systemd: LiveSystemd, roxy_core_unit: InstallRoxyCore, tmp_path: Path
) -> None:
    """roxy-core's refusal names the unknown key in the unit's journal."""
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"profile": "patched", "no_such_key": 1}))
    unit = roxy_core_unit("--config", str(bad))

    def refusal() -> str:
        shown = live_systemd.journalctl("-u", UNIT, "-o", "cat").stdout
        return shown if "no_such_key" in shown else ""

    unit.start()
    text = poll(refusal)

    assert f"roxy-core: {bad}: unknown key 'no_such_key'" in text


# Docker


def test_dockerd_starts_within_two_seconds(live_docker: LiveDocker) -> None:
    """dockerd answers /_ping within two seconds of launch."""
    assert live_docker.startup_s < 2


def test_busybox_image_carries_the_healthcheck(
    docker_client: docker.DockerClient,
) -> None:
    """The locally imported image has the probe that tells healthy from not."""
    config = docker_client.images.get(IMAGE).attrs["Config"]

    assert config["Healthcheck"]["Test"] == ["CMD-SHELL", "test -f /tmp/ok"]
    assert config["Cmd"] == ["sleep", "3600"]


def test_healthy_container_reports_passing_probes(
    docker_client: docker.DockerClient, docker_containers: ContainerStates
) -> None:
    """A healthy container: Status healthy, its probes exited 0."""
    health = docker_client.containers.get(docker_containers.healthy).attrs["State"][
        "Health"
    ]

    assert health["Status"] == "healthy"
    assert health["Log"][-1]["ExitCode"] == 0
    assert health["Log"][-1]["Output"] == ""


def test_unhealthy_container_reports_failing_probes(
    docker_client: docker.DockerClient, docker_containers: ContainerStates
) -> None:
    """An unhealthy container: Status unhealthy, a failing streak, probes exit 1."""
    container = docker_client.containers.get(docker_containers.unhealthy)
    health = container.attrs["State"]["Health"]

    assert container.status == "running"
    assert health["Status"] == "unhealthy"
    assert health["FailingStreak"] >= 2
    assert health["Log"][-1]["ExitCode"] == 1
    assert health["Log"][-1]["Output"] == ""


def test_exited_container_keeps_its_exit_code(
    docker_client: docker.DockerClient, docker_containers: ContainerStates
) -> None:
    """An exited container keeps its non-zero ExitCode and its output."""
    container = docker_client.containers.get(docker_containers.exited)

    assert container.attrs["State"]["Status"] == "exited"
    assert container.attrs["State"]["ExitCode"] == 3
    assert container.logs() == b"exiting\n"


def test_restarting_container_counts_restarts(
    docker_client: docker.DockerClient, docker_containers: ContainerStates
) -> None:
    """A crash-looping container under on-failure counts its restarts."""
    attrs = docker_client.containers.get(docker_containers.restarting).attrs

    assert attrs["RestartCount"] > 0
    assert attrs["HostConfig"]["RestartPolicy"]["Name"] == "on-failure"
    # Sampled between two runs, or during one.
    assert attrs["State"]["Status"] in ("restarting", "running")


def test_containers_have_no_network(
    docker_client: docker.DockerClient, docker_containers: ContainerStates
) -> None:
    """Containers run with network none."""
    attrs = docker_client.containers.get(docker_containers.healthy).attrs

    assert attrs["HostConfig"]["NetworkMode"] == "none"


def test_engine_leaves_the_hosts_run_and_etc_alone(
    live_docker: LiveDocker, docker_containers: ContainerStates
) -> None:
    """With containers running, /run/docker, /run/containerd, key.json are as before."""
    now = {path: Path(path).exists() for path in live_docker.host_before}

    assert now == live_docker.host_before
    assert (live_docker.base / "etc-docker" / "key.json").exists()


# Journal files


def test_written_journal_reads_back_with_journalctl(
    journal_files: Callable[..., Path],
) -> None:
    """journalctl -D reads the entries back, fields intact and in order."""
    directory = journal_files(
        [
            {"SYSLOG_IDENTIFIER": "roxy-core", "MESSAGE": "first", "PRIORITY": 6},
            {"_SYSTEMD_UNIT": UNIT, "MESSAGE": "second", "_PID": 4242},
        ]
    )

    shown = subprocess.run(
        ["journalctl", "-D", str(directory), "-o", "json", "--no-pager"],
        capture_output=True,
        text=True,
        check=True,
    )
    entries = [json.loads(line) for line in shown.stdout.splitlines()]

    assert [e["MESSAGE"] for e in entries] == ["first", "second"]
    assert entries[0]["PRIORITY"] == "6"
    assert entries[1]["_SYSTEMD_UNIT"] == UNIT
    assert entries[1]["_PID"] == "4242"


def test_multiline_message_survives(journal_files: Callable[..., Path]) -> None:
    """A MESSAGE with newlines comes back whole through the length-prefixed form."""
    traceback = 'Traceback (most recent call last):\n  File "x"\nBrokenPipeError'
    directory = journal_files([{"MESSAGE": traceback}])

    (entry,) = journal_entries(directory)

    assert entry["MESSAGE"] == traceback


def test_backdated_entries_keep_their_timestamps(
    journal_files: Callable[..., Path],
) -> None:
    """realtime= backdates the entries; Reader reports those exact times."""
    when = datetime.now(UTC).replace(microsecond=123456) - timedelta(days=3)
    directory = journal_files([{"MESSAGE": "a"}, {"MESSAGE": "b"}], realtime=when)

    entries = journal_entries(directory)

    assert [e["__REALTIME_TIMESTAMP"] for e in entries] == [
        when,
        when + timedelta(milliseconds=1),
    ]


def test_missing_address_fields_are_filled(journal_files: Callable[..., Path]) -> None:
    """Entries without boot ID or monotonic time get one boot and rising times."""
    directory = journal_files([{"MESSAGE": "a"}, {"MESSAGE": "b"}])

    first, second = journal_entries(directory)

    assert first["_BOOT_ID"] == second["_BOOT_ID"]
    assert first["__MONOTONIC_TIMESTAMP"][0] < second["__MONOTONIC_TIMESTAMP"][0]


def test_user_unit_field_matches_directly(journal_files: Callable[..., Path]) -> None:
    """A _SYSTEMD_USER_UNIT entry is found by matching the field itself."""
    directory = journal_files(
        [
            {"_SYSTEMD_USER_UNIT": UNIT, "_UID": 1000, "MESSAGE": "user"},
            {"_SYSTEMD_UNIT": UNIT, "MESSAGE": "system"},
        ]
    )

    (entry,) = journal_entries(directory, _SYSTEMD_USER_UNIT=UNIT)

    assert entry["MESSAGE"] == "user"


# Startup failures


def test_missing_manager_binary_is_unavailable_with_the_reason() -> None:
    """A component that cannot start says why, for the skip or the CI failure."""
    with pytest.raises(ComponentUnavailable, match="not installed: /nonexistent"):
        LiveSystemd.start(systemd=Path("/nonexistent/systemd"))


# Cleanup, however the session ends

CHILD_TEST = """
import http.client
import json
import os
import time
from pathlib import Path

import psutil

from tests.real.lifecycle import cgroup_mounts

SLEEPER = "[Service]\\nExecStart=/bin/sleep 600\\n"


def held(pids):
    for pid in pids:
        try:
            yield [pid, psutil.Process(pid).create_time()]
        except psutil.NoSuchProcess:
            # Health probes and the crash-looping container come and go.
            continue


def test_holds_every_component(live_systemd, live_docker):
    live_systemd.install_unit("sleeper.service", SLEEPER)
    live_systemd.systemctl("--user", "start", "sleeper.service", check=True)
    for run in (live_docker.run_healthy, live_docker.run_restarting):
        run(wait=False)
    pids = live_systemd.slice.pids() | live_docker.slice.pids()
    pids |= {
        live_systemd.manager_pid, live_systemd.journald.pid, live_docker.dockerd.pid,
        live_docker.containerd.pid, live_systemd.launcher.pid, live_docker.launcher.pid,
    }
    report = {
        "processes": list(held(pids)),
        "manager_pid": live_systemd.manager_pid,
        "namespaces": [
            os.readlink(f"/proc/{p.pid}/ns/mnt")
            for p in (live_systemd.manager, live_docker.dockerd)
        ],
        "slices": [live_systemd.slice.name, live_docker.slice.name],
        "paths": [
            str(live_systemd.base),
            str(live_systemd.runtime_dir / "systemd" / "private"),
            str(live_docker.base),
            str(live_docker.socket),
            *map(str, (live_docker.base / "data" / "containers").iterdir()),
        ],
    }
    assert len(report["paths"]) == 6, report
    # Renamed into place, so the parent never reads half a report.
    written = Path(os.environ["ROXY_CHILD_REPORT"] + ".part")
    written.write_text(json.dumps(report))
    written.rename(os.environ["ROXY_CHILD_REPORT"])
    if os.environ["ROXY_CHILD_END"] == "fail":
        raise AssertionError("failing on purpose, with every component running")
    time.sleep(120)
"""

HOST_PATHS = (
    "/run/systemd/private",
    "/run/log/journal",
    "/run/docker",
    "/run/containerd",
    "/run/mount",
    "/etc/docker/key.json",
)


class ChildSession:
    """A pytest session in a subprocess that starts every component."""

    def __init__(self, directory: Path, end: str) -> None:
        directory.mkdir()
        test_file = directory / "test_child.py"
        test_file.write_text(CHILD_TEST)
        self.report_path = directory / "report.json"
        self.host_mounts = Path("/proc/self/mountinfo").read_text()
        self.host_paths = {path: Path(path).exists() for path in HOST_PATHS}
        argv = [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml")]
        argv += ["--rootdir", str(ROOT), "-p", "no:cacheprovider"]
        argv += ["-p", "tests.plugins.real_components", "-q", str(test_file)]
        env = {**os.environ, "ROXY_CHILD_REPORT": str(self.report_path)}
        self.process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**env, "ROXY_CHILD_END": end},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def report(self) -> dict[str, Any]:
        """What the child held, once every component runs."""
        written = poll(self.report_path.exists, timeout_s=60)
        if not written:
            self.process.kill()
        assert written, self.process.communicate()[0]
        return json.loads(self.report_path.read_text())

    def signal(self, signum: int) -> None:
        if signum == signal.SIGINT:
            # Ctrl-C in a terminal goes to the whole foreground process group.
            os.killpg(self.process.pid, signum)
        else:
            os.kill(self.process.pid, signum)

    def finish(self) -> tuple[int, str]:
        output, _ = self.process.communicate(timeout=120)
        return self.process.returncode, output

    def close(self) -> None:
        """Kill the child if a failed assertion left it running; close its pipe."""
        if self.process.poll() is None:
            self.process.kill()
        if self.process.stdout is not None and not self.process.stdout.closed:
            self.process.communicate()


StartChild = Callable[[str], ChildSession]


@pytest.fixture
def child_session(tmp_path: Path) -> Iterator[StartChild]:
    """Start child sessions that end as told: "fail" or "sleep" (until signalled)."""
    started: list[ChildSession] = []

    def start(end: str) -> ChildSession:
        started.append(ChildSession(tmp_path / f"child-{len(started)}", end))
        return started[-1]

    yield start
    for child in started:
        child.close()


def describe(pid: int) -> str:
    """A leftover process, for a failure message: name, state, parent, cgroups."""
    try:
        process = psutil.Process(pid)
        parent = process.parent()
        cgroups = Path(f"/proc/{pid}/cgroup").read_text().split()
        return (
            f"{pid} {process.name()} {process.status()}"
            f" parent={parent.name() if parent else None} {cgroups}"
        )
    except (psutil.NoSuchProcess, OSError):
        return f"{pid} gone"


def still_running(pid: int, create_time: float) -> bool:
    try:
        process = psutil.Process(pid)
        return (
            process.create_time() == create_time
            and process.status() != psutil.STATUS_ZOMBIE
        )
    except psutil.NoSuchProcess:
        return False


def namespace_holders(namespaces: list[str]) -> list[str]:
    """Processes in any of the mount namespaces, described for the failure."""
    holders = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.readlink(proc / "ns/mnt") in namespaces:
                holders.append(describe(int(proc.name)))
        except OSError:
            continue
    return holders


def assert_nothing_left(child: ChildSession, report: dict[str, Any]) -> None:
    alive = [
        describe(pid)
        for pid, started in report["processes"]
        if still_running(pid, started)
    ]
    manager_mounts = Path(f"/proc/{report['manager_pid']}/mountinfo")
    slice_dirs = [
        root / name
        for root, _ in cgroup_mounts()
        for name in report["slices"]
        if (root / name).exists()
    ]

    assert alive == []
    assert namespace_holders(report["namespaces"]) == []
    assert not manager_mounts.exists() or not still_running(report["manager_pid"], 0)
    assert slice_dirs == []
    assert [path for path in report["paths"] if Path(path).exists()] == []
    assert Path("/proc/self/mountinfo").read_text() == child.host_mounts
    assert {path: Path(path).exists() for path in HOST_PATHS} == child.host_paths


def test_failing_session_leaves_nothing_behind(child_session: StartChild) -> None:
    """A session whose test fails still stops every daemon and removes its traces."""
    child = child_session("fail")
    report = child.report()

    returncode, output = child.finish()

    assert returncode == pytest.ExitCode.TESTS_FAILED, output
    assert "failing on purpose" in output
    assert "journald+systemd stopped in" in output
    assert "dockerd stopped in" in output
    assert_nothing_left(child, report)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_interrupted_session_leaves_nothing_behind(
    child_session: StartChild, signum: signal.Signals
) -> None:
    """Ctrl-C, or SIGTERM from a cancelled job, still tears every daemon down."""
    child = child_session("sleep")
    report = child.report()

    child.signal(signum)
    returncode, output = child.finish()

    assert returncode == pytest.ExitCode.INTERRUPTED, output
    assert "journald+systemd stopped in" in output
    assert "dockerd stopped in" in output
    assert_nothing_left(child, report)


def test_killed_session_is_reaped_by_the_next(child_session: StartChild) -> None:
    """After a SIGKILLed session, the next session's reaper removes what it left."""
    child = child_session("sleep")
    report = child.report()
    child.signal(signal.SIGKILL)
    child.finish()
    survivors = [
        pid for pid, started in report["processes"] if still_running(pid, started)
    ]

    reaped = reap_stale()

    assert survivors, "the daemons should outlive a SIGKILLed pytest"
    assert set(report["slices"]) <= set(reaped)
    assert_nothing_left(child, report)
