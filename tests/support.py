"""Small helpers shared by the tests and their fixtures."""

from __future__ import annotations

import os
import socket

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> None:
    """A real component the test needs cannot run here.

    In CI that is a failure: CI installs and starts everything the tests use,
    so a missing component means CI is broken. Elsewhere the test is skipped
    with the reason.
    """
    if IN_CI:
        pytest.fail(f"CI=true and a required component is missing: {reason}")
    pytest.skip(reason)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
