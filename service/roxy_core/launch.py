"""Start roxy-core as a child process on a kernel-chosen port.

The port is read from the ``Listening on`` line of the child's log file,
which is written once the socket listens: asking the kernel for port 0
avoids the race of picking a free port first and binding it later.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

LISTENING = re.compile(r"Listening on [\d.:a-f\[\]]+:(\d+) \(profile")


class LaunchError(RuntimeError):
    """roxy-core exited or stayed silent instead of listening."""


@dataclass
class Launched:
    process: subprocess.Popen[bytes]
    port: int
    log_file: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM (which drains in the patched profile), then SIGKILL if need be."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def launch(
    args: list[str],
    log_file: Path,
    stderr: int | IO[bytes] = subprocess.DEVNULL,
    timeout_s: float = 15.0,
) -> Launched:
    """Run ``roxy-core ARGS --port 0 --log-file LOG_FILE`` and wait until it listens."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "roxy_core.server",
            *args,
            "--port",
            "0",
            "--log-file",
            str(log_file),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log_file.read_text(errors="replace") if log_file.exists() else ""
        found = LISTENING.search(text)
        if found:
            return Launched(process, int(found[1]), log_file)
        if process.poll() is not None:
            break
        time.sleep(0.02)
    if process.poll() is None:
        process.kill()
    process.wait()
    raise LaunchError(
        f"roxy-core {' '.join(args)} did not start (exit {process.returncode}); "
        f"its log is {log_file}"
    )
