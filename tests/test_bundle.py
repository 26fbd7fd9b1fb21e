"""The sealed bundle: capture writes it, verify checks it, readers distrust it."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import signal
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from roxy_triage.bundle import Bundle, seal
from roxy_triage.cli import cli
from roxy_triage.errors import BundleError
from roxy_triage.redact import Redactor
from roxy_triage.staging import Staging
from tests.collecting import fake_binary, listener, write_config
from tests.plugins.services import RunningService


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str) -> Result:
    return runner.invoke(cli, list(args), catch_exceptions=False)


def only_bundle(directory: Path) -> Path:
    (archive,) = directory.glob("evidence_bundle_*.tar.gz")
    return archive


@pytest.fixture(scope="module")
def sealed(
    tmp_path_factory: pytest.TempPathFactory, patched: RunningService
) -> Iterator[Path]:
    """One real state capture of the patched roxy-core, shared read-only."""
    out = tmp_path_factory.mktemp("bundles")
    result = CliRunner().invoke(
        cli, ["capture", "--no-load", "--url", patched.url, "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    yield only_bundle(out)


def copy_bundle(source: Path, directory: Path) -> Path:
    target = directory / source.name
    target.write_bytes(source.read_bytes())
    Path(f"{target}.sha256").write_bytes(Path(f"{source}.sha256").read_bytes())
    return target


def rewrite(
    archive: Path, change: dict[str, bytes | None], extra: list[tarfile.TarInfo] = ()
) -> None:
    """Rebuild ``archive`` with members changed, removed (None) or added."""
    with tarfile.open(archive, "r:gz") as tar:
        members = [
            (info, tar.extractfile(info).read() if info.isreg() else b"")
            for info in tar
        ]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            relative = info.name.split("/", 1)[-1]
            if relative in change:
                if change[relative] is None:
                    continue
                data = change[relative]
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isreg() else None)
    archive.write_bytes(buffer.getvalue())


def reseal_checksum(archive: Path) -> None:
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    Path(f"{archive}.sha256").write_text(f"{digest}  {archive.name}\n")


def test_capture_writes_a_private_archive_and_checksum(sealed: Path) -> None:
    """Archive and .sha256 are mode 0600, named by UTC time; only the report beside."""
    checksum = Path(f"{sealed}.sha256")
    assert re.fullmatch(r"evidence_bundle_\d{8}_\d{6}\.tar\.gz", sealed.name)
    assert stat.S_IMODE(sealed.stat().st_mode) == 0o600
    assert stat.S_IMODE(checksum.stat().st_mode) == 0o600
    digest = hashlib.sha256(sealed.read_bytes()).hexdigest()
    assert checksum.read_text() == f"{digest}  {sealed.name}\n"
    report = sealed.name.replace(".tar.gz", ".md")
    assert sorted(p.name for p in sealed.parent.iterdir()) == sorted(
        [sealed.name, checksum.name, report]
    )


def test_manifest_records_the_capture(sealed: Path, patched: RunningService) -> None:
    """The manifest carries tool, host, times, config, collectors and file hashes."""
    bundle = Bundle.open(sealed)
    manifest = bundle.manifest()
    assert manifest["tool"]["name"] == "roxy-triage"
    assert manifest["host"]["hostname"] == os.uname().nodename
    assert manifest["started_at"] <= manifest["ended_at"]
    assert manifest["config"]["target"]["url"] == patched.url
    statuses = {record["name"]: record["status"] for record in manifest["collectors"]}
    assert statuses["sockets"] == statuses["process"] == "ok"
    listed = {entry["path"]: entry for entry in manifest["files"]}
    assert set(listed) == set(bundle.names()) - {"manifest.json"}
    for relative, entry in listed.items():
        data = bundle.read_bytes(relative)
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert "capture.log" in listed
    assert bundle.read_json("before/sockets/summary.json")["listener_count"] == 1


def test_verify_accepts_an_untouched_bundle(runner: CliRunner, sealed: Path) -> None:
    """verify exits 0 and counts the files it checked."""
    result = invoke(runner, "verify", str(sealed))
    assert result.exit_code == 0
    assert result.stdout.startswith(f"OK: {sealed} (")


def test_verify_reports_a_tampered_archive(
    runner: CliRunner, sealed: Path, tmp_path: Path
) -> None:
    """One flipped byte: the archive no longer matches its .sha256."""
    copy = copy_bundle(sealed, tmp_path)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    result = invoke(runner, "verify", "--json", str(copy))
    report = json.loads(result.stdout)
    assert result.exit_code == 1 and not report["ok"]
    assert "does not match" in report["problems"][0]


def test_verify_reports_a_tampered_member(
    runner: CliRunner, sealed: Path, tmp_path: Path
) -> None:
    """A member changed and the archive re-checksummed: the manifest catches it."""
    copy = copy_bundle(sealed, tmp_path)
    rewrite(copy, {"before/host/summary.json": b'{"cpus": 64}\n'})
    reseal_checksum(copy)
    result = invoke(runner, "verify", str(copy))
    assert result.exit_code == 1
    assert "size mismatch: before/host/summary.json" in result.stdout
    assert result.stdout.count("\n  ") == 1


def test_verify_reports_missing_and_extra_members(
    runner: CliRunner, sealed: Path, tmp_path: Path
) -> None:
    """A removed file is missing; an added one is extra."""
    copy = copy_bundle(sealed, tmp_path)
    root = Bundle.open(copy).root
    added = tarfile.TarInfo(f"{root}/before/planted.txt")
    added.size = 3
    rewrite(copy, {"capture.log": None}, [added])
    reseal_checksum(copy)
    report = json.loads(invoke(runner, "verify", "--json", str(copy)).stdout)
    assert sorted(report["problems"]) == [
        "extra: before/planted.txt is not in the manifest",
        "missing: capture.log",
    ]


@pytest.mark.parametrize(
    ("name", "kind", "message"),
    [
        ("evidence_bundle_x/../../../tmp/evil", tarfile.REGTYPE, "escapes the bundle"),
        ("/etc/evil", tarfile.REGTYPE, "escapes the bundle"),
        ("evidence_bundle_x/link", tarfile.SYMTYPE, "is a symbolic link"),
        ("evidence_bundle_x/hard", tarfile.LNKTYPE, "is a hard link"),
        ("evidence_bundle_x/dev", tarfile.CHRTYPE, "is a device"),
        ("evidence_bundle_x/fifo", tarfile.FIFOTYPE, "is a FIFO"),
    ],
)
def test_reading_rejects_unsafe_members(
    runner: CliRunner, tmp_path: Path, name: str, kind: bytes, message: str
) -> None:
    """Absolute paths, '..', links, devices and FIFOs make a bundle unreadable."""
    archive = tmp_path / "evidence_bundle_x.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        good = tarfile.TarInfo("evidence_bundle_x/manifest.json")
        good.size = 2
        tar.addfile(good, io.BytesIO(b"{}"))
        bad = tarfile.TarInfo(name)
        bad.type = kind
        bad.linkname = (
            "/etc/passwd" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
        )
        bad.size = 4 if kind == tarfile.REGTYPE else 0
        tar.addfile(bad, io.BytesIO(b"evil") if kind == tarfile.REGTYPE else None)
    reseal_checksum(archive)
    with pytest.raises(BundleError, match=message):
        Bundle.open(archive)
    result = invoke(runner, "verify", str(archive))
    assert result.exit_code == 1 and message in result.stdout
    assert not Path("/tmp/evil").exists()


def test_verify_of_a_file_that_is_not_a_bundle(
    runner: CliRunner, tmp_path: Path
) -> None:
    """Random bytes are reported as unreadable, without a traceback."""
    junk = tmp_path / "evidence_bundle_junk.tar.gz"
    junk.write_bytes(os.urandom(4096))
    result = invoke(runner, "verify", str(junk))
    assert result.exit_code == 1
    assert "not a readable bundle" in result.stdout
    assert "no evidence_bundle_junk.tar.gz.sha256 beside the archive" in result.stdout


def test_verify_of_a_missing_file_is_a_clear_error(
    runner: CliRunner, tmp_path: Path
) -> None:
    """A path that does not exist is one line on stderr and exit 4."""
    result = invoke(runner, "verify", str(tmp_path / "nope.tar.gz"))
    assert result.exit_code == 4
    assert result.stderr == f"Error: {tmp_path / 'nope.tar.gz'}: no such bundle\n"


def test_label_and_json_summary(
    runner: CliRunner, patched: RunningService, tmp_path: Path
) -> None:
    """--label names the bundle; --json prints the same summary as JSON."""
    result = invoke(
        runner,
        "capture",
        "--no-load",
        "--json",
        "--label",
        "before fix!",
        "--url",
        patched.url,
        "--out",
        str(tmp_path),
    )
    summary = json.loads(result.stdout)
    assert result.exit_code == 0
    assert summary["bundle"].endswith("_before-fix.tar.gz")
    assert {c["name"] for c in summary["collectors"]} >= {
        "sockets",
        "journal",
        "docker",
    }
    assert Path(summary["bundle"]).is_file()


def test_unreachable_target_still_leaves_a_bundle(
    runner: CliRunner, tmp_path: Path
) -> None:
    """Nothing listening: exit 3 with one line, and the state is still sealed."""
    with listener() as sock:
        port = sock.getsockname()[1]
    result = invoke(
        runner,
        "capture",
        "--no-load",
        "--url",
        f"http://127.0.0.1:{port}",
        "--out",
        str(tmp_path),
    )
    assert result.exit_code == 3
    (error,) = [
        line for line in result.stderr.splitlines() if line.startswith("Error:")
    ]
    assert f"nothing answers at http://127.0.0.1:{port} (Connection refused)" in error
    bundle = Bundle.open(only_bundle(tmp_path))
    assert bundle.manifest()["target"]["reachable"] is False
    assert bundle.read_json("before/sockets/summary.json")["listener_count"] == 0


def test_bad_config_is_a_one_line_error(runner: CliRunner, tmp_path: Path) -> None:
    """An unknown key names the file and the key; nothing is written."""
    config = write_config(tmp_path, load={"levles": [1, 2]})
    result = invoke(
        runner, "capture", "--config", str(config), "--out", str(tmp_path / "o")
    )
    assert result.exit_code == 2
    assert result.stderr == f"Error: {config}: [load] unknown key 'levles'\n"
    assert not (tmp_path / "o").exists()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, mounted for the test and unmounted after."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the full-disk test: {done.stderr}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(mount: Path) -> None:
    """Write until the filesystem is full."""
    descriptor = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(descriptor, b"\0" * 4096):
            pass
    except OSError as err:
        assert err.errno == errno.ENOSPC
    finally:
        os.close(descriptor)


def test_full_destination_leaves_nothing_half_written(
    runner: CliRunner, patched: RunningService, small_fs: Path
) -> None:
    """A destination with no space: exit 4, one line, no archive or partial file."""
    fill(small_fs)
    out = small_fs / "out"
    result = invoke(
        runner, "capture", "--no-load", "--url", patched.url, "--out", str(out)
    )
    assert result.exit_code == 4
    (error,) = [
        line for line in result.stderr.splitlines() if line.startswith("Error:")
    ]
    assert "No space left on device" in error
    leftovers = [
        p.name for p in out.rglob("*") if p.name.endswith((".tar.gz", ".partial"))
    ]
    assert leftovers == []


def test_archive_that_does_not_fit_keeps_the_staging_directory(
    tmp_path: Path, small_fs: Path
) -> None:
    """Sealing onto a full disk removes its partial archive and keeps the evidence."""
    staging = Staging(tmp_path / "staging", Redactor())
    staging.write_text("before/host/big.txt", os.urandom(400 * 1024).hex())
    fill(small_fs)
    with pytest.raises(BundleError, match="No space left on device") as raised:
        seal(staging, {"label": ""}, small_fs, "evidence_bundle_20260101_000000")
    assert str(staging.root) in raised.value.message
    assert staging.exists("before/host/big.txt")
    assert sorted(p.name for p in small_fs.iterdir()) == ["filler"]


def test_read_only_destination_is_refused_before_collecting(
    runner: CliRunner, patched: RunningService, small_fs: Path
) -> None:
    """A destination that cannot be written is refused at once, exit 4."""
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    result = invoke(
        runner, "capture", "--no-load", "--url", patched.url, "--out", str(small_fs)
    )
    assert result.exit_code == 4
    assert result.stderr.startswith(
        f"Error: cannot write to {small_fs}: Read-only file system"
    )
    assert "collecting" not in result.stderr


def test_ctrl_c_seals_what_was_collected(
    tmp_path: Path, patched: RunningService
) -> None:
    """Ctrl-C while a collector hangs: exit 130, a valid bundle marked interrupted."""
    fakes = tmp_path / "bin"
    fake_binary(fakes, "ss", "sleep 60")
    out = tmp_path / "out"
    env = {**os.environ, "PATH": f"{fakes}:{os.environ['PATH']}"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "roxy_triage",
            "capture",
            "--no-load",
            "--url",
            patched.url,
            "--out",
            str(out),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not list(out.glob(".*.staging/before/host")):
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=20)
    assert process.returncode == 130, stderr
    assert "INTERRUPTED" in stdout
    archive = only_bundle(out)
    manifest = Bundle.open(archive).manifest()
    assert manifest["interrupted"] is True
    sockets = next(r for r in manifest["collectors"] if r["name"] == "sockets")
    assert (sockets["status"], sockets["reason"]) == (
        "failed",
        "interrupted before it finished",
    )
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [archive.name, f"{archive.name}.sha256", archive.name.replace(".tar.gz", ".md")]
    )
    result = subprocess.run(
        [sys.executable, "-m", "roxy_triage", "verify", str(archive)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout
