"""The sealed evidence bundle: writing it safely, reading it warily, verifying it.

Writing: the staging directory gets a manifest (each file's size, SHA-256
and redaction count), then is archived under a temporary name beside the
destination, fsynced and renamed into place with mode 0600, and a
``<archive>.sha256`` is written the same way. Nothing half-written is left
at the destination: a failure or Ctrl-C removes the temporary file, and the
staging directory stays for the engineer when the archive could not be made.

Reading: a bundle comes from another machine or an old incident; its
members must be regular files or directories under one top directory, with
no absolute paths, no ``..``, no links and no devices.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any

from roxy_triage.errors import BundleError
from roxy_triage.staging import Staging, member_path

PREFIX = "evidence_bundle_"
MANIFEST = "manifest.json"
FORMAT = "roxy-triage-bundle/1"
# Evidence is small; a bundle that unpacks to more than this is not ours.
MAX_UNPACKED_BYTES = 1024 * 1024 * 1024


def bundle_name(started: datetime, label: str | None = None) -> str:
    """``evidence_bundle_<UTC yyyymmdd_HHMMSS>[_label]``."""
    name = PREFIX + started.strftime("%Y%m%d_%H%M%S")
    if label:
        clean = re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-.")
        if clean:
            name += f"_{clean[:64]}"
    return name


def prepare_destination(out_dir: Path, name: str) -> Path:
    """Check the destination is writable and make the staging directory in it."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = out_dir / f".{name}.staging"
        staging.mkdir(mode=0o700)
    except FileExistsError:
        raise BundleError(
            f"{staging} already exists: another capture started in the same second? "
            "Retry, or give --label"
        ) from None
    except PermissionError:
        raise BundleError(
            f"cannot write to {out_dir}: permission denied; use --out"
        ) from None
    except OSError as err:
        raise BundleError(
            f"cannot write to {out_dir}: {err.strerror}; use --out"
        ) from None
    return staging


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def file_table(staging: Staging) -> list[dict[str, Any]]:
    """Size, SHA-256 and redaction count of every staged file but the manifest."""
    redactions = staging.redactions()
    table = []
    for relative in staging.files():
        if relative == MANIFEST:
            continue
        path = staging.path(relative)
        table.append(
            {
                "path": relative,
                "size": path.stat().st_size,
                "sha256": sha256_file(path),
                "redactions": redactions.get(relative, 0),
            }
        )
    return table


@dataclass
class SealedBundle:
    path: Path
    sha256: str
    size: int

    @property
    def checksum_path(self) -> Path:
        return checksum_path(self.path)


def checksum_path(archive: Path) -> Path:
    return archive.with_name(archive.name + ".sha256")


class _HashingWriter(io.RawIOBase):
    """Hash what passes through on its way to the file, so it is read once."""

    def __init__(self, handle: IO[bytes]) -> None:
        super().__init__()
        self._handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._handle.write(data)
        self.digest.update(data)
        self.size += len(data)
        return len(data)


def seal(
    staging: Staging, manifest: dict[str, Any], out_dir: Path, name: str
) -> SealedBundle:
    """Write manifest and archive; on success remove the staging directory."""
    archive = out_dir / f"{name}.tar.gz"
    partial = out_dir / f".{name}.tar.gz.partial"
    checksum = checksum_path(archive)
    checksum_partial = out_dir / f".{checksum.name}.partial"
    try:
        manifest = {**manifest, "format": FORMAT, "files": file_table(staging)}
        staging.write_json(MANIFEST, manifest)
        digest, size = _write_archive(staging, name, partial)
        partial.replace(archive)
        _write_private(checksum_partial, f"{digest}  {archive.name}\n".encode())
        checksum_partial.replace(checksum)
        _fsync_directory(out_dir)
    except BaseException as err:
        for leftover in (partial, checksum_partial):
            leftover.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise BundleError(
                f"cannot write {archive}: {err.strerror or err}; "
                f"the evidence collected so far is in {staging.root}"
            ) from None
        raise
    shutil.rmtree(staging.root, ignore_errors=True)
    return SealedBundle(archive, digest, size)


def _write_archive(staging: Staging, name: str, partial: Path) -> tuple[str, int]:
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        hashing = _HashingWriter(handle)
        # mtime=0 in the gzip header keeps identical evidence byte-identical.
        with (
            gzip.GzipFile(fileobj=hashing, mode="wb", mtime=0) as compressed,
            tarfile.open(
                fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT
            ) as tar,
        ):
            for relative in sorted({*staging.files()}):
                _add(tar, staging.path(relative), f"{name}/{relative}")
        handle.flush()
        os.fsync(handle.fileno())
    return hashing.digest.hexdigest(), hashing.size


def _add(tar: tarfile.TarFile, path: Path, arcname: str) -> None:
    info = tarfile.TarInfo(arcname)
    stat = path.stat()
    info.size = stat.st_size
    info.mtime = int(stat.st_mtime)
    info.mode = 0o600
    info.uname = info.gname = ""
    with path.open("rb") as handle:
        tar.addfile(info, handle)


def _write_private(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@dataclass
class Bundle:
    """A bundle read into memory, its members checked before anything is used."""

    path: Path
    root: str
    members: dict[str, bytes] = field(repr=False)

    @classmethod
    def open(cls, path: Path) -> Bundle:
        try:
            with tarfile.open(path, mode="r:gz") as tar:
                return cls._read(path, tar)
        except FileNotFoundError:
            raise BundleError(f"{path}: no such bundle") from None
        except PermissionError:
            raise BundleError(f"{path}: not readable (permission denied)") from None
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
            raise BundleError(f"{path}: not a readable bundle ({err})") from None

    @classmethod
    def _read(cls, path: Path, tar: tarfile.TarFile) -> Bundle:
        members: dict[str, bytes] = {}
        roots: set[str] = set()
        unpacked = 0
        for info in tar:
            relative = _checked_member(path, info)
            roots.add(PurePosixPath(info.name).parts[0])
            if len(roots) > 1:
                raise BundleError(f"{path}: members under more than one top directory")
            if info.isdir() or relative is None:
                continue
            unpacked += info.size
            if unpacked > MAX_UNPACKED_BYTES:
                raise BundleError(
                    f"{path}: unpacks to more than 1 GiB; refusing to read"
                )
            handle = tar.extractfile(info)
            assert handle is not None
            members[relative] = handle.read()
        if not roots:
            raise BundleError(f"{path}: the archive is empty")
        return cls(path, roots.pop(), members)

    def names(self) -> list[str]:
        return sorted(self.members)

    def has(self, relative: str) -> bool:
        return relative in self.members

    def read_bytes(self, relative: str) -> bytes:
        try:
            return self.members[relative]
        except KeyError:
            raise BundleError(f"{self.path}: no {relative} in the bundle") from None

    def read_text(self, relative: str) -> str:
        return self.read_bytes(relative).decode("utf-8", "replace")

    def read_json(self, relative: str) -> Any:
        try:
            return json.loads(self.read_bytes(relative))
        except json.JSONDecodeError as err:
            raise BundleError(
                f"{self.path}: {relative} is not valid JSON ({err})"
            ) from None

    def manifest(self) -> dict[str, Any]:
        manifest = self.read_json(MANIFEST)
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise BundleError(f"{self.path}: {MANIFEST} is not a roxy-triage manifest")
        return manifest


def _unsafe_kind(info: tarfile.TarInfo) -> str | None:
    if info.isreg() or info.isdir():
        return None
    if info.issym():
        return "a symbolic link"
    if info.islnk():
        return "a hard link"
    if info.isfifo():
        return "a FIFO"
    if info.isdev():
        return "a device"
    return "not a regular file"


def _checked_member(path: Path, info: tarfile.TarInfo) -> str | None:
    """The member's path inside the bundle, or BundleError if it is unsafe."""
    kind = _unsafe_kind(info)
    if kind:
        raise BundleError(
            f"{path}: member {info.name!r} is {kind}; refusing to read it"
        )
    name = PurePosixPath(info.name)
    if name.is_absolute() or ".." in name.parts:
        raise BundleError(f"{path}: member {info.name!r} escapes the bundle directory")
    if len(name.parts) < 2:
        return None
    relative = PurePosixPath(*name.parts[1:]).as_posix()
    try:
        member_path(relative)
    except BundleError:
        raise BundleError(f"{path}: member {info.name!r} is not a safe path") from None
    return relative


@dataclass
class Verification:
    path: Path
    problems: list[str] = field(default_factory=list)
    checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": str(self.path),
            "ok": self.ok,
            "files_checked": self.checked,
            "problems": self.problems,
        }


def verify(path: Path) -> Verification:
    """Check the archive against its .sha256 and every member against the manifest."""
    report = Verification(path)
    if not path.is_file():
        raise BundleError(f"{path}: no such bundle")
    checksum = checksum_path(path)
    if checksum.is_file():
        expected = (
            checksum.read_text().split()[0] if checksum.read_text().strip() else ""
        )
        actual = sha256_file(path)
        if expected != actual:
            report.problems.append(
                f"archive SHA-256 {actual} does not match {checksum.name} "
                f"({expected or 'empty'})"
            )
    else:
        report.problems.append(f"no {checksum.name} beside the archive")
    try:
        bundle = Bundle.open(path)
        manifest = bundle.manifest()
    except BundleError as err:
        report.problems.append(err.message.removeprefix(f"{path}: "))
        return report
    listed = {entry["path"]: entry for entry in manifest.get("files", [])}
    for relative, entry in sorted(listed.items()):
        if not bundle.has(relative):
            report.problems.append(f"missing: {relative}")
            continue
        data = bundle.read_bytes(relative)
        report.checked += 1
        if len(data) != entry["size"]:
            report.problems.append(
                f"size mismatch: {relative} is {len(data)} bytes, "
                f"manifest says {entry['size']}"
            )
        elif hashlib.sha256(data).hexdigest() != entry["sha256"]:
            report.problems.append(f"hash mismatch: {relative}")
    for relative in bundle.names():
        if relative != MANIFEST and relative not in listed:
            report.problems.append(f"extra: {relative} is not in the manifest")
    return report
