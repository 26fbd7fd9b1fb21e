"""Secrets never reach a bundle: the rules, and a capture full of secrets."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from roxy_triage.bundle import Bundle
from roxy_triage.cli import cli
from roxy_triage.errors import ConfigError
from roxy_triage.redact import Redactor
from tests.collecting import write_config


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.def-123", "Authorization: Bearer [REDACTED]"),
        (
            "proxy-authorization: Basic dXNlcjpwYXNz",
            "proxy-authorization: Basic [REDACTED]",
        ),
        (
            "curl -H 'Authorization: token ghx1'",
            "curl -H 'Authorization: token [REDACTED]'",
        ),
        ("redis://:s3cret@cache:6379/0", "redis://:[REDACTED]@cache:6379/0"),
        ("https://user:pa55@host/x", "https://user:[REDACTED]@host/x"),
        ("GET /x?access_token=abc&y=1", "GET /x?access_token=[REDACTED]&y=1"),
        ("--password hunter2 --verbose", "--password [REDACTED] --verbose"),
        ("--api-key=XYZ", "--api-key=[REDACTED]"),
        ("--token 'two words'", "--token '[REDACTED]'"),
        ("DB_PASSWORD=s3cr3t HOME=/root", "DB_PASSWORD=[REDACTED] HOME=/root"),
        ('{"client_secret": "abc"}', '{"client_secret": "[REDACTED]"}'),
        (
            '"MESSAGE": "login {\\"password\\": \\"pw\\"}"',
            '"MESSAGE": "login {\\"password\\": \\"[REDACTED]\\"}"',
        ),
        ("key AKIAIOSFODNN7EXAMPLE", "key [REDACTED]"),
        ("eyJhbGciOi.eyJzdWIiOiIx.SflKxwRJSMeKKF2QT4", "[REDACTED]"),
        (
            "-----BEGIN EC PRIVATE KEY-----\nMHcC\nAQEE\n-----END EC PRIVATE KEY-----",
            "[REDACTED EC PRIVATE KEY]",
        ),
    ],
)
def test_rules_take_secrets_out(text: str, expected: str) -> None:
    """Each kind of secret is replaced, and the rest of the line kept."""
    redacted, count = Redactor().redact(text)
    assert redacted == expected
    assert count >= 1


@pytest.mark.parametrize(
    "text",
    [
        "Rate limited: 127.0.0.1, next token in 500ms",
        '"TcpExt.MPJoinNoTokenFound": 0,',
        "token bucket of 20, PWD=/srv/app",
        'LISTEN 0 5 127.0.0.1:8766 0.0.0.0:* users:(("roxy-core",pid=9,fd=3))',
    ],
)
def test_rules_leave_ordinary_evidence_alone(text: str) -> None:
    """Counters, paths and telemetry that only look like secrets stay as they are."""
    assert Redactor().redact(text) == (text, 0)


def test_stream_never_splits_a_key_block() -> None:
    """A private key arriving in pieces is held back until its END line."""
    stream = Redactor().stream()
    out = stream.feed("first\n-----BEGIN PRIVATE KEY-----\nAAAA")
    out += stream.feed("BBBB\n-----END PRIVATE KEY-----\nlast password=x\n")
    out += stream.close()
    assert out == "first\n[REDACTED PRIVATE KEY]\nlast password=[REDACTED]\n"
    assert stream.count == 2


def test_extra_patterns_from_config() -> None:
    """Patterns from config are applied everywhere; a bad one is a ConfigError."""
    assert Redactor([r"ROXY-\d{6}"]).redact("ticket ROXY-123456") == (
        "ticket [REDACTED]",
        1,
    )
    with pytest.raises(
        ConfigError, match=r"redact.patterns\[0\] '\(' is not a regular"
    ):
        Redactor(["("])


SECRETS = (
    "hunter2-cmdline",
    "tok-cmdline-1234",
    "logbearer-abcdef123",
    "logdbpass-999",
    "logtoken-777",
    "MIIlogkeymaterial",
    "logapikey-555",
    "ROXY-424242",
    "cfgbearer-xyz",
)

LISTENER = """
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(5)
print(s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()
    c.recv(4096)
    c.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n"
              b"Connection: close\\r\\n\\r\\nok")
    c.close()
"""


@pytest.fixture
def secretive_listener() -> Iterator[int]:
    """A service whose command line carries a password and a token."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            LISTENER,
            "--password",
            SECRETS[0],
            f"--token={SECRETS[1]}",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    port = int(process.stdout.readline())
    yield port
    process.kill()
    process.wait()
    process.stdout.close()


def test_no_secret_reaches_the_bundle(tmp_path: Path, secretive_listener: int) -> None:
    """Secrets in a command line, log lines and config appear nowhere in the bundle."""
    log_file = tmp_path / "service.log"
    log_file.write_text(
        "2030-01-01T00:00:00.000 INFO app Authorization: Bearer logbearer-abcdef123\n"
        "2030-01-01T00:00:01.000 ERROR app cannot reach "
        "postgres://app:logdbpass-999@db/x\n"
        "2030-01-01T00:00:02.000 INFO app GET /cb?access_token=logtoken-777&x=1\n"
        "2030-01-01T00:00:03.000 ERROR app loaded key\n"
        "-----BEGIN RSA PRIVATE KEY-----\nMIIlogkeymaterial\n"
        "-----END RSA PRIVATE KEY-----\n"
        "2030-01-01T00:00:04.000 WARNING app retrying with api_key=logapikey-555\n"
        "2030-01-01T00:00:05.000 INFO app ticket ROXY-424242 opened\n"
    )
    config = write_config(
        tmp_path,
        target={
            "url": f"http://127.0.0.1:{secretive_listener}",
            "log_file": str(log_file),
            "journal_directory": str(tmp_path / "no-journal"),
        },
        load={"headers": {"Authorization": "Bearer cfgbearer-xyz"}},
        redact={"patterns": [r"ROXY-\d{6}"]},
    )
    result = CliRunner().invoke(
        cli, ["capture", "--no-load", "--config", str(config), "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    (archive,) = tmp_path.glob("evidence_bundle_*.tar.gz")
    bundle = Bundle.open(archive)
    for name in bundle.names():
        text = bundle.read_text(name)
        leaked = [secret for secret in SECRETS if secret in text]
        assert leaked == [], f"{name} holds {leaked}"
    counts = {f["path"]: f["redactions"] for f in bundle.manifest()["files"]}
    assert counts["before/process/summary.json"] >= 2
    assert counts["before/journal/entries.jsonl"] >= 6
    cmdline = json.loads(bundle.read_text("before/process/summary.json"))
    assert "--password [REDACTED]" in cmdline["listeners"][0]["tree"][0]["cmdline"]
    assert "Bearer [REDACTED]" in bundle.read_text("manifest.json")
