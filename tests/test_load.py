"""The load engine against real servers on loopback, one behaviour per test."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from roxy_triage.config import LoadPlan
from roxy_triage.errors import ConfigError, TargetUnreachable
from roxy_triage.load import (
    MatrixResult,
    iter_records,
    read_records,
    run_matrix,
    summarize,
)
from tests.load_servers import (
    OK,
    FullBacklog,
    Script,
    ScriptedServer,
    answer,
    answer_and_close,
    answer_first,
    body_until_close,
    chunked,
    close_silently,
    one_answer_then_half_close,
    reset,
    stall,
    stall_first,
    truncated,
)
from tests.plugins.services import RunningService
from tests.support import free_port

Start = Callable[[Script], ScriptedServer]


@pytest.fixture
def scripted() -> Iterator[Start]:
    """Start scripted servers; all closed at teardown."""
    started: list[ScriptedServer] = []

    def start(script: Script) -> ScriptedServer:
        server = ScriptedServer(script)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def plan(**changes: object) -> LoadPlan:
    """A small plan: one level of a few requests with a short timeout."""
    values: dict[str, object] = {"levels": [2], "requests": 6, "timeout_s": 5.0}
    values.update(changes)
    return LoadPlan(**values)


def errors_of(result: MatrixResult, level: int = 0) -> dict[str, int]:
    """The non-zero error counts of a level."""
    return {name: n for name, n in result.levels[level].errors.items() if n}


def test_success_counts_and_statuses(scripted: Start, tmp_path: Path) -> None:
    """Every answered request is a success with its status counted."""
    server = scripted(answer(OK))
    result = run_matrix(plan(), server.url, tmp_path / "records.jsonl")
    level = result.levels[0]
    assert (level.finished, level.successes, level.statuses) == (6, 6, {200: 6})
    assert errors_of(result) == {}
    assert level.latency is not None and level.latency.count == 6
    assert level.connect is not None and level.connect.count == 6


@pytest.mark.parametrize(
    ("status", "error"), [(503, "http_5xx"), (404, "http_4xx"), (429, "http_4xx")]
)
def test_error_statuses_are_classed(scripted: Start, status: int, error: str) -> None:
    """4xx and 5xx answers are complete responses counted in their class."""
    response = b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % status
    result = run_matrix(plan(), scripted(answer(response)).url, None)
    assert errors_of(result) == {error: 6}
    assert result.levels[0].statuses == {status: 6}


def test_refused_when_nothing_listens(tmp_path: Path) -> None:
    """A port with no listener gives `refused` and TargetUnreachable, records kept."""
    records = tmp_path / "records.jsonl"
    url = f"http://127.0.0.1:{free_port()}/run"
    with pytest.raises(TargetUnreachable, match="nothing answers"):
        run_matrix(plan(levels=[2, 5]), url, records)
    kept = list(iter_records(records))
    assert [record.error for record in kept] == ["refused"] * 6
    assert {record.level for record in kept} == {0}


def test_reset_after_request(scripted: Start) -> None:
    """A server that aborts the connection with an RST gives `reset`."""
    result = run_matrix(plan(), scripted(reset).url, None)
    assert errors_of(result) == {"reset": 6}


def test_close_without_answer_is_empty_reply(scripted: Start) -> None:
    """A clean close with no response byte gives `empty_reply`."""
    result = run_matrix(plan(), scripted(close_silently).url, None)
    assert errors_of(result) == {"empty_reply": 6}


def test_stale_keep_alive_connection_is_not_retried(scripted: Start) -> None:
    """A request caught by a closing keep-alive connection fails once, no retry."""
    server = scripted(one_answer_then_half_close)
    result = run_matrix(plan(levels=[1], keep_alive=True), server.url, None)
    level = result.levels[0]
    # Requests alternate: one answered on a fresh connection, the next sent
    # on it as the server hangs up, then a fresh connection again.
    assert (level.successes, errors_of(result)) == (3, {"empty_reply": 3})


def test_stall_past_timeout_is_read_timeout(scripted: Start) -> None:
    """A request sent but never answered within the timeout is `read_timeout`."""
    result = run_matrix(plan(timeout_s=0.3), scripted(stall).url, None)
    assert errors_of(result) == {"read_timeout": 6}
    assert result.levels[0].latency.max >= 300


def test_full_accept_queue_is_connect_timeout() -> None:
    """A handshake stuck behind a full accept queue is `connect_timeout`."""
    listener = FullBacklog()
    try:
        result = run_matrix(plan(timeout_s=0.3, requests=4), listener.url, None)
    finally:
        listener.close()
    assert errors_of(result) == {"connect_timeout": 4}
    assert result.levels[0].connect is None


@pytest.mark.parametrize(
    "garbage",
    [
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.2\r\n",
        b"HTTP/1.1 200 OK\r\nX\r\n",
    ],
)
def test_malformed_answer_is_protocol(scripted: Start, garbage: bytes) -> None:
    """Bytes that are not an HTTP response give `protocol`."""
    result = run_matrix(plan(), scripted(answer(garbage)).url, None)
    assert errors_of(result) == {"protocol": 6}


def test_truncated_body_is_protocol(scripted: Start) -> None:
    """A close before the promised Content-Length arrived gives `protocol`."""
    result = run_matrix(plan(), scripted(truncated).url, None)
    assert errors_of(result) == {"protocol": 6}


def test_chunked_body_over_keep_alive(scripted: Start, tmp_path: Path) -> None:
    """Chunked answers in pieces parse whole, and the connection is reused."""
    records = tmp_path / "records.jsonl"
    result = run_matrix(
        plan(levels=[1], keep_alive=True), scripted(chunked).url, records
    )
    assert result.levels[0].successes == 6
    kept = list(iter_records(records))
    head = len(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert {record.bytes for record in kept} == {head + 10 + 11 + 5}
    # One handshake, then five requests on the same connection.
    assert [record.connect_s is not None for record in kept] == [True] + [False] * 5


def test_body_until_close_is_a_success(scripted: Start) -> None:
    """A body framed only by the server closing the connection is complete."""
    result = run_matrix(plan(), scripted(body_until_close).url, None)
    assert (result.levels[0].successes, result.levels[0].statuses) == (6, {200: 6})


def test_head_answer_without_its_body(scripted: Start) -> None:
    """A HEAD answer announcing a body it never sends completes at its headers."""
    head_answer = OK[: OK.index(b"\r\n\r\n") + 4]
    server = scripted(answer(head_answer))
    result = run_matrix(plan(method="HEAD", body="", keep_alive=True), server.url, None)
    assert (result.levels[0].successes, errors_of(result)) == (6, {})


def test_connection_close_answer_in_keep_alive_mode(scripted: Start) -> None:
    """A server that says `Connection: close` costs a new connection, not an error."""
    result = run_matrix(plan(keep_alive=True), scripted(answer_and_close).url, None)
    assert (result.levels[0].successes, errors_of(result)) == (6, {})


def test_open_loop_counts_from_intended_start(scripted: Start, tmp_path: Path) -> None:
    """In an open loop, requests due during a stall carry the stall in their latency."""
    records = tmp_path / "records.jsonl"
    server = scripted(stall_first(0.5))
    run_matrix(
        plan(levels=[1], requests=10, rate=50.0, keep_alive=True), server.url, records
    )
    kept = sorted(iter_records(records), key=lambda record: record.index)
    assert [record.intended_s for record in kept][:3] == pytest.approx([0, 0.02, 0.04])
    # Due at 20 ms, sent only once the first request's 500 ms stall ended.
    second = kept[1]
    assert second.start_s - second.intended_s >= 0.4
    assert second.end_s - second.intended_s >= 0.45


def test_records_read_back_to_the_same_summary(scripted: Start, tmp_path: Path) -> None:
    """A JSONL file alone reproduces each level's summary."""
    records = tmp_path / "records.jsonl"
    result = run_matrix(plan(levels=[1, 3]), scripted(answer(OK)).url, records)
    again = [summarize(level) for level in read_records(records)]
    assert [level.concurrency for level in again] == [1, 3]
    for live, reread in zip(result.levels, again, strict=True):
        assert (reread.finished, reread.successes) == (live.finished, live.successes)
        assert reread.latency.p99 == pytest.approx(live.latency.p99, abs=0.002)
        assert reread.duration_s == pytest.approx(live.duration_s, abs=1e-5)


def test_record_lines_carry_every_field(scripted: Start, tmp_path: Path) -> None:
    """Each JSONL line is one request with its level's concurrency and times."""
    records = tmp_path / "records.jsonl"
    run_matrix(plan(levels=[3], requests=4), scripted(answer(OK)).url, records)
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    assert [line["index"] for line in lines] == [0, 1, 2, 3]
    first = lines[0]
    assert set(first) == {
        "level", "concurrency", "index", "intended_s", "start_s", "connect_s",
        "first_byte_s", "end_s", "status", "bytes", "error",
    }  # fmt: skip
    assert (first["concurrency"], first["status"], first["error"]) == (3, 200, None)
    assert (
        first["intended_s"]
        <= first["start_s"]
        < first["connect_s"]
        < first["first_byte_s"]
        <= first["end_s"]
    )


def test_ctrl_c_keeps_what_finished(scripted: Start, tmp_path: Path) -> None:
    """Ctrl-C mid-level drops requests in flight and keeps the finished ones."""
    records = tmp_path / "records.jsonl"
    server = scripted(answer_first(3))

    def interrupt_on_progress(line: str) -> None:
        if "done," in line:
            signal.raise_signal(signal.SIGINT)

    result = run_matrix(
        plan(levels=[1, 2], requests=10, timeout_s=10.0),
        server.url,
        records,
        progress=interrupt_on_progress,
        progress_every_s=0.3,
    )
    assert result.interrupted
    assert [(level.finished, level.successes) for level in result.levels] == [(3, 3)]
    assert result.levels[0].interrupted
    assert len(list(iter_records(records))) == 3


def test_workers_share_a_level(patched: RunningService, tmp_path: Path) -> None:
    """Two worker processes split a level; every request is recorded once."""
    records = tmp_path / "records.jsonl"
    result = run_matrix(
        plan(levels=[4, 6], requests=60, workers=2), f"{patched.url}/run", records
    )
    assert [level.successes for level in result.levels] == [60, 60]
    assert all(level.client.workers == 2 for level in result.levels)
    indexes = [(record.level, record.index) for record in iter_records(records)]
    assert sorted(indexes) == [(level, i) for level in (0, 1) for i in range(60)]


def test_non_loopback_target_is_refused_without_asking() -> None:
    """Load never leaves loopback unless the caller allows it."""
    with pytest.raises(ConfigError, match="allow-remote"):
        run_matrix(plan(), "http://192.0.2.1:8766/run", None)


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/", "http:///run", "127.0.0.1:80"])
def test_url_must_be_http_with_a_host(url: str) -> None:
    """A URL that is not http:// with a host is a config error."""
    with pytest.raises(ConfigError, match="http://"):
        run_matrix(plan(), url, None)


def test_patched_profile_has_no_accept_queue_overflow(
    patched: RunningService,
) -> None:
    """Patched roxy-core takes C=50 new connections without an overflow."""
    result = run_matrix(plan(levels=[50], requests=200), f"{patched.url}/run", None)
    level = result.levels[0]
    assert (level.successes, errors_of(result)) == (200, {})
    assert level.kernel is not None
    assert level.kernel["TcpExt.ListenOverflows"] == 0
    assert level.kernel["TcpExt.ListenDrops"] == 0


def test_legacy_profile_overflows_its_accept_queue(legacy: RunningService) -> None:
    """Legacy roxy-core's backlog of 5 overflows at C=50, as the kernel counts."""
    result = run_matrix(
        plan(levels=[50], requests=50, timeout_s=4.0), f"{legacy.url}/run", None
    )
    level = result.levels[0]
    assert level.kernel is not None
    overflowed = (
        level.kernel["TcpExt.ListenOverflows"] + level.kernel["TcpExt.ListenDrops"]
    )
    # Its rate limit (10 req/s, burst 20) may also answer 429s; the accept
    # queue is what this test is about.
    assert overflowed > 0
