"""The service's settings: one JSON file per profile, checked key by key."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

PROFILES = ("legacy", "patched")

# socketserver.TCPServer.request_queue_size; the legacy profile keeps it on
# purpose, because it is what overflowed in the original incident.
SOCKETSERVER_DEFAULT_BACKLOG = 5
MAX_DEFAULT_BACKLOG = 4096


class ConfigError(Exception):
    """A profile or config file that roxy-core refuses to start with."""


@dataclass(frozen=True)
class RateLimit:
    enabled: bool = True
    rate_per_s: float = 50.0
    burst: int = 100
    # Fast-path commands (ping, health, status) skip the limiter, so health
    # checks keep working while the service sheds load.
    exempt_fast_path: bool = True
    retry_after: bool = True


@dataclass(frozen=True)
class ServiceConfig:
    profile: str = "patched"
    host: str = "127.0.0.1"
    port: int = 8766
    # None means min(net.core.somaxconn, 4096), read at start.
    listen_backlog: int | None = None
    # Handler threads reused across connections; None starts a new thread per
    # connection, as the original service did.
    worker_threads: int | None = 256
    # ping, health and status answered in-process in constant time.
    fast_path: bool = True
    # Every command in a fresh interpreter, as the original service did.
    subprocess_all: bool = False
    rate_limit: RateLimit = field(default_factory=RateLimit)
    # "info": one INFO line per vanished client; "traceback": an ERROR with
    # the traceback, as the original service logged them.
    disconnect_logging: str = "info"
    # Answer 400 for malformed JSON and 405 for a wrong method instead of
    # letting the stock handler fail.
    validate_requests: bool = True
    max_body_bytes: int | None = 64 * 1024
    header_timeout_s: float | None = 10.0
    body_timeout_s: float | None = 10.0
    keepalive_idle_s: float | None = 15.0
    # Headers and body in one write with TCP_NODELAY; two writes with Nagle on
    # stall keep-alive clients for a delayed ACK (about 40 ms on Linux).
    single_write_responses: bool = True
    drain_timeout_s: float | None = 10.0
    command_timeout_s: float = 30.0
    sleep_cap_s: float = 10.0
    log_file: str | None = None
    log_level: str = "INFO"

    def effective_backlog(self) -> int:
        if self.listen_backlog is not None:
            return self.listen_backlog
        return min(read_somaxconn(), MAX_DEFAULT_BACKLOG)


def read_somaxconn() -> int:
    try:
        return int(Path("/proc/sys/net/core/somaxconn").read_text().strip())
    except (OSError, ValueError):
        # Not Linux, or /proc hidden: 4096 is the kernel default since 5.4.
        return MAX_DEFAULT_BACKLOG


def profile_path(name: str) -> Path:
    """Locate a bundled profile, installed (wheel) or in a source checkout."""
    if name not in PROFILES:
        raise ConfigError(
            f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}"
        )
    installed = resources.files("roxy_core").joinpath("profiles", f"{name}.json")
    if installed.is_file():
        return Path(str(installed))
    return Path(__file__).resolve().parent.parent / f"{name}.json"


def load_config(path: Path) -> ServiceConfig:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from err
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"{path}:{err.lineno}:{err.colno}: invalid JSON: {err.msg}"
        ) from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be an object")
    try:
        return config_from_mapping(raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def config_from_mapping(raw: dict[str, Any]) -> ServiceConfig:
    known = {f.name for f in fields(ServiceConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r}")
    values = dict(raw)
    if "rate_limit" in values:
        values["rate_limit"] = _rate_limit(values["rate_limit"])
    config = ServiceConfig(**values)
    _check(config)
    return config


def _rate_limit(raw: Any) -> RateLimit:
    if not isinstance(raw, dict):
        raise ConfigError("key 'rate_limit' must be an object")
    known = {f.name for f in fields(RateLimit)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown key 'rate_limit.{unknown[0]}'")
    limit = RateLimit(**raw)
    _expect("rate_limit.enabled", limit.enabled, bool)
    _expect_number("rate_limit.rate_per_s", limit.rate_per_s, minimum=0.001)
    _expect_int("rate_limit.burst", limit.burst, minimum=1)
    _expect("rate_limit.exempt_fast_path", limit.exempt_fast_path, bool)
    _expect("rate_limit.retry_after", limit.retry_after, bool)
    return limit


def _check(config: ServiceConfig) -> None:
    if config.profile not in PROFILES:
        raise ConfigError(f"key 'profile' must be one of {', '.join(PROFILES)}")
    _expect("host", config.host, str)
    _expect_int("port", config.port, minimum=0, maximum=65535)
    if config.listen_backlog is not None:
        _expect_int("listen_backlog", config.listen_backlog, minimum=1, maximum=65535)
    if config.worker_threads is not None:
        _expect_int("worker_threads", config.worker_threads, minimum=1, maximum=4096)
    for name in ("fast_path", "subprocess_all", "validate_requests"):
        _expect(name, getattr(config, name), bool)
    _expect("single_write_responses", config.single_write_responses, bool)
    if config.disconnect_logging not in ("info", "traceback"):
        raise ConfigError("key 'disconnect_logging' must be 'info' or 'traceback'")
    if config.max_body_bytes is not None:
        _expect_int("max_body_bytes", config.max_body_bytes, minimum=1)
    for name in ("header_timeout_s", "body_timeout_s", "keepalive_idle_s"):
        if getattr(config, name) is not None:
            _expect_number(name, getattr(config, name), minimum=0.001)
    if config.drain_timeout_s is not None:
        _expect_number("drain_timeout_s", config.drain_timeout_s, minimum=0)
    _expect_number("command_timeout_s", config.command_timeout_s, minimum=0.001)
    _expect_number("sleep_cap_s", config.sleep_cap_s, minimum=0)
    if config.log_file is not None:
        _expect("log_file", config.log_file, str)
    if config.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("key 'log_level' must be DEBUG, INFO, WARNING or ERROR")


def _expect(name: str, value: Any, kind: type) -> None:
    if not isinstance(value, kind):
        raise ConfigError(f"key {name!r} must be {kind.__name__}, got {value!r}")


def _expect_int(
    name: str, value: Any, minimum: int, maximum: int | None = None
) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"key {name!r} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        top = "" if maximum is None else f" and at most {maximum}"
        raise ConfigError(f"key {name!r} must be at least {minimum}{top}, got {value}")


def _expect_number(name: str, value: Any, minimum: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"key {name!r} must be a number, got {value!r}")
    if not math.isfinite(value) or value < minimum:
        raise ConfigError(f"key {name!r} must be at least {minimum}, got {value}")
