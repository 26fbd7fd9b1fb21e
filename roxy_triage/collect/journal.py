"""The service's log over a window: from the journal, or from its log file.

Sources, in order: ``systemd.journal.Reader`` (systemd-python);
``journalctl -o json`` when that module is missing; the service's own log
file when there is no journal, or the journal holds nothing of the unit.
Every source becomes the same ``entries.jsonl`` (time, priority, pid,
message), which ``analyse`` turns into counts a reader can act on.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from roxy_triage.collect import CollectContext, Evidence, collector
from roxy_triage.collect.command import Unavailable, run_small
from roxy_triage.config import Target

# A unit's own lines carry _SYSTEMD_UNIT (system manager) or
# _SYSTEMD_USER_UNIT (user manager); the manager's lines about the unit
# ("Started", "Main process exited") carry UNIT or USER_UNIT.
UNIT_FIELDS = ("_SYSTEMD_UNIT", "_SYSTEMD_USER_UNIT", "UNIT", "USER_UNIT")
JOURNAL_DIRS = (Path("/run/log/journal"), Path("/var/log/journal"))
MAX_ENTRIES = 50_000
SAMPLES_PER_ROUTE = 1

_LEVELS = {"CRITICAL": 2, "ERROR": 3, "WARNING": 4, "WARN": 4, "INFO": 6, "DEBUG": 7}
_STAMP = re.compile(
    r"^(?P<stamp>\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?)\s+"
    r"(?:(?P<level>CRITICAL|ERROR|WARNING|WARN|INFO|DEBUG)\s+)?(?P<rest>.*)$"
)
_CONTINUATION = re.compile(
    r"^(\s|Traceback \(most recent call last\)|During handling of the above|"
    r"The above exception was|[A-Za-z_][\w.]*(Error|Exception|Warning|Exit|Interrupt)"
    r"\b(:|$))"
)
_EXCEPTION_LINE = re.compile(
    r"^(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|Warning|Exit|Interrupt))\b"
    r"(?::\s*(?P<msg>.*))?$"
)
_DISCONNECT = re.compile(
    r"client disconnected|broken pipe|connection reset", re.IGNORECASE
)
_PIPE = re.compile(r"BrokenPipeError|ConnectionResetError|Broken pipe|Connection reset")
_COMPLETE = re.compile(
    r"\[(?P<id>\w+)\] Complete: route=(?P<route>\w+), total=(?P<total>\d+)ms, "
    r"subprocess=(?P<sub>\d+)ms, size=(?P<size>\d+)b(?:, status=(?P<status>\d+))?"
)
_REQUEST_ID = re.compile(r"\[(?P<id>[0-9a-f]{8})\] ")


class NoJournal(Unavailable):
    """The host keeps no journal this collector can read."""


def journal_entries_reader(
    directory: str, unit: str, since: float
) -> Iterator[dict[str, Any]]:
    """The unit's entries since ``since`` through systemd.journal.Reader."""
    from systemd import journal

    if directory:
        if not Path(directory).is_dir():
            raise NoJournal(f"journal directory {directory} does not exist")
        reader = journal.Reader(path=directory)
    else:
        if not any(_has_journal_files(path) for path in JOURNAL_DIRS):
            raise NoJournal("no journal files in /run/log/journal or /var/log/journal")
        reader = journal.Reader()
    with reader:
        for field in UNIT_FIELDS:
            reader.add_match(**{field: unit})
            reader.add_disjunction()
        reader.seek_realtime(datetime.fromtimestamp(since, UTC))
        for entry in reader:
            yield _normalise(entry)


def _has_journal_files(path: Path) -> bool:
    try:
        return any(path.rglob("*.journal"))
    except OSError:
        return False


def _normalise(entry: dict[str, Any]) -> dict[str, Any]:
    stamp = entry.get("__REALTIME_TIMESTAMP")
    if isinstance(stamp, datetime):
        moment = stamp.timestamp()
    elif stamp is not None:
        moment = int(stamp) / 1_000_000
    else:
        moment = None
    message = entry.get("MESSAGE", "")
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    elif isinstance(message, list):
        # journalctl -o json prints binary messages as arrays of bytes.
        message = bytes(message).decode("utf-8", "replace")
    priority = entry.get("PRIORITY")
    pid = entry.get("_PID")
    return {
        "ts": moment,
        "priority": int(priority) if priority not in (None, "") else None,
        "pid": int(pid) if pid not in (None, "") else None,
        "unit": next((str(entry[f]) for f in UNIT_FIELDS if entry.get(f)), None),
        "identifier": entry.get("SYSLOG_IDENTIFIER") or entry.get("_COMM"),
        "message": str(message),
    }


def parse_log_file(lines: Iterable[str], since: float) -> Iterator[dict[str, Any]]:
    """Entries from a plain log file; a line without a timestamp continues the last."""
    current: dict[str, Any] | None = None
    for raw in lines:
        line = raw.rstrip("\n")
        stamped = _STAMP.match(line)
        if stamped:
            current = {
                "ts": _parse_stamp(stamped["stamp"]),
                "priority": _LEVELS.get(stamped["level"] or ""),
                "pid": None,
                "unit": None,
                "identifier": None,
                "message": stamped["rest"] if stamped["level"] else line,
            }
            if stamped["level"]:
                current["message"] = f"{stamped['level']} {stamped['rest']}"
        elif current is None:
            continue
        else:
            current = {**current, "message": line}
        if current["ts"] is None or current["ts"] >= since:
            yield current


def _parse_stamp(text: str) -> float | None:
    text = text.replace(",", ".").replace(" ", "T").replace("Z", "+00:00")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    # A stamp without a zone is local time, as logging's asctime writes it.
    return moment.timestamp()


def _group_events(entries: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Error lines with the traceback lines that follow them, as one event each.

    journald stores each line of a multi-line log record as its own entry, so
    a traceback arrives as a run of entries from one process.
    """
    events: list[list[dict[str, Any]]] = []
    open_event: list[dict[str, Any]] | None = None
    for entry in entries:
        message = entry["message"]
        if (
            open_event is not None
            and entry["pid"] == open_event[-1]["pid"]
            and _CONTINUATION.match(message)
            and not _STARTS_NEW.match(message)
        ):
            open_event.append(entry)
            continue
        priority = entry["priority"]
        if (priority is not None and priority <= 3) or message.startswith(
            "Traceback (most recent call last)"
        ):
            open_event = [entry]
            events.append(open_event)
        else:
            open_event = None
    return events


_STARTS_NEW = re.compile(r"^(ERROR|CRITICAL) ")


def _signature(event: list[dict[str, Any]]) -> str:
    """What makes two events the same problem: the exception, or the message shape."""
    for entry in reversed(event):
        found = _EXCEPTION_LINE.match(entry["message"].strip())
        if found:
            return _shape(f"{found['type']}: {found['msg'] or ''}".rstrip(": "))
    return _shape(_REQUEST_ID.sub("", event[0]["message"]))


def _shape(text: str) -> str:
    text = re.sub(r"0x[0-9a-f]+|\b[0-9a-f]{8,}\b", "X", text)
    text = re.sub(r"\d+(\.\d+)?", "N", text)
    return text[:200]


def analyse(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts, error signatures and request telemetry from normalised entries."""
    events = _group_events(entries)
    signatures: dict[str, dict[str, Any]] = {}
    unexpected = expected = tracebacks = unhandled_pipes = 0
    for event in events:
        text = "\n".join(entry["message"] for entry in event)
        has_traceback = "Traceback (most recent call last)" in text
        tracebacks += has_traceback
        unhandled_pipes += bool(_PIPE.search(text))
        if _DISCONNECT.search(event[0]["message"]) and not has_traceback:
            expected += 1
            kind = "expected"
        else:
            unexpected += 1
            kind = "unexpected"
        signature = _signature(event)
        slot = signatures.setdefault(
            signature,
            {
                "signature": signature,
                "kind": kind,
                "count": 0,
                "first_ts": event[0]["ts"],
                "example": text[:4000],
            },
        )
        slot["count"] += 1
        slot["last_ts"] = event[0]["ts"]
    handled = sum(
        1
        for entry in entries
        if (entry["priority"] is None or entry["priority"] > 3)
        and "client disconnected after" in entry["message"]
    )
    return {
        "entries": len(entries),
        "errors": sum(
            1 for e in entries if e["priority"] is not None and e["priority"] <= 3
        ),
        "warnings": sum(1 for e in entries if e["priority"] == 4),
        "error_events": len(events),
        "tracebacks": tracebacks,
        "unexpected_errors": unexpected,
        "expected_errors": expected,
        "handled_disconnects": handled,
        "broken_pipes": unhandled_pipes + handled,
        "broken_pipes_unhandled": unhandled_pipes,
        "signatures": sorted(signatures.values(), key=lambda s: -s["count"]),
        "telemetry": telemetry(entries),
    }


def telemetry(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-route request times from the service's ``Complete:`` lines, with samples."""
    per_route: dict[str, list[tuple[int, int]]] = defaultdict(list)
    statuses: Counter[str] = Counter()
    sample_ids: dict[str, list[str]] = defaultdict(list)
    rate_limited = 0
    for entry in entries:
        message = entry["message"]
        if "Rate limited:" in message:
            rate_limited += 1
        found = _COMPLETE.search(message)
        if not found:
            continue
        per_route[found["route"]].append((int(found["total"]), int(found["sub"])))
        if found["status"]:
            statuses[found["status"]] += 1
        if len(sample_ids[found["route"]]) < SAMPLES_PER_ROUTE:
            sample_ids[found["route"]].append(found["id"])
    wanted = {rid for ids in sample_ids.values() for rid in ids}
    samples: dict[str, list[str]] = defaultdict(list)
    for entry in entries:
        found = _REQUEST_ID.search(entry["message"])
        if found and found["id"] in wanted:
            samples[found["id"]].append(entry["message"])
    routes = {}
    for route, times in per_route.items():
        totals = sorted(total for total, _ in times)
        spent = sum(sub for _, sub in times)
        routes[route] = {
            "requests": len(times),
            "total_ms_p50": _nearest_rank(totals, 0.50),
            "total_ms_p95": _nearest_rank(totals, 0.95),
            "total_ms_max": totals[-1],
            "subprocess_ms_sum": spent,
            "subprocess_share": round(spent / max(sum(totals), 1), 4),
        }
    return {
        "routes": routes,
        "statuses": dict(statuses),
        "rate_limited": rate_limited,
        "samples": {
            route: [line for rid in ids for line in samples[rid]]
            for route, ids in sample_ids.items()
        },
    }


def _nearest_rank(ordered: list[int], fraction: float) -> int:
    rank = max(1, -(-len(ordered) * fraction // 1))
    return ordered[int(rank) - 1]


@collector("journal")
def collect_journal(evidence: Evidence, context: CollectContext) -> None:
    target = context.config.target
    since = (
        context.since or time.time() - context.config.collect.journal_window_min * 60
    )
    window = {"since": since, "until": time.time()}
    entries, source, notes = read_entries(target, since, evidence)
    for note in notes:
        evidence.note(note)
    _write_entries(evidence, entries)
    summary = analyse(entries)
    summary.update(source=source, window=window, unit=target.unit)
    evidence.write_json("summary.json", summary)


def read_window(target: Target, since: float) -> dict[str, Any]:
    """Analyse the service's log since ``since``, without writing anything.

    The stress suite uses this to see what one check left in the log.
    """
    entries, source, _ = read_entries(target, since)
    return {**analyse(entries), "source": source}


def read_entries(
    target: Target, since: float, evidence: Evidence | None = None
) -> tuple[list[dict[str, Any]], str, list[str]]:
    """The unit's entries since ``since`` from the best source there is.

    Returns the entries, the source used and notes on the fallbacks taken.
    With ``evidence``, raw journalctl output is kept in the bundle too.
    """
    notes: list[str] = []
    entries: list[dict[str, Any]] = []
    source = ""
    try:
        entries, source = _from_journal(target, since, evidence, notes)
    except Unavailable as missing:
        if not target.log_file:
            raise Unavailable(f"{missing}, and no log_file is configured") from None
        notes.append(f"{missing}; read the service's log file instead")
    if not entries and target.log_file:
        if source:
            notes.append(
                f"the journal holds nothing of {target.unit}; read the log file"
            )
        entries, source = _from_log_file(target.log_file, since), "log_file"
    return entries, source, notes


def _from_journal(
    target: Target, since: float, evidence: Evidence | None, notes: list[str]
) -> tuple[list[dict[str, Any]], str]:
    try:
        import systemd.journal  # noqa: F401 - optional dependency
    except ImportError:
        notes.append(
            "systemd-python is not installed (pip install 'roxy-triage[systemd]'); "
            "used journalctl -o json"
        )
        return _from_journalctl(target, since, evidence), "journalctl"
    entries = journal_entries_reader(target.journal_directory, target.unit, since)
    return _keep_tail(entries), "journal"


def _from_journalctl(
    target: Target, since: float, evidence: Evidence | None
) -> list[dict[str, Any]]:
    argv = ["journalctl", "-o", "json", "--no-pager", "--since", f"@{int(since)}"]
    if target.journal_directory:
        argv += ["-D", target.journal_directory]
    for field in UNIT_FIELDS:
        argv += [f"{field}={target.unit}", "+"]
    argv.pop()
    if evidence is not None:
        result = evidence.run(argv, "journalctl.json")
        raw = evidence.context.staging.read_text(result.output)
        code, stderr = result.exit_code, result.stderr
    else:
        done = run_small(argv)
        raw, code, stderr = done.stdout, done.returncode, done.stderr
    if "No journal files were found" in stderr:
        raise NoJournal("journalctl found no journal files")
    if code != 0 and not raw.strip():
        first = stderr.strip().splitlines()[0] if stderr.strip() else ""
        raise NoJournal(first or f"journalctl exited {code}")
    entries = (
        _normalise(json.loads(line))
        for line in raw.splitlines()
        if line.startswith("{")
    )
    return _keep_tail(entries)


def _from_log_file(log_file: str, since: float) -> list[dict[str, Any]]:
    path = Path(log_file)
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            return _keep_tail(parse_log_file(handle, since))
    except FileNotFoundError:
        raise Unavailable(f"log file {path} does not exist") from None
    except PermissionError:
        raise Unavailable(
            f"log file {path} is not readable (permission denied)"
        ) from None


def _keep_tail(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    kept: list[dict[str, Any]] = []
    for entry in entries:
        kept.append(entry)
        if len(kept) > 2 * MAX_ENTRIES:
            del kept[:MAX_ENTRIES]
    return kept[-MAX_ENTRIES:]


def _write_entries(evidence: Evidence, entries: list[dict[str, Any]]) -> None:
    relative = evidence.name("entries.jsonl")
    with evidence.context.staging.stream(relative) as out:
        for entry in entries:
            out.write(json.dumps(entry, sort_keys=True) + "\n")
    evidence.record.files.append(relative)
