"""The kernel's TCP counters, read from /proc/net/netstat and /proc/net/snmp.

The counters are system-wide and only ever grow (until a reboot), so a single
reading says nothing: what belongs to a load level or an incident is the
difference between a reading before and one after. Both files hold pairs of
lines, a header line of names and a line of values, each starting with the
section name (``TcpExt:``, ``Tcp:``, ``IpExt:``...).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

NETSTAT = Path("/proc/net/netstat")
SNMP = Path("/proc/net/snmp")

# The counters that show accept-queue, handshake and reset trouble. A full
# accept queue drops the handshake's last ACK (ListenOverflows, ListenDrops);
# the client then retransmits its SYN after about 1 s, 3 s and 7 s
# (TCPSynRetrans, RetransSegs), which is where multi-second latencies under
# modest concurrency come from.
TCP_COUNTERS = (
    "TcpExt.ListenOverflows",
    "TcpExt.ListenDrops",
    "TcpExt.TCPSynRetrans",
    "TcpExt.TCPTimeouts",
    "TcpExt.TCPAbortOnData",
    "TcpExt.TCPAbortOnClose",
    "TcpExt.TCPAbortOnTimeout",
    "TcpExt.TCPBacklogDrop",
    "TcpExt.TCPReqQFullDrop",
    "TcpExt.SyncookiesSent",
    "Tcp.ActiveOpens",
    "Tcp.PassiveOpens",
    "Tcp.AttemptFails",
    "Tcp.EstabResets",
    "Tcp.RetransSegs",
    "Tcp.InErrs",
    "Tcp.OutRsts",
)


def parse_counters(text: str) -> dict[str, int]:
    """Flatten /proc/net/netstat or /proc/net/snmp text to ``{"Section.Name": n}``."""
    counters: dict[str, int] = {}
    lines = [line.split() for line in text.splitlines() if line.strip()]
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        section = names[0].rstrip(":")
        if values[0].rstrip(":") != section or len(names) != len(values):
            # A header without its matching value line: the file is not in
            # the two-line layout this parser knows, so skip the section.
            continue
        for name, value in zip(names[1:], values[1:], strict=True):
            try:
                counters[f"{section}.{name}"] = int(value)
            except ValueError:
                continue
    return counters


def read_counters(paths: Iterable[Path] = (NETSTAT, SNMP)) -> dict[str, int]:
    """Every counter of the given /proc files; a missing file adds nothing."""
    counters: dict[str, int] = {}
    for path in paths:
        try:
            counters.update(parse_counters(path.read_text(encoding="ascii")))
        except OSError:
            # Not Linux, or /proc is not mounted: the caller records that the
            # counters are missing rather than failing the run.
            continue
    return counters


def delta(
    before: Mapping[str, int],
    after: Mapping[str, int],
    names: Iterable[str] = TCP_COUNTERS,
) -> dict[str, int]:
    """How much each named counter grew between two readings.

    A counter missing from either reading (an older kernel, no /proc) is left
    out rather than reported as zero, so that "no overflow" is never claimed
    without evidence.
    """
    return {
        name: after[name] - before[name]
        for name in names
        if name in before and name in after
    }
