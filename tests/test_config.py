"""Config: every key optional, every mistake named with its file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from roxy_triage.config import load_config
from roxy_triage.errors import ConfigError

EXAMPLE = Path(__file__).parent.parent / "examples" / "roxy-triage.toml"


def test_defaults_describe_the_bundled_service() -> None:
    """With no file: roxy-core on 127.0.0.1:8766 and the reference report's plan."""
    config = load_config(None)
    assert config.target.url == "http://127.0.0.1:8766"
    assert (config.target.host, config.target.port) == ("127.0.0.1", 8766)
    assert config.load.levels == [1, 5, 10, 25, 50] and config.load.requests == 200
    assert config.gates.ping_load.max_p95_ms == 250


def test_example_config_loads() -> None:
    """The example deployment config in examples/ is valid."""
    config = load_config(EXAMPLE)
    assert config.target.scope == "system"
    assert config.stress.checks == {"rapid_fire": {"count": 100}}
    assert config.source == str(EXAMPLE)


def test_url_option_overrides_the_file(tmp_path: Path) -> None:
    """--url replaces the target URL and keeps the rest of the file."""
    path = tmp_path / "c.toml"
    path.write_text('[target]\nurl = "http://127.0.0.1:1"\nunit = "x.service"\n')
    config = load_config(path, url="http://[::1]:9000")
    assert (config.target.host, config.target.port) == ("::1", 9000)
    assert config.target.unit == "x.service"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[targett]\n", "unknown key 'targett'"),
        ("[target]\nurl = 5\n", "target.url must be a string, got 5"),
        (
            '[target]\nurl = "ftp://x"\n',
            "target.url must be an http:// URL with a host",
        ),
        ('[target]\nscope = "both"\n', "target.scope must be 'user' or 'system'"),
        (
            "[load]\nlevels = []\n",
            "load.levels must list at least one concurrency level",
        ),
        ("[load]\nlevels = [1, 0]\n", "load.levels levels must be 1 or more"),
        ('[load]\nlevels = ["a"]\n', "load.levels[] must be an integer"),
        ("[load]\nrequests = true\n", "load.requests must be an integer, got True"),
        ("[load]\ntimeout_s = -1\n", "load.timeout_s must be greater than 0"),
        (
            '[collect]\ndisabled = ["nope"]\n',
            "collect.disabled names no collector 'nope'",
        ),
        ("[gates.ping_load]\nmin_success_ratio = 2\n", "must be between 0 and 1"),
        ("target = 1\n", "[target] must be a table"),
        ("[load\n", "not valid TOML"),
    ],
)
def test_mistakes_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    """A bad key or value is a ConfigError that starts with the file's name."""
    path = tmp_path / "roxy-triage.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert raised.value.message.startswith(f"{path}: ")
    assert message in raised.value.message


def test_missing_file_is_named(tmp_path: Path) -> None:
    """--config pointing nowhere says so."""
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.toml")


def test_bad_url_option(tmp_path: Path) -> None:
    """--url is checked like the file's target.url."""
    with pytest.raises(
        ConfigError, match="--url 'localhost:80' must be an http:// URL"
    ):
        load_config(None, url="localhost:80")
