"""Raw load records: one per request, compact in memory, one JSON line on disk.

On disk a record is one line of JSONL::

    {"level": 0, "concurrency": 50, "index": 17, "intended_s": 0.000000,
     "start_s": 0.000000, "connect_s": 0.000081, "first_byte_s": 0.000412,
     "end_s": 0.000431, "status": 200, "bytes": 182, "error": null}

Times are seconds from the start of the level (a monotonic clock), written
to the microsecond. ``intended_s`` is when the request was due: the same as
``start_s`` in a closed loop, its arrival time in an open loop. ``connect_s``
is null when the request went on a reused keep-alive connection or the
connect failed; ``first_byte_s`` is null when no byte arrived; ``status`` is
null when no complete response arrived. ``error`` is null for a success or
one of ``ERROR_CLASSES``.

In memory a level's records are columns of machine numbers (about 50 bytes a
request), so that a million-request run keeps no Python object per request.
"""

from __future__ import annotations

import json
import math
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from roxy_triage.errors import ConfigError

# The error classes, in the order tables and summaries list them. In the
# columns a record's error is a code: 0 for success, else 1 + its index here.
ERROR_CLASSES = (
    "refused",
    "reset",
    "broken_pipe",
    "connect_timeout",
    "read_timeout",
    "empty_reply",
    "protocol",
    "http_4xx",
    "http_5xx",
)
OK = 0
REFUSED, RESET, BROKEN_PIPE, CONNECT_TIMEOUT, READ_TIMEOUT = 1, 2, 3, 4, 5
EMPTY_REPLY, PROTOCOL, HTTP_4XX, HTTP_5XX = 6, 7, 8, 9
# A request that never finished: cancelled by Ctrl-C, or never sent.
UNFINISHED = 255

_ERROR_CODES = {name: code for code, name in enumerate(ERROR_CLASSES, start=1)}
_ERROR_JSON = ["null", *(json.dumps(name) for name in ERROR_CLASSES)]
NAN = math.nan


def error_class(code: int) -> str | None:
    """The error class name of a code; None for a success."""
    return ERROR_CLASSES[code - 1] if code else None


def status_error(status: int) -> int:
    """The error code a complete HTTP response carries by its status alone."""
    if 200 <= status < 400:
        return OK
    if 400 <= status < 500:
        return HTTP_4XX
    if 500 <= status < 600:
        return HTTP_5XX
    # 1xx as a final answer, or a code outside HTTP's range.
    return PROTOCOL


# What a column holds for a request that has not finished.
_UNSET = {"d": NAN, "H": 0, "Q": 0, "B": UNFINISHED}


def _unset(typecode: str, size: int) -> array[Any]:
    return array(typecode, [_UNSET[typecode]]) * size


@dataclass(frozen=True)
class Record:
    """One request's outcome, as one JSONL line says it."""

    level: int
    concurrency: int
    index: int
    intended_s: float
    start_s: float
    connect_s: float | None
    first_byte_s: float | None
    end_s: float
    status: int | None
    bytes: int
    error: str | None


class LevelRecords:
    """The records of one level as columns, indexed by request number.

    Times are kept as raw monotonic readings; ``origin`` is the level's start
    on the same clock, subtracted only when a record is written or read out.
    """

    __slots__ = (
        "bytes",
        "concurrency",
        "connect",
        "end",
        "error",
        "first_byte",
        "intended",
        "level",
        "origin",
        "start",
        "status",
    )

    def __init__(self, level: int, concurrency: int, size: int) -> None:
        self.level = level
        self.concurrency = concurrency
        self.origin = 0.0
        # Preallocated so that the engine writes by index and records stay in
        # request order whatever order they finish in.
        self.intended = _unset("d", size)
        self.start = _unset("d", size)
        self.connect = _unset("d", size)
        self.first_byte = _unset("d", size)
        self.end = _unset("d", size)
        self.status = _unset("H", size)
        self.bytes = _unset("Q", size)
        self.error = _unset("B", size)

    def __len__(self) -> int:
        return len(self.error)

    def _columns(self) -> tuple[array[Any], ...]:
        return (
            self.intended,
            self.start,
            self.connect,
            self.first_byte,
            self.end,
            self.status,
            self.bytes,
            self.error,
        )

    def _grow(self, size: int) -> None:
        more = size - len(self)
        for column in self._columns():
            column.extend(array(column.typecode, [_UNSET[column.typecode]]) * more)

    def dump(self) -> tuple[bytes, ...]:
        """The columns as bytes, to hand a worker's records to its parent."""
        return tuple(column.tobytes() for column in self._columns())

    def place(self, offset: int, dumped: tuple[bytes, ...]) -> None:
        """Put a worker's dumped records at indexes ``offset`` onwards."""
        for column, payload in zip(self._columns(), dumped, strict=True):
            part = array(column.typecode, payload)
            column[offset : offset + len(part)] = part

    def finished(self) -> Iterator[int]:
        """Indexes of the requests that have an outcome."""
        return (i for i, code in enumerate(self.error) if code != UNFINISHED)

    def record(self, index: int) -> Record:
        """Request ``index`` as a Record, times relative to the level start."""
        code = self.error[index]
        status = self.status[index]
        return Record(
            level=self.level,
            concurrency=self.concurrency,
            index=index,
            intended_s=self.intended[index] - self.origin,
            start_s=self.start[index] - self.origin,
            connect_s=_offset(self.connect[index], self.origin),
            first_byte_s=_offset(self.first_byte[index], self.origin),
            end_s=self.end[index] - self.origin,
            status=status or None,
            bytes=self.bytes[index],
            error=error_class(code),
        )

    def put(self, index: int, record: Record) -> None:
        """Store a record read back from disk (times already relative)."""
        if index >= len(self):
            self._grow(max(index + 1, 2 * len(self)))
        self.intended[index] = record.intended_s
        self.start[index] = record.start_s
        self.connect[index] = _or_nan(record.connect_s)
        self.first_byte[index] = _or_nan(record.first_byte_s)
        self.end[index] = record.end_s
        self.status[index] = record.status or 0
        self.bytes[index] = record.bytes
        self.error[index] = _ERROR_CODES[record.error] if record.error else OK


def _offset(value: float, origin: float) -> float | None:
    return None if math.isnan(value) else value - origin


def _or_nan(value: float | None) -> float:
    return NAN if value is None else value


def _seconds(value: float, origin: float) -> str:
    return "null" if value != value else f"{value - origin:.6f}"


def write_jsonl(records: LevelRecords, stream: IO[str]) -> int:
    """Append the finished records of a level as JSON lines; return how many."""
    origin = records.origin
    prefix = f'{{"level": {records.level}, "concurrency": {records.concurrency}'
    intended, start, connect = records.intended, records.start, records.connect
    first_byte, end, status = records.first_byte, records.end, records.status
    received, error = records.bytes, records.error
    lines = []
    written = 0
    for i in records.finished():
        code = error[i]
        lines.append(
            f'{prefix}, "index": {i}, '
            f'"intended_s": {intended[i] - origin:.6f}, '
            f'"start_s": {start[i] - origin:.6f}, '
            f'"connect_s": {_seconds(connect[i], origin)}, '
            f'"first_byte_s": {_seconds(first_byte[i], origin)}, '
            f'"end_s": {end[i] - origin:.6f}, '
            f'"status": {status[i] or "null"}, "bytes": {received[i]}, '
            f'"error": {_ERROR_JSON[code]}}}\n'
        )
        # Written in batches: the text of a million records never sits in
        # memory at once.
        if len(lines) >= 8192:
            stream.writelines(lines)
            written += len(lines)
            lines.clear()
    stream.writelines(lines)
    return written + len(lines)


def iter_records(path: Path) -> Iterator[Record]:
    """The records of a JSONL file, one at a time."""
    try:
        with path.open(encoding="utf-8") as stream:
            for number, line in enumerate(stream, start=1):
                if line.strip():
                    yield _parse_line(line, path, number)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read load records: {err}") from err


def _parse_line(line: str, path: Path, number: int) -> Record:
    try:
        fields: dict[str, Any] = json.loads(line)
        record = Record(**fields)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{path}:{number}: not a load record: {err}") from None
    if record.error is not None and record.error not in _ERROR_CODES:
        raise ConfigError(
            f"{path}:{number}: unknown error class {record.error!r}"
        ) from None
    return record


def read_records(path: Path) -> list[LevelRecords]:
    """The levels of a JSONL records file, in the order they first appear.

    Records are placed by their index, so a file cut short by Ctrl-C reads
    back with its unfinished requests marked as such.
    """
    levels: dict[int, LevelRecords] = {}
    for record in iter_records(path):
        records = levels.get(record.level)
        if records is None:
            records = levels[record.level] = LevelRecords(
                record.level, record.concurrency, 0
            )
        records.put(record.index, record)
    return list(levels.values())
