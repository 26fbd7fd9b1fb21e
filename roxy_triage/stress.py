"""The stress suite: named checks, defined as data, each pass or fail with evidence.

A check is a kind (what it does) and parameters (what it sends and
expects). The defaults describe roxy-core; ``[stress.checks.<name>]`` in
the config overrides parameters and ``[stress] disabled`` drops checks, so
the suite fits another service without code. Checks run one after another,
in order: the rate-limit burst runs late, and the last check waits out a
``Retry-After`` before it calls the service unhealthy.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from roxy_triage.collect.command import Unavailable
from roxy_triage.collect.journal import read_window
from roxy_triage.collect.sockets import count_listeners
from roxy_triage.config import Config
from roxy_triage.errors import ConfigError

log = logging.getLogger(__name__)

PING = '{"command": "ping"}'


@dataclass
class Answer:
    """One HTTP exchange as a check sees it."""

    status: int | None
    elapsed_ms: float
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str = ""

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None

    def brief(self) -> str:
        if self.error:
            return f"{self.error} after {self.elapsed_ms:.0f} ms"
        return f"{self.status} in {self.elapsed_ms:.0f} ms"


class Client:
    """Plain HTTP/1.1 to the target, a new connection per request."""

    def __init__(self, host: str, port: int, timeout_s: float = 10.0) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s

    def request(
        self,
        method: str,
        path: str,
        body: str | bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        began = time.monotonic()
        connection = http.client.HTTPConnection(
            self.host, self.port, timeout=self.timeout_s
        )
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            data = response.read()
            return Answer(
                response.status,
                (time.monotonic() - began) * 1000,
                {name.lower(): value for name, value in response.getheaders()},
                data,
            )
        except (OSError, http.client.HTTPException) as err:
            return Answer(None, (time.monotonic() - began) * 1000, error=_describe(err))
        finally:
            connection.close()

    def connect(self) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=self.timeout_s)


def _describe(err: BaseException) -> str:
    if isinstance(err, http.client.RemoteDisconnected):
        return "closed without a response"
    if isinstance(err, TimeoutError):
        return "timed out"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return type(err).__name__


@dataclass
class CheckResult:
    name: str
    description: str
    passed: bool
    evidence: str
    figures: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "passed": self.passed,
            "evidence": self.evidence,
            "figures": self.figures,
            "duration_s": round(self.duration_s, 3),
        }


@dataclass
class Situation:
    """What a check may use: the target, its config, and a look at its log."""

    client: Client
    config: Config


Verdict = tuple[bool, str, dict[str, Any]]
CheckKind = Callable[[Situation, dict[str, Any]], Verdict]


def expect_status(situation: Situation, params: dict[str, Any]) -> Verdict:
    """One request; passes on an expected status (and a JSON body if asked)."""
    body = params.get("body")
    if params.get("body_bytes"):
        body = b"x" * int(params["body_bytes"])
    answer = situation.client.request(
        params["method"], params["path"], body, params.get("headers")
    )
    expected = list(params["expect"])
    passed = answer.status in expected
    if passed and params.get("json_body"):
        passed = isinstance(answer.json(), dict)
        if not passed:
            return False, f"{answer.brief()}, but the body is not a JSON object", {}
    figures = {"status": answer.status, "elapsed_ms": round(answer.elapsed_ms, 1)}
    wanted = " or ".join(str(status) for status in expected)
    return (
        passed,
        f"{params['method']} {params['path']}: {answer.brief()} (want {wanted})",
        figures,
    )


def rapid_fire(situation: Situation, params: dict[str, Any]) -> Verdict:
    """Back-to-back calls, each on a new connection; all must succeed."""
    answers = [
        situation.client.request(params["method"], params["path"], params.get("body"))
        for _ in range(int(params["count"]))
    ]
    good = sum(1 for answer in answers if answer.status in params["expect"])
    slowest = max(answer.elapsed_ms for answer in answers)
    failures = sorted(
        {
            answer.brief().split(" in ")[0]
            for answer in answers
            if answer.status not in params["expect"]
        }
    )
    detail = f"; failures: {', '.join(failures)}" if failures else ""
    return (
        good == len(answers),
        f"{good}/{len(answers)} succeeded, slowest {slowest:.0f} ms{detail}",
        {"succeeded": good, "sent": len(answers), "slowest_ms": round(slowest, 1)},
    )


def connection_burst(situation: Situation, params: dict[str, Any]) -> Verdict:
    """Many new connections at once; all answered, none slower than the limit.

    This is what a small listen backlog fails: the kernel drops handshakes
    past it and the clients retry a second later.
    """
    count = int(params["count"])
    answers: list[Answer] = []
    lock = threading.Lock()
    start = threading.Barrier(count)

    def one() -> None:
        start.wait()
        answer = situation.client.request(
            params["method"], params["path"], params.get("body")
        )
        with lock:
            answers.append(answer)

    workers = [threading.Thread(target=one) for _ in range(count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    good = [a for a in answers if a.status in params["expect"]]
    slowest = max(answer.elapsed_ms for answer in answers)
    passed = len(good) == count and slowest <= params["max_ms"]
    return (
        passed,
        f"{len(good)}/{count} answered, slowest {slowest:.0f} ms "
        f"(limit {params['max_ms']} ms)",
        {"succeeded": len(good), "sent": count, "slowest_ms": round(slowest, 1)},
    )


def slow_request_vs_probe(situation: Situation, params: dict[str, Any]) -> Verdict:
    """A slow command in flight must not delay the health probe."""
    slow: list[Answer] = []
    worker = threading.Thread(
        target=lambda: slow.append(
            situation.client.request(
                params["method"], params["path"], params["slow_body"]
            )
        )
    )
    worker.start()
    time.sleep(float(params["settle_s"]))
    probe = situation.client.request(params["probe_method"], params["probe_path"])
    worker.join()
    passed = probe.status in params["expect"] and probe.elapsed_ms <= params["max_ms"]
    return (
        passed,
        f"probe {probe.brief()} while the slow call was in flight "
        f"(slow call: {slow[0].brief()}; limit {params['max_ms']} ms)",
        {"probe_ms": round(probe.elapsed_ms, 1), "probe_status": probe.status},
    )


def slow_client_vs_probe(situation: Situation, params: dict[str, Any]) -> Verdict:
    """A client trickling its headers must not hold up other clients."""
    trickler = situation.client.connect()
    stop = threading.Event()

    def trickle() -> None:
        request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
        for byte in request:
            if stop.wait(float(params["interval_s"])):
                return
            try:
                trickler.send(bytes([byte]))
            except OSError:
                return

    worker = threading.Thread(target=trickle)
    worker.start()
    try:
        time.sleep(float(params["settle_s"]))
        probes = [
            situation.client.request(params["probe_method"], params["probe_path"])
            for _ in range(int(params["probes"]))
        ]
    finally:
        stop.set()
        worker.join()
        trickler.close()
    good = sum(1 for probe in probes if probe.status in params["expect"])
    slowest = max(probe.elapsed_ms for probe in probes)
    passed = good == len(probes) and slowest <= params["max_ms"]
    return (
        passed,
        f"{good}/{len(probes)} probes answered while a client trickled its headers, "
        f"slowest {slowest:.0f} ms (limit {params['max_ms']} ms)",
        {"succeeded": good, "slowest_ms": round(slowest, 1)},
    )


def vanishing_client(situation: Situation, params: dict[str, Any]) -> Verdict:
    """A client that aborts mid-request leaves no unexpected error in the log."""
    # Let what earlier checks set off reach the log first, so the window
    # holds only what this client's disappearance caused.
    time.sleep(0.2)
    since = time.time()
    body = params["body"].encode()
    sock = situation.client.connect()
    head = (
        f"POST {params['path']} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body)
    time.sleep(float(params["abort_after_s"]))
    # SO_LINGER 0: close with a reset, as a client that gives up does.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    time.sleep(float(params["wait_s"]))
    try:
        window = read_window(situation.config.target, since)
    except Unavailable as missing:
        return False, f"cannot read the service's log to judge: {missing}", {}
    unexpected = window["unexpected_errors"]
    signatures = [
        s["signature"] for s in window["signatures"] if s["kind"] == "unexpected"
    ]
    detail = f": {'; '.join(signatures)}" if signatures else ""
    return (
        unexpected == 0,
        f"{unexpected} unexpected errors in the {window['source']} after the client "
        f"vanished, {window['handled_disconnects']} handled disconnects{detail}",
        {
            "unexpected_errors": unexpected,
            "handled_disconnects": window["handled_disconnects"],
        },
    )


def rate_limit_burst(situation: Situation, params: dict[str, Any]) -> Verdict:
    """A burst past the limit gets 429, each with Retry-After."""
    answers = [
        situation.client.request(params["method"], params["path"], params["body"])
        for _ in range(int(params["count"]))
    ]
    limited = [answer for answer in answers if answer.status == 429]
    without_retry = [
        answer for answer in limited if "retry-after" not in answer.headers
    ]
    first = next((i for i, a in enumerate(answers) if a.status == 429), None)
    passed = bool(limited) and not without_retry
    if not limited:
        evidence = (
            f"no 429 in {len(answers)} back-to-back calls: nothing limits the rate"
        )
    else:
        evidence = (
            f"{len(limited)}/{len(answers)} got 429, the first at call {first + 1}; "
            f"{len(limited) - len(without_retry)} carried Retry-After"
        )
    return (
        passed,
        evidence,
        {
            "limited": len(limited),
            "sent": len(answers),
            "without_retry_after": len(without_retry),
        },
    )


def listeners(situation: Situation, params: dict[str, Any]) -> Verdict:
    """Exactly the expected number of sockets listen on the target's port."""
    found, source = count_listeners(situation.client.port)
    owners = sorted(
        {f"{o['name']}[{o['pid']}]" for entry in found for o in entry["processes"]}
    )
    expected = int(params["expected"])
    return (
        len(found) == expected,
        f"{len(found)} listener(s) on port {situation.client.port} per {source}"
        f"{': ' + ', '.join(owners) if owners else ''} (want {expected})",
        {"listeners": len(found), "source": source},
    )


def keep_alive(situation: Situation, params: dict[str, Any]) -> Verdict:
    """Two requests on one HTTP/1.1 connection are both answered."""
    client = situation.client
    connection = http.client.HTTPConnection(
        client.host, client.port, timeout=client.timeout_s
    )
    statuses = []
    try:
        for _ in range(2):
            connection.request(params["method"], params["path"], params.get("body"))
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
    except (OSError, http.client.HTTPException) as err:
        return False, f"second request on one connection failed: {_describe(err)}", {}
    finally:
        connection.close()
    passed = all(status in params["expect"] for status in statuses)
    return passed, f"statuses {statuses} on one connection", {"statuses": statuses}


def healthy_after(situation: Situation, params: dict[str, Any]) -> Verdict:
    """The service still answers its health check, after honouring Retry-After."""
    answer = situation.client.request(params["method"], params["path"])
    waited = 0.0
    if answer.status == 429 and answer.headers.get("retry-after", "").isdigit():
        waited = min(float(answer.headers["retry-after"]), float(params["max_wait_s"]))
        time.sleep(waited)
        answer = situation.client.request(params["method"], params["path"])
    note = f" after waiting {waited:g} s as asked" if waited else ""
    return (
        answer.status in params["expect"],
        f"{params['method']} {params['path']}: {answer.brief()}{note}",
        {"status": answer.status, "waited_s": waited},
    )


@dataclass(frozen=True)
class CheckSpec:
    name: str
    description: str
    kind: CheckKind
    params: dict[str, Any]


def _run_request(**params: Any) -> dict[str, Any]:
    return {"method": "POST", "path": "/run", "expect": [200], **params}


SUITE: tuple[CheckSpec, ...] = (
    CheckSpec(
        "fast_path_ping",
        "ping answers",
        expect_status,
        _run_request(body=PING, json_body=True),
    ),
    CheckSpec(
        "fast_path_health",
        "GET /health answers",
        expect_status,
        {"method": "GET", "path": "/health", "expect": [200], "json_body": True},
    ),
    CheckSpec(
        "fast_path_status",
        "status answers",
        expect_status,
        _run_request(body='{"command": "status"}', json_body=True),
    ),
    CheckSpec(
        "unknown_command",
        "an unknown command gets a clean 400",
        expect_status,
        _run_request(
            body='{"command": "no-such-command"}', expect=[400], json_body=True
        ),
    ),
    CheckSpec(
        "malformed_json",
        "malformed JSON gets a clean 400",
        expect_status,
        _run_request(body="{not json", expect=[400], json_body=True),
    ),
    CheckSpec(
        "wrong_method",
        "a wrong method gets 405",
        expect_status,
        {"method": "PUT", "path": "/run", "body": "{}", "expect": [405]},
    ),
    CheckSpec(
        "oversized_body",
        "an oversized body gets 413",
        expect_status,
        _run_request(body_bytes=1024 * 1024, expect=[413]),
    ),
    CheckSpec(
        "rapid_fire",
        "50 rapid-fire calls all succeed",
        rapid_fire,
        _run_request(body=PING, count=50),
    ),
    CheckSpec(
        "connection_burst",
        "50 connections at once are all answered within 1 s",
        connection_burst,
        {
            "method": "GET",
            "path": "/health",
            "expect": [200],
            "count": 50,
            "max_ms": 1000,
        },
    ),
    CheckSpec(
        "keep_alive",
        "two requests on one connection are both answered",
        keep_alive,
        _run_request(body=PING),
    ),
    CheckSpec(
        "slow_command_vs_health",
        "a slow command does not delay health",
        slow_request_vs_probe,
        {
            "method": "POST",
            "path": "/run",
            "slow_body": '{"command": "sleep 2"}',
            "settle_s": 0.3,
            "probe_method": "GET",
            "probe_path": "/health",
            "expect": [200],
            "max_ms": 250,
        },
    ),
    CheckSpec(
        "slow_client_vs_others",
        "a slow client does not block others",
        slow_client_vs_probe,
        {
            "interval_s": 0.05,
            "settle_s": 0.3,
            "probes": 5,
            "probe_method": "GET",
            "probe_path": "/health",
            "expect": [200],
            "max_ms": 250,
        },
    ),
    CheckSpec(
        "vanishing_client",
        "a client that vanishes leaves no unexpected error",
        vanishing_client,
        {
            "path": "/run",
            "body": '{"command": "sleep 1"}',
            "abort_after_s": 0.3,
            "wait_s": 1.5,
        },
    ),
    CheckSpec(
        "single_listener",
        "exactly one listener on the port",
        listeners,
        {"expected": 1},
    ),
    CheckSpec(
        "rate_limit_burst",
        "a burst past the rate limit gets 429 with Retry-After",
        rate_limit_burst,
        _run_request(body='{"command": "echo burst"}', count=200),
    ),
    CheckSpec(
        "healthy_after",
        "the service is still healthy after the suite",
        healthy_after,
        {"method": "GET", "path": "/health", "expect": [200], "max_wait_s": 5},
    ),
)


def resolve(config: Config) -> list[CheckSpec]:
    """The suite with the config's overrides applied; unknown names are errors."""
    names = {spec.name for spec in SUITE}
    where = config.source
    for name in [*config.stress.disabled, *config.stress.checks]:
        if name not in names:
            raise ConfigError(f"{where}: [stress] no check named {name!r}")
    resolved = []
    for spec in SUITE:
        if spec.name in config.stress.disabled:
            continue
        overrides = config.stress.checks.get(spec.name, {})
        extra = sorted(set(overrides) - set(spec.params) - {"body_bytes", "headers"})
        if extra:
            raise ConfigError(
                f"{where}: [stress.checks.{spec.name}] unknown key {extra[0]!r}"
            )
        resolved.append(
            CheckSpec(
                spec.name, spec.description, spec.kind, {**spec.params, **overrides}
            )
        )
    return resolved


@dataclass
class SuiteResult:
    results: list[CheckResult]
    interrupted: bool = False

    @property
    def failed(self) -> list[CheckResult]:
        return [result for result in self.results if not result.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "checks": [result.to_dict() for result in self.results],
            "passed": len(self.results) - len(self.failed),
            "failed": len(self.failed),
            "total": len(self.results),
            "interrupted": self.interrupted,
        }


def run_suite(config: Config, progress: Callable[[str], None]) -> SuiteResult:
    """Run every check in order; Ctrl-C keeps the results so far."""
    target = config.target
    situation = Situation(Client(target.host, target.port), config)
    specs = resolve(config)
    results: list[CheckResult] = []
    progress(f"stress: {len(specs)} checks against {target.url}")
    try:
        for index, spec in enumerate(specs, 1):
            began = time.monotonic()
            try:
                passed, evidence, figures = spec.kind(situation, spec.params)
            except OSError as err:
                passed, evidence, figures = (
                    False,
                    f"could not run: {_describe(err)}",
                    {},
                )
            result = CheckResult(
                spec.name,
                spec.description,
                passed,
                evidence,
                figures,
                time.monotonic() - began,
            )
            results.append(result)
            log.info(
                "stress %s: %s (%s)", spec.name, "pass" if passed else "FAIL", evidence
            )
            mark = "pass" if passed else "FAIL"
            progress(f"  [{index:2}/{len(specs)}] {mark}  {spec.name}: {evidence}")
    except KeyboardInterrupt:
        return SuiteResult(results, interrupted=True)
    return SuiteResult(results)
