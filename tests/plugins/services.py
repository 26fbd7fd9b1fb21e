"""roxy-core started for real, as a subprocess on a free loopback port."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from roxy_core.config import profile_path

LISTENING = re.compile(r"Listening on [\d.:a-f\[\]]+:(\d+) \(profile")
StartService = Callable[..., "RunningService"]


@dataclass
class RunningService:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    stderr_path: Path
    profile: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, pattern: str, timeout_s: float = 5.0) -> re.Match[str]:
        """Wait until a log line matches ``pattern``; the log is written in batches."""
        deadline = time.monotonic() + timeout_s
        compiled = re.compile(pattern)
        while True:
            found = compiled.search(self.log_text())
            if found or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert found, f"no log line matching {pattern!r} in:\n{self.log_text()[-3000:]}"
        return found

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def write_profile(directory: Path, profile: str, overrides: dict[str, Any]) -> Path:
    """A copy of a bundled profile with some keys changed."""
    document = json.loads(profile_path(profile).read_text())
    document.update(overrides)
    path = directory / f"{profile}-custom.json"
    path.write_text(json.dumps(document))
    return path


def start_service(
    directory: Path, profile: str = "patched", **overrides: Any
) -> RunningService:
    """Start roxy-core and wait until it listens; fail with its log if it cannot."""
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / f"roxy-core-{profile}.log"
    stderr_path = directory / f"roxy-core-{profile}.stderr"
    argv = [sys.executable, "-m", "roxy_core.server", "--port", "0"]
    argv += ["--log-file", str(log_path)]
    if overrides:
        argv += ["--config", str(write_profile(directory, profile, overrides))]
    else:
        argv += ["--profile", profile]
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(argv, stderr=stderr, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        text = log_path.read_text() if log_path.exists() else ""
        found = LISTENING.search(text)
        if found:
            return RunningService(
                process, int(found[1]), log_path, stderr_path, profile
            )
        if process.poll() is not None:
            break
        time.sleep(0.02)
    process.kill()
    process.wait()
    pytest.fail(f"roxy-core did not start: {stderr_path.read_text()[-2000:]}")


@pytest.fixture
def start_roxy_core(tmp_path: Path) -> Iterator[StartService]:
    """Start roxy-core in a profile, with overrides; all stopped at teardown."""
    started: list[RunningService] = []

    def start(profile: str = "patched", **overrides: Any) -> RunningService:
        service = start_service(tmp_path / f"svc{len(started)}", profile, **overrides)
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


@pytest.fixture(scope="module")
def patched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    """One patched roxy-core shared by a module's read-only tests."""
    service = start_service(tmp_path_factory.mktemp("patched"), "patched")
    yield service
    service.stop()


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    """One legacy roxy-core shared by a module's read-only tests."""
    service = start_service(tmp_path_factory.mktemp("legacy"), "legacy")
    yield service
    service.stop()
