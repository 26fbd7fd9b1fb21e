"""Real journal files from export-format entries, with no daemon running.

``systemd-journal-remote -o DIR/NAME.journal -`` reads the journal export
format on stdin and writes a journal file that ``journalctl -D DIR`` and
``systemd.journal.Reader(path=DIR)`` read like any other. Entries are plain
dicts of fields; the addressing fields the format requires are filled in
when missing, so a fixture states only what its test is about.
"""

from __future__ import annotations

import re
import struct
import subprocess
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

JOURNAL_REMOTE = Path("/lib/systemd/systemd-journal-remote")
# The address fields journald itself sets; export format carries them too.
ADDRESS_FIELDS = ("__REALTIME_TIMESTAMP", "__MONOTONIC_TIMESTAMP")
FIELD_NAME = re.compile(
    r"^(?:__REALTIME_TIMESTAMP|__MONOTONIC_TIMESTAMP|[A-Z_][A-Z0-9_]*)$"
)

FieldValue = str | bytes | int | datetime | uuid.UUID
Entry = Mapping[str, FieldValue]


def microseconds(moment: datetime) -> int:
    """Microseconds since the epoch; naive datetimes are taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def encode_value(value: FieldValue) -> bytes:
    if isinstance(value, datetime):
        return str(microseconds(value)).encode()
    if isinstance(value, uuid.UUID):
        return value.hex.encode()
    if isinstance(value, bytes):
        return value
    return str(value).encode()


def encode_field(name: str, value: FieldValue) -> bytes:
    """One field in export format: ``NAME=value`` or the length-prefixed form.

    A value with a newline (or other control bytes) cannot be a ``NAME=value``
    line, so it goes as ``NAME``, newline, its length as a little-endian u64,
    the raw bytes, newline.
    """
    if not FIELD_NAME.match(name):
        raise ValueError(f"not a journal field name: {name!r}")
    raw = encode_value(value)
    if any(byte < 0x20 for byte in raw):
        return name.encode() + b"\n" + struct.pack("<Q", len(raw)) + raw + b"\n"
    return name.encode() + b"=" + raw + b"\n"


def export_stream(
    entries: Iterable[Entry],
    realtime: datetime | None = None,
    spacing: timedelta = timedelta(milliseconds=1),
    boot_id: uuid.UUID | None = None,
) -> bytes:
    """Entries in export format, with timestamps and boot ID filled in.

    Without their own ``__REALTIME_TIMESTAMP``, entries are ``spacing`` apart
    starting at ``realtime`` (default: now), so backdating a whole journal is
    one argument. ``__MONOTONIC_TIMESTAMP`` follows the same steps from 1 s.
    """
    start = microseconds(realtime or datetime.now(UTC))
    step = spacing // timedelta(microseconds=1)
    boot = boot_id or uuid.uuid4()
    stream = bytearray()
    for index, entry in enumerate(entries):
        fields: dict[str, FieldValue] = {
            "__REALTIME_TIMESTAMP": start + index * step,
            "__MONOTONIC_TIMESTAMP": 1_000_000 + index * step,
            "_BOOT_ID": boot,
            **entry,
        }
        for name, value in fields.items():
            stream += encode_field(name, value)
        stream += b"\n"
    return bytes(stream)


def write_journal(
    entries: Iterable[Entry],
    directory: Path,
    name: str = "fixture",
    realtime: datetime | None = None,
    spacing: timedelta = timedelta(milliseconds=1),
    boot_id: uuid.UUID | None = None,
) -> Path:
    """Write ``directory/name.journal`` from the entries; return ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{name}.journal"
    written = subprocess.run(
        [str(JOURNAL_REMOTE), "-o", str(target), "-"],
        input=export_stream(entries, realtime, spacing, boot_id),
        capture_output=True,
        check=False,
    )
    if written.returncode != 0 or not target.exists():
        raise RuntimeError(
            f"systemd-journal-remote failed ({written.returncode}): "
            f"{written.stderr.decode(errors='replace')}"
        )
    return directory
