"""PID files, cgroup slices and leftovers: how the real daemons start and stop.

Every daemon is started by a shell script under ``timeout`` in a session of
its own (so a Ctrl-C in the terminal reaches pytest, which then stops the
daemons in order, and never the daemons directly). The script first moves
itself into a cgroup slice named after the owning process, then writes each
daemon's PID file. Stopping goes by those PIDs; the slice is the safety net
that finds whatever a PID file cannot name (unit processes, containerd shims,
container processes), and it outlives a pytest that was killed outright, so
the next session's :func:`reap_stale` can clean up after it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import IO

import psutil

# Long enough for a full test session; short enough that daemons orphaned by
# a SIGKILLed pytest do not run for days. timeout(1) TERMs its whole process
# group when it expires.
LIFETIME_S = int(os.environ.get("ROXY_REAL_LIFETIME_S", "3600"))
PREFIX = "roxy-real"
OWNED_NAME = re.compile(rf"^{PREFIX}-(\d+)-[0-9a-f]+-")
LAUNCHER_PID = "launcher.pid"
SLICE_FILE = "slice"
NAMESPACE_FILE = "mount-namespace"


class ComponentUnavailable(Exception):
    """A real component cannot start on this machine; the message says why."""


def require(condition: bool, reason: str) -> None:
    if not condition:
        raise ComponentUnavailable(reason)


def require_root() -> None:
    require(os.geteuid() == 0, "needs root (mount namespaces, cgroups, dockerd)")


def require_programs(*programs: str) -> None:
    missing = [name for name in programs if shutil.which(name) is None]
    require(not missing, f"not installed: {', '.join(missing)}")


def session_name() -> str:
    """A name unique to this process and start, used for slices and base dirs."""
    return f"{PREFIX}-{os.getpid()}-{secrets.token_hex(4)}"


def make_base(name: str, component: str) -> Path:
    base = Path(tempfile.gettempdir()) / f"{name}-{component}"
    base.mkdir(mode=0o700)
    return base


def wait_until(
    condition: Callable[[], object], timeout_s: float, interval_s: float = 0.01
) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)


def is_alive(process: psutil.Process) -> bool:
    """Running and not a zombie; psutil also rejects a reused PID here."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def process_from_pid_file(path: Path, timeout_s: float) -> psutil.Process:
    """The process whose PID the file names, once the file is written."""
    require(
        wait_until(lambda: path.exists() and path.read_text().strip(), timeout_s),
        f"{path.name} not written within {timeout_s} s",
    )
    try:
        return psutil.Process(int(path.read_text()))
    except (psutil.NoSuchProcess, ValueError) as err:
        raise ComponentUnavailable(f"{path.name} names no live process") from err


def wait_gone(process: psutil.Process | None, timeout_s: float) -> bool:
    return process is None or wait_until(lambda: not is_alive(process), timeout_s, 0.02)


def stop_process(process: psutil.Process | None, timeout_s: float) -> None:
    """SIGTERM, wait, and SIGKILL what does not exit in time."""
    if process is None or not is_alive(process):
        return
    with contextlib.suppress(psutil.NoSuchProcess):
        process.terminate()
    if wait_gone(process, timeout_s):
        return
    with contextlib.suppress(psutil.NoSuchProcess):
        process.kill()
    wait_gone(process, 5)


def start_launcher(
    argv: list[str], env: dict[str, str], base: Path, log: IO[bytes]
) -> subprocess.Popen[bytes]:
    """Run ``timeout LIFETIME_S argv`` in a session of its own.

    Its PID goes to ``base/launcher.pid`` for :func:`reap_stale`.
    """
    launcher = subprocess.Popen(
        ["timeout", str(LIFETIME_S), *argv],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    (base / LAUNCHER_PID).write_text(f"{launcher.pid}\n")
    return launcher


def stop_launcher(launcher: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Reap the launcher; if its daemons left it behind, end its process group."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        launcher.wait(timeout_s)
        return
    # start_new_session made the launcher's PID its process group's ID.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(launcher.pid, signal.SIGKILL)
    launcher.wait()


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


# cgroups


def cgroup_mounts() -> list[tuple[Path, str]]:
    """Each mounted cgroup hierarchy as (mount point, super options)."""
    hierarchies = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields, _, tail = line.partition(" - ")
        fstype, _source, options = tail.split(" ", 2)
        if fstype in ("cgroup", "cgroup2"):
            hierarchies.append((Path(fields.split()[4]), f"{fstype},{options}"))
    return hierarchies


def tracking_roots() -> list[Path]:
    """The hierarchies a slice joins: cgroup v2 and systemd's named v1 one.

    systemd tracks units in ``name=systemd`` on a hybrid host and in the v2
    hierarchy on a unified one; every process of a slice is in both, so
    either lists all of them.
    """
    roots = [
        mount
        for mount, options in cgroup_mounts()
        if options.startswith("cgroup2,") or "name=systemd" in options
    ]
    require(bool(roots), "no cgroup v2 or name=systemd hierarchy is mounted")
    return roots


class Slice:
    """A cgroup named ``name`` at the top of every mounted hierarchy."""

    def __init__(self, name: str) -> None:
        self.name = name

    def tracking_dirs(self) -> list[Path]:
        return [root / self.name for root in tracking_roots()]

    def dirs(self) -> list[Path]:
        """Every existing directory of the slice, in all hierarchies."""
        found = []
        for root, _options in cgroup_mounts():
            top = root / self.name
            if top.is_dir():
                found += [Path(d) for d, _, _ in os.walk(top)]
        return found

    def pids(self, min_depth: int = 0) -> set[int]:
        """PIDs in the slice's cgroups ``min_depth`` or more levels below its top."""
        pids: set[int] = set()
        for directory in self.dirs():
            if self.depth(directory) < min_depth:
                continue
            with contextlib.suppress(OSError):
                procs = (directory / "cgroup.procs").read_text()
                pids.update(int(pid) for pid in procs.split())
        return pids

    def depth(self, directory: Path) -> int:
        return len(directory.parts) - directory.parts.index(self.name) - 1

    def kill_remaining(self, timeout_s: float = 5) -> None:
        """SIGKILL every process still in the slice, by PID, deepest cgroups first.

        Workloads die before their supervisors, so a containerd shim or the
        manager is still there to reap them. An orphan waits for the host's
        init to reap it, and a container's init cannot finish exiting before
        its pid namespace's last zombie is reaped.
        """
        depths = {self.depth(directory) for directory in self.dirs()}
        for depth in sorted(depths, reverse=True):
            wait_until(partial(self.killed_below, depth), timeout_s, 0.02)

    def killed_below(self, depth: int) -> bool:
        """SIGKILL what runs ``depth`` levels down or deeper; True if nothing did."""
        return not kill_all(self.pids(depth))

    def remove(self) -> bool:
        """Remove the slice's directories, deepest first; True once none is left."""
        for directory in sorted(self.dirs(), key=lambda d: len(d.parts), reverse=True):
            with contextlib.suppress(OSError):
                directory.rmdir()
        return not self.dirs()


def kill_all(pids: set[int]) -> set[int]:
    """SIGKILL the PIDs; return them, so callers can repeat until none is left."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def mount_namespace(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/mnt")


def namespace_pids(namespace: str) -> set[int]:
    """Processes in a mount namespace; never this process's own one."""
    if namespace == mount_namespace(os.getpid()):
        raise ValueError(f"refusing to list the test process's namespace {namespace}")
    pids = set()
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and os.readlink(proc / "ns" / "mnt") == namespace:
                pids.add(int(proc.name))
    return pids


def clear(slice_: Slice, namespace: str | None, timeout_s: float = 10) -> None:
    """Kill what is left in the slice and the mount namespace; remove the slice.

    Done only after two clean passes in a row: a process forked while
    ``/proc`` was being read (PIDs wrap around quickly on a busy host) or
    runc between creating a container's cgroup and moving its init there
    can escape one pass.
    """
    clean_passes = 0

    def cleared() -> bool:
        nonlocal clean_passes
        slice_.kill_remaining()
        held = kill_all(namespace_pids(namespace)) if namespace else set()
        # A cgroup stays busy for a moment after its last process exits.
        clean = slice_.remove() and not held
        clean_passes = clean_passes + 1 if clean else 0
        return clean_passes >= 2

    if not wait_until(cleared, timeout_s, 0.05):
        raise OSError(f"{slice_.name} not cleared: {slice_.dirs()}")


def record_for_reaper(base: Path, slice_: Slice, namespace: str) -> None:
    """What :func:`reap_stale` needs if this session dies without a teardown."""
    (base / SLICE_FILE).write_text(slice_.name)
    (base / NAMESPACE_FILE).write_text(namespace)


def owner_alive(name: str) -> bool:
    found = OWNED_NAME.match(name)
    return found is None or psutil.pid_exists(int(found[1]))


def mount_points_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` in this process's mount namespace."""
    prefix = str(path)
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return points


def remove_base(base: Path) -> None:
    """Delete a base dir, refusing to descend into anything mounted there."""
    if not base.exists():
        return
    mounted = mount_points_under(base)
    if mounted:
        raise OSError(f"not removing {base}: still mounted at {mounted}")
    shutil.rmtree(base)


def reap_stale() -> list[str]:
    """Clean up after sessions whose owning process is gone; return what went.

    Only needed when a session was SIGKILLed or lost power: its daemons then
    run on until their ``timeout`` expires. Slices and base dirs whose owner
    still runs (a concurrent session) are left alone.
    """
    reaped = []
    for base in sorted(Path(tempfile.gettempdir()).glob(f"{PREFIX}-*")):
        if not base.is_dir() or owner_alive(base.name):
            continue
        with contextlib.suppress(FileNotFoundError):
            stale = Slice((base / SLICE_FILE).read_text())
            clear(stale, (base / NAMESPACE_FILE).read_text())
            reaped.append(stale.name)
        stop_stale_launcher(base / LAUNCHER_PID)
        remove_base(base)
        reaped.append(str(base))
    # Slices whose base dir is already gone.
    names = {
        top.name
        for root, _options in cgroup_mounts()
        for top in root.glob(f"{PREFIX}-*")
        if top.is_dir() and not owner_alive(top.name)
    }
    for name in sorted(names):
        clear(Slice(name), None)
        reaped.append(name)
    return reaped


def stop_stale_launcher(pid_file: Path) -> None:
    """End the ``timeout`` of a stale session; it is outside the slice."""
    try:
        launcher = psutil.Process(int(pid_file.read_text()))
        if launcher.name() != "timeout":
            return
    except (OSError, ValueError, psutil.NoSuchProcess):
        return
    stop_process(launcher, timeout_s=1)


class Teardown:
    """Run a stop function once: from a finalizer, or at interpreter exit."""

    def __init__(self, stop: Callable[[], None]) -> None:
        self._stop = stop
        self.done = False
        atexit.register(self)

    def __call__(self) -> None:
        if self.done:
            return
        # A second Ctrl-C during teardown leaves done False, so atexit retries.
        self._stop()
        self.done = True
        atexit.unregister(self)
