"""Real daemons for the tests, started once per session, and journal files.

Fixtures:

- ``live_systemd`` (session): :class:`tests.real.systemd.LiveSystemd`, a
  journald and systemd manager in a private mount namespace.
  ``install_unit(name, text, dropins)``, ``run(argv)``, ``systemctl(*args)``,
  ``journalctl(*args)``, ``show(unit, *properties)``, ``journal_dir``,
  ``manager_pid``, ``base``.
- ``roxy_core_unit`` (function): ``roxy_core_unit(*args)`` installs
  ``service/roxy-core.service`` unchanged plus a drop-in whose ExecStart runs
  this venv's roxy-core with ``args`` (default ``--profile patched``) on a
  free port; returns a :class:`RoxyCoreUnit`, not yet started. Stopped,
  reset and removed at teardown.
- ``live_docker`` (session): :class:`tests.real.docker.LiveDocker` with the
  busybox image imported; ``run_healthy()``, ``run_unhealthy()``,
  ``run_exited(code)``, ``run_restarting()`` each return a container name.
  Containers a test starts stay until the session ends.
- ``docker_containers`` (session): :class:`tests.real.docker.ContainerStates`,
  one healthy, unhealthy, exited and restarting container, already there.
- ``docker_client`` (session): ``docker.DockerClient`` on that engine.
- ``journal_files`` (function): ``journal_files(entries, name="fixture",
  realtime=datetime, spacing=timedelta, boot_id=UUID)`` writes a journal
  file under ``tmp_path`` (:func:`tests.real.journal.write_journal`) and
  returns its directory.

A daemon that cannot start skips its tests with the reason, or fails them
under ``CI=true`` (:func:`tests.support.unavailable`). Startup times are in
the terminal summary.

Teardown runs from the fixtures' finalizers, also after a failure, Ctrl-C or
SIGTERM (turned into a KeyboardInterrupt once a daemon runs); an atexit hook
retries it. A SIGKILLed session leaves its daemons to their ``timeout``
(``ROXY_REAL_LIFETIME_S``, 3600 s) and to the next session, which reaps them
before it starts its own.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.real.docker import ContainerStates, LiveDocker
from tests.real.journal import Entry, write_journal
from tests.real.lifecycle import ComponentUnavailable, reap_stale
from tests.real.systemd import LiveSystemd
from tests.support import free_port, unavailable

TIMINGS = pytest.StashKey[list[str]]()
ROXY_CORE_UNIT = Path(__file__).parents[2] / "service" / "roxy-core.service"
# The venv's own entry point, whichever venv runs the tests.
ROXY_CORE = Path(sys.executable).parent / "roxy-core"


def record(config: pytest.Config, line: str) -> None:
    config.stash.setdefault(TIMINGS, []).append(line)


def tear_down_on_sigterm() -> None:
    """Make SIGTERM (a cancelled CI job) stop pytest the way Ctrl-C does.

    By default SIGTERM ends the process on the spot: no finalizer, no atexit,
    daemons orphaned until their ``timeout``. As a KeyboardInterrupt, pytest
    runs the session teardown that stops them.
    """
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, signal.default_int_handler)


@pytest.fixture(scope="session")
def reaped_stale(pytestconfig: pytest.Config) -> list[str]:
    """Leftovers of earlier sessions that were killed outright, now removed."""
    reaped = reap_stale()
    if reaped:
        record(pytestconfig, f"reaped leftovers of killed sessions: {reaped}")
    return reaped


@pytest.fixture(scope="session")
def live_systemd(
    pytestconfig: pytest.Config, reaped_stale: list[str]
) -> Iterator[LiveSystemd]:
    """journald and a systemd manager for the whole session."""
    tear_down_on_sigterm()
    try:
        live = LiveSystemd.start()
    except ComponentUnavailable as err:
        unavailable(str(err))
    record(pytestconfig, f"journald+systemd ready in {live.startup_s:.2f} s")
    try:
        yield live
    finally:
        began = time.monotonic()
        live.stop()
        record(pytestconfig, f"journald+systemd stopped in {since(began)}")


@pytest.fixture(scope="session")
def live_docker(
    pytestconfig: pytest.Config, reaped_stale: list[str]
) -> Iterator[LiveDocker]:
    """A private dockerd with the busybox image, for the whole session."""
    tear_down_on_sigterm()
    try:
        live = LiveDocker.start()
    except ComponentUnavailable as err:
        unavailable(str(err))
    try:
        began = time.monotonic()
        try:
            live.build_busybox_image()
        except ComponentUnavailable as err:
            unavailable(str(err))
        record(
            pytestconfig,
            f"dockerd ready in {live.startup_s:.2f} s"
            f" (busybox image imported in {since(began)})",
        )
        yield live
    finally:
        began = time.monotonic()
        live.stop()
        record(pytestconfig, f"dockerd stopped in {since(began)}")


@pytest.fixture(scope="session")
def docker_client(live_docker: LiveDocker) -> docker.DockerClient:
    """The Docker SDK's client for the session's engine."""
    assert live_docker.client is not None
    return live_docker.client


@pytest.fixture(scope="session")
def docker_containers(live_docker: LiveDocker) -> ContainerStates:
    """One container in each health and exit state, shared by the session."""
    return live_docker.run_each_state()


@dataclass
class RoxyCoreUnit:
    name: str
    port: int
    live: LiveSystemd

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> int:
        """``systemctl start``; its exit code."""
        return self.live.systemctl("--user", "start", self.name).returncode

    def show(self, *properties: str) -> dict[str, str]:
        return self.live.show(self.name, *properties)


@pytest.fixture
def roxy_core_unit(live_systemd: LiveSystemd) -> Iterator[Callable[..., RoxyCoreUnit]]:
    """Install roxy-core's unit with ExecStart pointed at this venv (not started)."""
    installed: list[str] = []

    def install(*args: str) -> RoxyCoreUnit:
        assert ROXY_CORE.exists(), f"{ROXY_CORE} missing: pip install -e . in the venv"
        port = free_port()
        chosen = " ".join(args or ("--profile", "patched"))
        exec_start = f"{ROXY_CORE} {chosen} --port {port}"
        dropin = f"[Service]\nExecStart=\nExecStart={exec_start}\n"
        name = ROXY_CORE_UNIT.name
        live_systemd.install_unit(
            name, ROXY_CORE_UNIT.read_text(), {"50-test.conf": dropin}
        )
        installed.append(name)
        return RoxyCoreUnit(name, port, live_systemd)

    yield install
    for name in installed:
        live_systemd.remove_unit(name)


@pytest.fixture
def journal_files(tmp_path: Path) -> Callable[..., Path]:
    """Write journal files from entry dicts; returns the directory holding one."""
    written = 0

    def write(entries: list[Entry], name: str = "fixture", **options: Any) -> Path:
        nonlocal written
        written += 1
        return write_journal(entries, tmp_path / f"journal-{written}", name, **options)

    return write


def since(began: float) -> str:
    return f"{time.monotonic() - began:.2f} s"


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    lines = config.stash.get(TIMINGS, [])
    if lines:
        terminalreporter.section("real components")
        for line in lines:
            terminalreporter.write_line(line)
