"""A private Docker engine, a busybox image built locally, and its containers.

dockerd runs with its own data root, exec root, PID file and socket under a
base dir, no iptables, no bridge and the vfs storage driver. It always starts
a containerd of its own: the launcher mounts a tmpfs over ``/run`` in a
private mount namespace, so dockerd cannot see (or reuse) a host containerd
at ``/run/containerd/containerd.sock``.

That namespace is also what keeps the host clean. dockerd 20.10 writes
``/etc/docker/key.json``, ``/run/docker/plugins`` and ``/run/containerd/s/``
(the shims' sockets) wherever its flags say nothing; here ``/run`` is the
tmpfs and ``/etc/docker`` is a bind mount of ``BASE/etc-docker``, so they
vanish with the namespace. Only if the host has no ``/etc/docker`` to mount
over does dockerd create it, and :meth:`LiveDocker.stop` removes it again.

Containers run with ``--network none`` and their cgroups under the engine's
slice (``--cgroup-parent``), where a stop by PID or a stale reap finds them.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import psutil
from docker.models.containers import Container

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
    wait_until,
)

BUSYBOX = Path("/bin/busybox")
IMAGE = "roxy-busybox:latest"
# Two failed probes a second apart make a container unhealthy in about 2 s;
# the 5 s probe timeout keeps a slow ``runc exec`` on a busy host from
# counting as a failure.
HEALTHCHECK = "HEALTHCHECK --interval=1s --timeout=5s --retries=2 CMD test -f /tmp/ok"
READY_TIMEOUT_S = 10
HOST_ETC_DOCKER = Path("/etc/docker")
# What dockerd writes outside its flags' dirs when nothing stops it.
HOST_LEFTOVERS = (
    HOST_ETC_DOCKER / "key.json",
    Path("/run/docker"),
    Path("/run/containerd"),
    Path("/run/mount"),
)


@dataclass(frozen=True)
class ContainerStates:
    """Names of one container in each state a collector must tell apart."""

    healthy: str
    unhealthy: str
    exited: str
    restarting: str


LAUNCHER = r"""
set -eu
for cgroup in $ROXY_CGROUPS; do
  mkdir -p "$cgroup"
  echo $$ > "$cgroup/cgroup.procs"
done
# -n everywhere: mount(8) would otherwise create /run/mount/utab on the host.
mount -n --make-rprivate /
mount -n -t tmpfs -o mode=0755 roxy-real-run /run
if [ -d /etc/docker ]; then mount -n --bind "$B/etc-docker" /etc/docker; fi
# runc writes its exec specs (health probes) to $TMPDIR.
export TMPDIR="$B/tmp"
exec dockerd \
  --data-root="$B/data" --exec-root="$B/exec" --pidfile="$B/dockerd.pid" \
  -H "unix://$B/docker.sock" --config-file="$B/daemon.json" \
  --iptables=false --ip6tables=false --bridge=none --ip-forward=false \
  --ip-masq=false --userland-proxy=false --storage-driver=vfs \
  --exec-opt native.cgroupdriver=cgroupfs --cgroup-parent="/$ROXY_SLICE/containers" \
  --shutdown-timeout=2
"""


class LiveDocker:
    """A running dockerd (and its containerd) with a client connected to it."""

    def __init__(self, base: Path, slice_: Slice) -> None:
        self.base = base
        self.slice = slice_
        self.launcher: subprocess.Popen[bytes] | None = None
        self.dockerd: psutil.Process | None = None
        self.containerd: psutil.Process | None = None
        self.namespace: str | None = None
        self.client: docker.DockerClient | None = None
        self.startup_s = 0.0
        self.created_etc_docker = False
        self.host_before = {str(path): path.exists() for path in HOST_LEFTOVERS}
        self.teardown = Teardown(self._stop)
        self._names = 0

    @classmethod
    def start(cls) -> LiveDocker:
        """Start dockerd and wait until it answers ``/_ping``."""
        require_programs("timeout", "unshare", "dockerd", "containerd", "runc")
        require_root()
        name = session_name()
        live = cls(make_base(name, "docker"), Slice(f"{name}-docker"))
        try:
            live._launch()
        except BaseException:
            live.stop()
            raise
        return live

    def _launch(self) -> None:
        began = time.monotonic()
        for directory in ("etc-docker", "tmp"):
            (self.base / directory).mkdir()
        (self.base / "daemon.json").write_text("{}\n")
        self.created_etc_docker = not HOST_ETC_DOCKER.exists()
        env = {
            **os.environ,
            "B": str(self.base),
            "ROXY_CGROUPS": " ".join(str(d) for d in self.slice.tracking_dirs()),
            "ROXY_SLICE": self.slice.name,
        }
        script = self.base / "launch.sh"
        script.write_text(LAUNCHER)
        with (self.base / "dockerd.log").open("ab") as log:
            self.launcher = start_launcher(
                ["unshare", "-m", "sh", str(script)], env, self.base, log
            )
        try:
            require(
                wait_until(self._answers_ping, READY_TIMEOUT_S),
                f"no answer on {self.socket} within {READY_TIMEOUT_S} s",
            )
            self.dockerd = process_from_pid_file(self.base / "dockerd.pid", 1)
            self.namespace = mount_namespace(self.dockerd.pid)
            record_for_reaper(self.base, self.slice, self.namespace)
            self.containerd = process_from_pid_file(
                self.base / "exec" / "containerd" / "containerd.pid", 1
            )
        except ComponentUnavailable as err:
            raise ComponentUnavailable(
                f"dockerd did not start: {err}\n{log_tail(self.base / 'dockerd.log')}"
            ) from err
        self.startup_s = time.monotonic() - began
        # Only now: a DockerClient built before the daemon answers leaks its
        # socket (a ResourceWarning) when the version probe fails.
        self.client = docker.DockerClient(base_url=self.url)

    @property
    def socket(self) -> Path:
        return self.base / "docker.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def _answers_ping(self) -> bool:
        if not self.socket.is_socket():
            return False
        with socket.socket(socket.AF_UNIX) as probe:
            probe.settimeout(1)
            try:
                probe.connect(str(self.socket))
                probe.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
                return probe.recv(64).startswith(b"HTTP/1.0 200")
            except OSError:
                return False

    def build_busybox_image(self, tag: str = IMAGE) -> str:
        """Import /bin/busybox with its applet links as an image; return its ID.

        No registry is reachable, so the image is a tarball made here; its
        HEALTHCHECK passes once ``/tmp/ok`` exists.
        """
        require(BUSYBOX.is_file(), f"not installed: {BUSYBOX} (busybox-static)")
        rootfs = self.base / "busybox-rootfs.tar"
        rootfs.write_bytes(busybox_rootfs())
        repository, _, version = tag.partition(":")
        assert self.client is not None
        self.client.api.import_image_from_file(
            str(rootfs),
            repository=repository,
            tag=version or "latest",
            changes=['CMD ["sleep", "3600"]', HEALTHCHECK],
        )
        rootfs.unlink()
        return self.client.images.get(tag).id

    def run(self, command: list[str], name: str | None = None, **options: Any) -> str:
        """Start a container of the busybox image with no network; its name."""
        assert self.client is not None
        self._names += 1
        name = name or f"roxy-{self._names}"
        self.client.containers.run(
            IMAGE,
            command,
            name=name,
            detach=True,
            network_mode="none",
            **options,
        )
        return name

    def container(self, name: str) -> Container:
        assert self.client is not None
        return self.client.containers.get(name)

    def wait_for(
        self,
        name: str,
        condition: Callable[[dict[str, Any]], bool],
        timeout_s: float = 15,
    ) -> dict[str, Any]:
        """Poll ``attrs`` until ``condition(attrs)``; return the last ``attrs``."""
        container = self.container(name)
        reached = wait_until(
            lambda: (container.reload() or True) and condition(container.attrs),
            timeout_s,
            0.1,
        )
        assert reached, f"{name} never got there: {container.attrs['State']}"
        return container.attrs

    def run_healthy(self, name: str | None = None, wait: bool = True) -> str:
        """A running container whose health probe passes."""
        name = self.run(["sh", "-c", "touch /tmp/ok && exec sleep 3600"], name)
        if wait:
            self.wait_for(name, health_is("healthy"))
        return name

    def run_unhealthy(self, name: str | None = None, wait: bool = True) -> str:
        """A running container whose health probe fails."""
        name = self.run(["sleep", "3600"], name)
        if wait:
            self.wait_for(name, health_is("unhealthy"))
        return name

    def run_exited(
        self, exit_code: int = 3, name: str | None = None, wait: bool = True
    ) -> str:
        """A container that exited with ``exit_code``."""
        name = self.run(["sh", "-c", f"echo exiting; exit {exit_code}"], name)
        if wait:
            self.wait_for(name, lambda attrs: attrs["State"]["Status"] == "exited")
        return name

    def run_restarting(self, name: str | None = None, wait: bool = True) -> str:
        """A container that keeps crashing and being restarted (on-failure)."""
        name = self.run(
            ["sh", "-c", "echo crashing; exit 1"],
            name,
            restart_policy={"Name": "on-failure", "MaximumRetryCount": 0},
        )
        if wait:
            self.wait_for(name, lambda attrs: attrs["RestartCount"] > 0)
        return name

    def run_each_state(self) -> ContainerStates:
        """Start one container per state together, then wait for all of them."""
        states = ContainerStates(
            healthy=self.run_healthy(wait=False),
            unhealthy=self.run_unhealthy(wait=False),
            exited=self.run_exited(wait=False),
            restarting=self.run_restarting(wait=False),
        )
        self.wait_for(states.healthy, health_is("healthy"))
        self.wait_for(states.unhealthy, health_is("unhealthy"))
        self.wait_for(states.exited, lambda attrs: attrs["State"]["Status"] == "exited")
        self.wait_for(states.restarting, lambda attrs: attrs["RestartCount"] > 0)
        return states

    def stop(self) -> None:
        """Remove every container, stop dockerd and containerd, remove everything."""
        self.teardown()

    def _stop(self) -> None:
        if self.client is not None:
            if self.dockerd is not None and is_alive(self.dockerd):
                # SIGKILL now rather than dockerd's stop timeout per container.
                for container in self.client.containers.list(all=True):
                    with contextlib.suppress(docker.errors.NotFound):
                        container.remove(force=True)
            self.client.close()
        stop_process(self.dockerd, timeout_s=15)
        # dockerd stops the containerd it started; this covers a dockerd
        # that died first and left its containerd running.
        stop_process(self.containerd, timeout_s=5)
        if self.launcher is not None:
            stop_launcher(self.launcher, timeout_s=5)
        clear(self.slice, self.namespace)
        if self.created_etc_docker:
            with contextlib.suppress(FileNotFoundError):
                (HOST_ETC_DOCKER / "key.json").unlink()
            with contextlib.suppress(OSError):
                HOST_ETC_DOCKER.rmdir()
        remove_base(self.base)


def health_is(status: str) -> Callable[[dict[str, Any]], bool]:
    return lambda attrs: attrs["State"].get("Health", {}).get("Status") == status


def busybox_rootfs() -> bytes:
    """A tar of /bin/busybox plus a symlink per applet and a sticky /tmp."""
    listed = subprocess.run(
        [str(BUSYBOX), "--list"], capture_output=True, text=True, check=True
    )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory, mode in (("bin", 0o755), ("tmp", 0o1777)):
            entry = tarfile.TarInfo(directory)
            entry.type = tarfile.DIRTYPE
            entry.mode = mode
            tar.addfile(entry)
        tar.add(BUSYBOX, arcname="bin/busybox")
        for applet in sorted(set(listed.stdout.split()) - {"busybox"}):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
    return buffer.getvalue()
