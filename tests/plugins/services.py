"""roxy-core started for real, as a subprocess on a free loopback port."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from roxy_core.config import profile_path
from roxy_core.launch import Launched, LaunchError, launch

StartService = Callable[..., "RunningService"]


@dataclass
class RunningService(Launched):
    """A launched roxy-core with what tests read of it: its log, its stderr."""

    stderr_path: Path
    profile: str

    @property
    def log_path(self) -> Path:
        return self.log_file

    def log_text(self) -> str:
        return self.log_file.read_text(encoding="utf-8", errors="replace")

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
    if overrides:
        args = ["--config", str(write_profile(directory, profile, overrides))]
    else:
        args = ["--profile", profile]
    with stderr_path.open("wb") as stderr:
        try:
            started = launch(args, log_path, stderr=stderr)
        except LaunchError as err:
            pytest.fail(f"{err}: {stderr_path.read_text()[-2000:]}")
    return RunningService(started.process, started.port, log_path, stderr_path, profile)


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
