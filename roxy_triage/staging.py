"""The staging directory: the one API every stage reads and writes evidence by.

A capture fills a staging directory next to its destination; the bundle
module later seals it. Every write goes through the redactor, so nothing
secret reaches the disk, and is counted per file for the manifest.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, TextIO

from roxy_triage.errors import BundleError
from roxy_triage.redact import Redactor, StreamRedactor


def member_path(relative: str) -> PurePosixPath:
    """Check a path inside the bundle: relative, no ``..``, no empty parts."""
    path = PurePosixPath(relative)
    if path.is_absolute() or not path.parts or ".." in path.parts or "" in path.parts:
        raise BundleError(f"{relative!r} is not a safe path inside a bundle")
    return path


class Evidence(Protocol):
    """What later stages read evidence through: a Staging or a sealed Bundle."""

    def has(self, relative: str) -> bool: ...

    def read_json(self, relative: str) -> Any: ...

    def read_text(self, relative: str) -> str: ...


class Staging:
    """Evidence files under ``root``, written redacted, read back as needed."""

    def __init__(self, root: Path, redactor: Redactor) -> None:
        self.root = root
        self.redactor = redactor
        self._redactions: dict[str, int] = {}
        self._lock = threading.Lock()

    def path(self, relative: str) -> Path:
        return self.root.joinpath(*member_path(relative).parts)

    def exists(self, relative: str) -> bool:
        return self.path(relative).is_file()

    has = exists

    def write_text(self, relative: str, text: str) -> Path:
        clean, found = self.redactor.redact(text)
        with self._disk(relative):
            target = self._prepare(relative)
            target.write_text(clean, encoding="utf-8")
        self.count_redactions(relative, found)
        return target

    def write_json(self, relative: str, document: Any) -> Path:
        return self.write_text(
            relative, json.dumps(document, indent=2, sort_keys=True, default=str) + "\n"
        )

    @contextmanager
    def stream(self, relative: str) -> Iterator[RedactingWriter]:
        """A text file written in pieces, redacted a line at a time."""
        with (
            self._disk(relative),
            self._prepare(relative).open("w", encoding="utf-8") as out,
        ):
            writer = RedactingWriter(out, self.redactor.stream())
            try:
                yield writer
            finally:
                writer.close()
                self.count_redactions(relative, writer.redactions)

    def read_text(self, relative: str) -> str:
        return self.path(relative).read_text(encoding="utf-8")

    def read_json(self, relative: str) -> Any:
        return json.loads(self.read_text(relative))

    def adopt(self, relative: str) -> Path:
        """The path for a file a stage writes itself; it is redacted on sealing."""
        with self._disk(relative):
            return self._prepare(relative)

    def redact_in_place(self, relative: str) -> None:
        """Redact a file a stage wrote directly (see ``adopt``)."""
        path = self.path(relative)
        text = path.read_text(encoding="utf-8", errors="replace")
        clean, found = self.redactor.redact(text)
        if found:
            path.write_text(clean, encoding="utf-8")
        self.count_redactions(relative, found)

    def files(self) -> list[str]:
        """Every file in the staging directory, as sorted relative paths."""
        found = []
        for directory, _, names in os.walk(self.root):
            for name in names:
                full = Path(directory, name)
                found.append(full.relative_to(self.root).as_posix())
        return sorted(found)

    def redactions(self) -> dict[str, int]:
        with self._lock:
            return dict(self._redactions)

    @contextmanager
    def _disk(self, relative: str) -> Iterator[None]:
        """Turn a failed write into an error that says which file, and why."""
        try:
            yield
        except OSError as err:
            raise BundleError(
                f"cannot write {self.path(relative)}: {err.strerror or err}"
            ) from None

    def _prepare(self, relative: str) -> Path:
        target = self.path(relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def count_redactions(self, relative: str, found: int) -> None:
        with self._lock:
            self._redactions[relative] = self._redactions.get(relative, 0) + found


class RedactingWriter:
    """A text sink that redacts before anything reaches the file."""

    def __init__(self, handle: TextIO, redactor: StreamRedactor) -> None:
        self._handle = handle
        self._redactor = redactor
        self.written = 0

    @property
    def redactions(self) -> int:
        return self._redactor.count

    def write(self, text: str) -> None:
        clean = self._redactor.feed(text)
        if clean:
            self._handle.write(clean)
            self.written += len(clean)

    def close(self) -> None:
        rest = self._redactor.close()
        if rest:
            self._handle.write(rest)
            self.written += len(rest)
