"""Typed configuration: one TOML file, every key optional.

The embedded defaults describe the bundled roxy-core on 127.0.0.1:8766. A key
the schema does not know, or a value of the wrong type or range, is an error
that names the file and the key.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from roxy_triage.errors import ConfigError

DEFAULT_CONFIG_NAME = "roxy-triage.toml"


def _positive(value: Any) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _not_negative(value: Any) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def _ratio(value: Any) -> str | None:
    return None if 0 <= value <= 1 else "must be between 0 and 1"


def _levels(value: list[int]) -> str | None:
    if not value:
        return "must list at least one concurrency level"
    if any(level < 1 for level in value):
        return "levels must be 1 or more"
    return None


def _collectors(value: list[str]) -> str | None:
    known = (
        "sockets",
        "lsof",
        "process",
        "systemd",
        "journal",
        "docker",
        "host",
        "versions",
    )
    unknown = [name for name in value if name not in known]
    if unknown:
        return f"names no collector {unknown[0]!r} (choose from {', '.join(known)})"
    return None


def _scope(value: str) -> str | None:
    return None if value in ("user", "system") else "must be 'user' or 'system'"


def _http_url(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme != "http" or not parts.hostname:
        return "must be an http:// URL with a host, like http://127.0.0.1:8766"
    try:
        parts.port  # noqa: B018 - raises on a port out of range
    except ValueError:
        return "has a port that is not a number from 0 to 65535"
    return None


def check(
    validator: Callable[[Any], str | None],
    default: Any = dataclasses.MISSING,
    **kwargs: Any,
) -> Any:
    """A dataclass field with a validator run when the config is loaded."""
    return field(default=default, metadata={"check": validator}, **kwargs)


@dataclass(frozen=True)
class Target:
    """The service under triage and where its evidence lives."""

    url: str = check(_http_url, "http://127.0.0.1:8766")
    # systemd unit and the manager that runs it.
    unit: str = "roxy-core.service"
    scope: str = check(_scope, "user")
    # Docker containers to inspect by name; with neither names nor labels,
    # every container is inspected.
    containers: list[str] = field(default_factory=list)
    container_labels: list[str] = field(default_factory=list)
    # The service's own log file, read when there is no journal.
    log_file: str = ""
    # Read journal files from this directory instead of the system journal.
    journal_directory: str = ""
    # The Docker daemon to ask, e.g. unix:///run/docker.sock; empty uses
    # DOCKER_HOST or the default socket.
    docker_host: str = ""

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 80


@dataclass(frozen=True)
class LoadPlan:
    """What the load matrix sends, how often and how hard."""

    levels: list[int] = check(_levels, default_factory=lambda: [1, 5, 10, 25, 50])
    requests: int = check(_positive, 200)
    timeout_s: float = check(_positive, 30.0)
    method: str = "POST"
    path: str = "/run"
    body: str = '{"command": "ping"}'
    headers: dict[str, str] = field(
        default_factory=lambda: {"Content-Type": "application/json"}
    )
    # A new connection per request is what exposes accept-queue faults, and
    # what the original incident's clients did.
    keep_alive: bool = False
    # Open loop: arrivals per second at each level; 0 keeps the loop closed.
    rate: float = check(_not_negative, 0.0)
    # With a rate, how long each level lasts; 0 sends `requests` arrivals.
    duration_s: float = check(_not_negative, 0.0)
    # Client processes sharing each level. One event loop keeps up with the
    # bundled service easily; a fast server under new connections per
    # request can need one per core before the client stops being the
    # bottleneck.
    workers: int = check(_positive, 1)


@dataclass(frozen=True)
class Collection:
    """How long collectors may take and how much they may write."""

    timeout_s: float = check(_positive, 10.0)
    journal_window_min: float = check(_positive, 10.0)
    max_output_bytes: int = check(_positive, 8 * 1024 * 1024)
    docker_log_lines: int = check(_positive, 50)
    # Collectors to leave out, e.g. ["docker"] on a host whose containers
    # have nothing to do with the service.
    disabled: list[str] = check(_collectors, default_factory=list)


@dataclass(frozen=True)
class StressPlan:
    """Which stress checks run, and their parameters where not the defaults."""

    disabled: list[str] = field(default_factory=list)
    # Per check, parameters to override, e.g. [stress.checks.rapid_fire]
    # count = 100; checked against the suite when the checks are resolved.
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class PingLoadGate:
    """The reference report's first gate: the ping load at one level."""

    enabled: bool = True
    level: int = check(_positive, 50)
    min_success_ratio: float = check(_ratio, 1.0)
    max_p95_ms: float = check(_positive, 250.0)
    max_broken_pipes: int = check(_not_negative, 0)
    max_journal_broken_pipes: int = check(_not_negative, 0)


@dataclass(frozen=True)
class StressGate:
    """The reference report's second gate: the stress suite and a clean journal."""

    enabled: bool = True
    max_failed_checks: int = check(_not_negative, 0)
    max_unexpected_journal_errors: int = check(_not_negative, 0)
    listeners: int = check(_not_negative, 1)


@dataclass(frozen=True)
class Gates:
    ping_load: PingLoadGate = field(default_factory=PingLoadGate)
    full_stress: StressGate = field(default_factory=StressGate)
    # "gate.criterion" = "why it may fail", e.g. "ping_load.max_p95_ms".
    waivers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Redaction:
    """Extra regular expressions whose matches never reach the bundle."""

    patterns: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Config:
    target: Target = field(default_factory=Target)
    load: LoadPlan = field(default_factory=LoadPlan)
    collect: Collection = field(default_factory=Collection)
    stress: StressPlan = field(default_factory=StressPlan)
    gates: Gates = field(default_factory=Gates)
    redact: Redaction = field(default_factory=Redaction)
    # Where the config came from, for messages; not a key.
    source: str = field(default="(defaults)", metadata={"internal": True})

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data, as the manifest records it."""
        document = dataclasses.asdict(self)
        document.pop("source")
        return document


def load_config(path: Path | None, *, url: str | None = None) -> Config:
    """Read ``path`` (or ./roxy-triage.toml when present), then apply ``url``."""
    document: dict[str, Any] = {}
    source = "(defaults)"
    if path is None and Path(DEFAULT_CONFIG_NAME).is_file():
        path = Path(DEFAULT_CONFIG_NAME)
    if path is not None:
        source = str(path)
        document = _read_toml(path)
    config = build(Config, document, source, extra={"source": source})
    if url is not None:
        problem = _http_url(url)
        if problem:
            raise ConfigError(f"--url {url!r} {problem}")
        config = dataclasses.replace(
            config, target=dataclasses.replace(config.target, url=url)
        )
    return config


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except PermissionError:
        raise ConfigError(f"{path}: not readable (permission denied)") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None


def build(
    cls: type,
    table: Any,
    source: str,
    prefix: str = "",
    extra: dict[str, Any] | None = None,
) -> Any:
    """Build dataclass ``cls`` from a TOML table, checking every key."""
    where = f"[{prefix}] " if prefix else ""
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: {where.strip() or 'top level'} must be a table")
    fields = {
        f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")
    }
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: {where}unknown key {unknown[0]!r}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in table.items():
        label = f"{prefix}.{name}" if prefix else name
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            values[name] = build(kind, value, source, label)
            continue
        values[name] = _coerce(value, kind, source, label)
        validator = fields[name].metadata.get("check")
        problem = validator(values[name]) if validator else None
        if problem:
            raise ConfigError(f"{source}: {label} {problem}, got {value!r}")
    return cls(**values, **(extra or {}))


def _coerce(value: Any, kind: Any, source: str, label: str) -> Any:
    if kind is Any:
        return value
    origin = typing.get_origin(kind)
    if origin is list:
        (item,) = typing.get_args(kind)
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {label} must be a list, got {value!r}")
        return [_coerce(entry, item, source, f"{label}[]") for entry in value]
    if origin is dict:
        _, item = typing.get_args(kind)
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {label} must be a table, got {value!r}")
        return {
            str(k): _coerce(v, item, source, f"{label}.{k}") for k, v in value.items()
        }
    if origin in (types.UnionType, typing.Union):
        options = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        return _coerce(value, options[0], source, label)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, bool):
        raise ConfigError(f"{source}: {label} must be an integer, got {value!r}")
    if not isinstance(value, kind):
        raise ConfigError(
            f"{source}: {label} must be {_type_name(kind)}, got {value!r}"
        )
    return value


def _type_name(kind: type) -> str:
    return {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true or false",
    }.get(kind, kind.__name__)
