"""journald and a systemd manager, live, in a private mount namespace.

systemd is installed here but is not PID 1, so ``systemd --user`` stands in
for the system manager: a launcher script joins a cgroup slice of its own,
unshares its mount namespace, bind-mounts ``BASE/run-systemd`` over
``/run/systemd`` and ``BASE/run-log`` over ``/run/log`` (the host's ``/run``
is never written), starts ``systemd-journald``, then the manager with
``XDG_RUNTIME_DIR=BASE/xdg``. Units go in ``BASE/xdg/systemd/user``.

What this setup looks like to a collector (observed with systemd 252 on a
hybrid cgroup host):

- A unit's own output carries ``_SYSTEMD_UNIT=<unit>``, never
  ``_SYSTEMD_USER_UNIT``: journald derives the unit from the cgroup path
  (``/<slice>/app.slice/<unit>``), which lacks the ``user@.service`` level
  that marks a user unit, so the entries look like a system unit's.
  ``_SYSTEMD_SLICE`` is ``app.slice``.
- The manager's own messages about a unit ("Started roxy-core.service.",
  "Failed with result 'exit-code'.") carry ``USER_UNIT=<unit>`` (not
  ``UNIT=``), ``_SYSTEMD_UNIT=init.scope`` and ``_PID=<manager>``, because
  it is a user manager. So ``journalctl -u UNIT`` shows the unit's output but
  not those messages; ``journalctl --user-unit UNIT`` shows the manager's
  messages but not the output. Match ``USER_UNIT=`` or ``_SYSTEMD_UNIT=``
  directly to get both.
- Inside the namespace plain ``systemctl`` (system scope) reaches the same
  manager as ``systemctl --user``: ``/run/systemd/private`` is a symlink to
  the manager's private socket, and ``/run/systemd/system`` exists, so
  ``sd_booted()`` is true. Outside, ``systemctl`` still says "System has not
  been booted with systemd as init system (PID 1). Can't operate." (exit 1).
- ``Type=notify`` works: the manager sets ``NOTIFY_SOCKET=BASE/xdg/systemd/
  notify``, and a ``STATUS=`` sent with ``READY=1`` shows as ``StatusText``.
- A unit that fails and restarts reads ``Result=exit-code`` while it waits
  (``SubState=auto-restart``) but ``Result=success`` again while the next
  attempt starts; ``NRestarts`` only grows.

The journal is volatile (``Storage=volatile`` through a drop-in under the
private ``/run/systemd``), so nothing lands in the host's ``/var/log/journal``;
from outside it is :attr:`LiveSystemd.journal_dir`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

from tests.real.lifecycle import (
    ComponentUnavailable,
    Slice,
    Teardown,
    clear,
    is_alive,
    log_tail,
    make_base,
    mount_namespace,
    process_from_pid_file,
    record_for_reaper,
    remove_base,
    require,
    require_programs,
    require_root,
    session_name,
    start_launcher,
    stop_launcher,
    stop_process,
    wait_gone,
    wait_until,
)

JOURNALD = Path("/lib/systemd/systemd-journald")
SYSTEMD = Path("/lib/systemd/systemd")
READY_TIMEOUT_S = 10

LAUNCHER = r"""
set -eu
for cgroup in $ROXY_CGROUPS; do
  mkdir -p "$cgroup"
  echo $$ > "$cgroup/cgroup.procs"
done
# -n everywhere: mount(8) would otherwise create /run/mount/utab on the host.
mount -n --make-rprivate /
mount -n --bind "$B/run-systemd" /run/systemd
mount -n --bind "$B/run-log" /run/log
"$ROXY_JOURNALD" &
echo $! > "$B/journald.pid"
tries=0
until [ -S /run/systemd/journal/stdout ]; do
  tries=$((tries + 1))
  [ "$tries" -lt 500 ] || { echo "journald did not open its sockets"; exit 1; }
  sleep 0.01
done
XDG_RUNTIME_DIR="$B/xdg" HOME="$B/home" "$ROXY_SYSTEMD" --user --log-target=journal &
echo $! > "$B/manager.pid"
wait
"""

# ReadKMsg and ForwardToWall would tie this journald to the host's kernel log
# and terminals; a test journal holds only what the tests produced.
JOURNALD_CONF = """[Journal]
Storage=volatile
ReadKMsg=no
ForwardToSyslog=no
ForwardToWall=no
"""


class LiveSystemd:
    """A running journald and systemd manager in their own mount namespace."""

    def __init__(self, base: Path, slice_: Slice) -> None:
        self.base = base
        self.slice = slice_
        self.launcher: subprocess.Popen[bytes] | None = None
        self.manager: psutil.Process | None = None
        self.journald: psutil.Process | None = None
        self.namespace: str | None = None
        self.startup_s = 0.0
        self.teardown = Teardown(self._stop)

    @classmethod
    def start(cls, journald: Path = JOURNALD, systemd: Path = SYSTEMD) -> LiveSystemd:
        """Start both daemons and wait until the manager answers."""
        require_programs("timeout", "unshare", "nsenter", "systemctl", "journalctl")
        for program in (journald, systemd):
            require(os.access(program, os.X_OK), f"not installed: {program}")
        require_root()
        for point in ("/run/systemd", "/run/log"):
            require(Path(point).is_dir(), f"{point} missing, nothing to mount over")
        name = session_name()
        live = cls(make_base(name, "systemd"), Slice(f"{name}-systemd.slice"))
        try:
            live._launch(journald, systemd)
        except BaseException:
            live.stop()
            raise
        return live

    def _launch(self, journald: Path, systemd: Path) -> None:
        began = time.monotonic()
        self._prepare_dirs()
        env = {
            **os.environ,
            "B": str(self.base),
            "ROXY_CGROUPS": " ".join(str(d) for d in self.slice.tracking_dirs()),
            "ROXY_JOURNALD": str(journald),
            "ROXY_SYSTEMD": str(systemd),
        }
        script = self.base / "launch.sh"
        script.write_text(LAUNCHER)
        with (self.base / "launch.log").open("ab") as log:
            self.launcher = start_launcher(
                ["unshare", "-m", "bash", str(script)], env, self.base, log
            )
        try:
            self.journald = process_from_pid_file(self.base / "journald.pid", 5)
            self.namespace = mount_namespace(self.journald.pid)
            record_for_reaper(self.base, self.slice, self.namespace)
            self.manager = process_from_pid_file(self.base / "manager.pid", 5)
            private = self.runtime_dir / "systemd" / "private"
            require(
                wait_until(private.is_socket, READY_TIMEOUT_S),
                f"the manager did not listen on {private} in {READY_TIMEOUT_S} s",
            )
            probe = self.systemctl("--user", "show", "--property=Version")
            require(probe.returncode == 0, f"systemctl --user failed: {probe.stderr}")
        except ComponentUnavailable as err:
            raise ComponentUnavailable(
                f"journald+systemd did not start: {err}\n"
                f"{log_tail(self.base / 'launch.log')}"
            ) from err
        self.startup_s = time.monotonic() - began

    def _prepare_dirs(self) -> None:
        (self.base / "run-systemd" / "system").mkdir(parents=True)
        conf = self.base / "run-systemd" / "journald.conf.d"
        conf.mkdir()
        (conf / "roxy-real.conf").write_text(JOURNALD_CONF)
        (self.base / "run-log").mkdir()
        (self.base / "home").mkdir()
        self.runtime_dir.mkdir(mode=0o700)
        self.unit_dir.mkdir(parents=True)
        # System-scope systemctl finds the manager through this symlink.
        (self.base / "run-systemd" / "private").symlink_to(
            self.runtime_dir / "systemd" / "private"
        )

    @property
    def runtime_dir(self) -> Path:
        return self.base / "xdg"

    @property
    def unit_dir(self) -> Path:
        return self.runtime_dir / "systemd" / "user"

    @property
    def manager_pid(self) -> int:
        assert self.manager is not None, "the manager is not running"
        return self.manager.pid

    @property
    def journal_root(self) -> Path:
        """``/run/log/journal`` inside the namespace, seen from outside."""
        return self.base / "run-log" / "journal"

    @property
    def journal_dir(self) -> Path:
        """The directory of the journal files (named after the machine ID)."""
        machines = [p for p in self.journal_root.iterdir() if p.is_dir()]
        assert len(machines) == 1, f"expected one machine dir, found {machines}"
        return machines[0]

    def install_unit(
        self, name: str, text: str, dropins: Mapping[str, str] | None = None
    ) -> Path:
        """Write a unit file (and ``name.d/*.conf`` drop-ins), then daemon-reload.

        Drop-ins of an earlier install of the same unit are removed first.
        """
        path = self.unit_dir / name
        path.write_text(text)
        dropin_dir = self.unit_dir / f"{name}.d"
        if dropin_dir.exists():
            for old in dropin_dir.glob("*.conf"):
                old.unlink()
        for dropin, content in (dropins or {}).items():
            dropin_dir.mkdir(exist_ok=True)
            (dropin_dir / dropin).write_text(content)
        self.daemon_reload()
        return path

    def remove_unit(self, name: str) -> None:
        """Stop a unit, forget its failures, delete its files, daemon-reload."""
        self.systemctl("--user", "stop", name)
        self.systemctl("--user", "reset-failed", name)
        (self.unit_dir / name).unlink(missing_ok=True)
        dropin_dir = self.unit_dir / f"{name}.d"
        if dropin_dir.exists():
            for dropin in dropin_dir.iterdir():
                dropin.unlink()
            dropin_dir.rmdir()
        self.daemon_reload()

    def daemon_reload(self) -> None:
        self.systemctl("--user", "daemon-reload", check=True)

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = False,
        timeout_s: float = 30,
        input_text: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace, where this manager is systemd."""
        env = {
            **os.environ,
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "SYSTEMD_PAGER": "",
            "SYSTEMD_COLORS": "0",
        }
        return subprocess.run(
            ["nsenter", "-t", str(self.manager_pid), "-m", "--", *argv],
            env=env,
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=check,
        )

    def systemctl(
        self, *args: str, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """``systemctl ARGS`` inside; add ``--user`` or not, both reach the manager."""
        return self.run(["systemctl", *args], check=check)

    def journalctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(["journalctl", "--no-pager", *args])

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """``systemctl show`` of the given properties, as a dict."""
        shown = self.systemctl(
            "--user", "show", unit, f"--property={','.join(properties)}", check=True
        )
        return dict(
            line.split("=", 1) for line in shown.stdout.splitlines() if "=" in line
        )

    def stop(self) -> None:
        """Stop the manager (and its units), then journald; remove everything."""
        self.teardown()

    def _stop(self) -> None:
        if self.manager is not None and is_alive(self.manager):
            # exit stops every unit first, as a shutdown would.
            with contextlib.suppress(subprocess.SubprocessError):
                self.systemctl("--user", "exit")
            wait_gone(self.manager, timeout_s=20)
        stop_process(self.manager, timeout_s=5)
        stop_process(self.journald, timeout_s=5)
        if self.launcher is not None:
            stop_launcher(self.launcher, timeout_s=5)
        clear(self.slice, self.namespace)
        remove_base(self.base)
