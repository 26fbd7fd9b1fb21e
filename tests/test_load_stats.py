"""Percentiles, kernel counter parsing and record round trips on fixed data."""

from __future__ import annotations

from pathlib import Path

import pytest

from roxy_triage import kernel
from roxy_triage.errors import ConfigError
from roxy_triage.load import read_records, summarize
from roxy_triage.load.records import LevelRecords, write_jsonl
from roxy_triage.load.stats import nearest_rank

# The first lines of /proc/net/netstat and /proc/net/snmp on a Debian 12 host.
NETSTAT = """\
TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows ListenDrops TCPSynRetrans
TcpExt: 35 214 239 241 198
IpExt: InNoRoutes InOctets
IpExt: 0 491286175
"""
SNMP = """\
Tcp: RtoAlgorithm RtoMin ActiveOpens PassiveOpens AttemptFails RetransSegs OutRsts
Tcp: 1 200 463018 462972 7 199 273
"""


@pytest.mark.parametrize(
    ("percentile", "expected"),
    [(50, 5), (90, 9), (95, 10), (99, 10), (100, 10), (1, 1)],
)
def test_nearest_rank_picks_a_measured_value(percentile: float, expected: int) -> None:
    """Nearest rank returns the smallest value covering the percentile."""
    assert nearest_rank(list(range(1, 11)), percentile) == expected


def test_counters_flatten_by_section() -> None:
    """Both /proc files flatten to Section.Name keys with integer values."""
    counters = kernel.parse_counters(NETSTAT) | kernel.parse_counters(SNMP)
    assert counters["TcpExt.ListenOverflows"] == 239
    assert counters["IpExt.InOctets"] == 491286175
    assert counters["Tcp.OutRsts"] == 273


def test_delta_leaves_out_counters_missing_from_a_reading() -> None:
    """A counter absent before or after is not reported as zero growth."""
    before = {"TcpExt.ListenOverflows": 239, "Tcp.OutRsts": 273}
    after = {"TcpExt.ListenOverflows": 245, "TcpExt.ListenDrops": 9}
    assert kernel.delta(before, after) == {"TcpExt.ListenOverflows": 6}


def test_live_counters_include_the_accept_queue_ones() -> None:
    """This host's /proc carries the counters the load matrix brackets."""
    counters = kernel.read_counters()
    assert {"TcpExt.ListenOverflows", "TcpExt.ListenDrops", "Tcp.RetransSegs"} <= set(
        counters
    )


def test_unfinished_requests_stay_out_of_the_summary(tmp_path: Path) -> None:
    """Requests without an outcome are neither written nor summarised."""
    records = LevelRecords(0, 2, 4)
    records.origin = 100.0
    for index, (end, status, code) in enumerate([(100.010, 200, 0), (100.030, 503, 9)]):
        records.intended[index] = records.start[index] = 100.0
        records.end[index] = end
        records.status[index] = status
        records.error[index] = code
    path = tmp_path / "records.jsonl"
    with path.open("w") as stream:
        assert write_jsonl(records, stream) == 2
    (level,) = read_records(path)
    summary = summarize(level)
    assert (summary.finished, summary.successes, summary.errors["http_5xx"]) == (
        2,
        1,
        1,
    )
    assert summary.latency.max == pytest.approx(30, abs=0.01)
    assert summarize(records).interrupted


def test_corrupt_records_file_names_the_line(tmp_path: Path) -> None:
    """A line that is not a record is an error naming file and line."""
    path = tmp_path / "records.jsonl"
    path.write_text('{"level": 0}\n')
    with pytest.raises(ConfigError, match=r"records\.jsonl:1"):
        read_records(path)
