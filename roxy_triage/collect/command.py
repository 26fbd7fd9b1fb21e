"""Running an inspection command: no shell, a deadline, output capped on disk.

The command runs in its own process group with ``LC_ALL=C.UTF-8`` so its
output parses the same everywhere. Its stdout streams through the redactor
into the staging directory; past the cap, the head is dropped and the tail
kept, because the end of a log or a listing is usually what explains the
incident. At the deadline the whole group is killed and what it had printed
is kept.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import selectors
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roxy_triage.redact import Redactor, StreamRedactor

STDERR_KEPT = 4096
READ_CHUNK = 64 * 1024


class Unavailable(Exception):
    """The evidence source is absent here: no binary, no daemon, no permission."""


class Cancelled(Exception):
    """The capture was interrupted while this collector ran."""


@dataclass
class CommandResult:
    """What happened when one command ran, as the manifest records it."""

    argv: list[str]
    output: str
    exit_code: int | None = None
    duration_s: float = 0.0
    timed_out: bool = False
    cancelled: bool = False
    bytes_kept: int = 0
    bytes_dropped: int = 0
    stderr: str = ""
    redactions: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "argv": self.argv,
            "output": self.output,
            "exit_code": self.exit_code,
            "duration_s": round(self.duration_s, 4),
            "timed_out": self.timed_out,
            "cancelled": self.cancelled,
            "bytes_kept": self.bytes_kept,
            "bytes_dropped": self.bytes_dropped,
            "stderr": self.stderr,
        }


@dataclass
class TailFile:
    """A file that keeps at most ``cap`` bytes: the last ones written.

    Output goes to two alternating segment files of half the cap each; when
    the newer one fills, the older is dropped. Memory stays flat however
    much a command prints.
    """

    target: Path
    cap: int
    dropped: int = 0
    _segments: list[Path] = field(default_factory=list)
    _sizes: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._half = max(self.cap // 2, 1)
        self._serial = 0
        self._open_segment()

    def write(self, text: str) -> None:
        data = text.encode("utf-8", "replace")
        while data:
            room = self._half - self._sizes[-1]
            piece, data = data[:room], data[room:]
            self._handle.write(piece)
            self._sizes[-1] += len(piece)
            if self._sizes[-1] >= self._half:
                self._rotate()

    def close(self) -> int:
        """Join the kept segments into the target; return the bytes kept."""
        self._handle.close()
        with self.target.open("wb") as out:
            if self.dropped:
                out.write(
                    f"[roxy-triage: output over {self.cap} bytes; the first "
                    f"{self.dropped} bytes were dropped, the rest follows]\n".encode()
                )
            for segment in self._segments:
                with segment.open("rb") as piece:
                    shutil.copyfileobj(piece, out)
                segment.unlink()
        return sum(self._sizes)

    def _open_segment(self) -> None:
        self._serial += 1
        segment = self.target.with_name(f".{self.target.name}.part{self._serial}")
        self._segments.append(segment)
        self._sizes.append(0)
        self._handle = segment.open("wb")

    def _rotate(self) -> None:
        self._handle.close()
        if len(self._segments) == 2:
            oldest = self._segments.pop(0)
            self.dropped += self._sizes.pop(0)
            oldest.unlink()
        self._open_segment()


def command_environment() -> dict[str, str]:
    """The environment commands run with: ours, in a fixed locale."""
    env = dict(os.environ)
    env.update(LC_ALL="C.UTF-8", LANG="C.UTF-8", SYSTEMD_PAGER="", PAGER="cat")
    # systemctl and journalctl colour and truncate for terminals only, but
    # say so explicitly: the output goes to a file a human reads later.
    env.update(SYSTEMD_COLORS="0", SYSTEMD_LESS="")
    return env


def run_small(
    argv: list[str], timeout_s: float = 10.0
) -> subprocess.CompletedProcess[str]:
    """Run a command whose output is small, outside any capture, into memory.

    For the stress suite's quick looks (listeners now, the log since a
    moment ago); evidence for the bundle goes through ``run_command``.
    """
    try:
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            env=command_environment(),
        )
    except FileNotFoundError:
        raise Unavailable(f"{argv[0]} is not installed (not found on PATH)") from None
    except subprocess.TimeoutExpired:
        raise Unavailable(f"{argv[0]} did not answer within {timeout_s:g} s") from None


def run_command(
    argv: list[str],
    target: Path,
    output_name: str,
    redactor: Redactor,
    timeout_s: float,
    cap_bytes: int,
    cancel: threading.Event,
) -> CommandResult:
    """Run ``argv`` with stdout streamed, redacted and capped into ``target``."""
    binary = shutil.which(argv[0], path=os.environ.get("PATH"))
    if binary is None:
        raise Unavailable(f"{argv[0]} is not installed (not found on PATH)")
    result = CommandResult(argv=list(argv), output=output_name)
    began = time.monotonic()
    try:
        process = subprocess.Popen(
            [binary, *argv[1:]],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=command_environment(),
            start_new_session=True,
        )
    except PermissionError:
        raise Unavailable(f"{binary}: permission denied") from None
    except OSError as err:
        raise Unavailable(f"{binary}: cannot run: {err.strerror}") from None
    sink = TailFile(target, cap_bytes)
    stream = redactor.stream()
    try:
        stderr = _pump(process, sink, stream, began + timeout_s, cancel, result)
    finally:
        _stop_group(process)
        rest = stream.close()
        if rest:
            sink.write(rest)
        result.bytes_kept = sink.close()
    result.bytes_dropped = sink.dropped
    result.stderr, stderr_redactions = redactor.redact(stderr)
    result.redactions = stream.count + stderr_redactions
    result.exit_code = process.returncode
    result.duration_s = time.monotonic() - began
    return result


def _pump(
    process: subprocess.Popen[bytes],
    sink: TailFile,
    redactor: StreamRedactor,
    deadline: float,
    cancel: threading.Event,
    result: CommandResult,
) -> str:
    """Move output to the sink until the command exits, times out or is cancelled."""
    assert process.stdout is not None and process.stderr is not None
    decoders = {
        process.stdout: codecs.getincrementaldecoder("utf-8")("replace"),
        process.stderr: codecs.getincrementaldecoder("utf-8")("replace"),
    }
    stderr_tail = ""
    with selectors.DefaultSelector() as selector:
        for pipe in decoders:
            selector.register(pipe, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                result.timed_out = True
                break
            if cancel.is_set():
                result.cancelled = True
                break
            # Wake at least every 0.2 s to notice a cancelled capture.
            for key, _ in selector.select(min(remaining, 0.2)):
                chunk = os.read(key.fd, READ_CHUNK)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                text = decoders[key.fileobj].decode(chunk)
                if key.fileobj is process.stdout:
                    clean = redactor.feed(text)
                    if clean:
                        sink.write(clean)
                else:
                    stderr_tail = (stderr_tail + text)[-STDERR_KEPT:]
    if not result.timed_out and not result.cancelled:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.05))
        except subprocess.TimeoutExpired:
            result.timed_out = True
    return stderr_tail


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """Kill the command's whole process group if anything of it is left."""
    # Also when the leader has exited: children it left behind in the group
    # would otherwise outlive the capture.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    for pipe in (process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()
