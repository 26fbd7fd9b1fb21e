"""Secrets out of evidence before it touches the disk.

Everything a collector writes passes through a Redactor: credentials in
Authorization headers and URLs, passwords and tokens in arguments and
environment, and private key blocks. Counts per file go into the manifest,
so a reader knows something was taken out and where.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from roxy_triage.errors import ConfigError

MARK = "[REDACTED]"

# Names whose values are secrets wherever they appear as name=value,
# name: value, "name": "value", or --name value.
_SENSITIVE_NAME = (
    r"[A-Za-z0-9_.-]*(?:passw(?:or)?d|passphrase|secret|token|api[_-]?key|"
    r"access[_-]?key|private[_-]?key|client[_-]?secret|credentials?|session[_-]?id|"
    r"auth[_-]?key)[A-Za-z0-9_-]*"
)


# A secret's value: quoted (also with JSON-escaped quotes, as in a journal
# MESSAGE inside JSON), or a bare token.
_VALUE = r"""(?:(?P<quote>\\?["'])(?P<quoted>.*?)(?P=quote)|(?P<bare>[^\s"'\\,;&}]+))"""


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: re.Pattern[str]
    replacement: str | Callable[[re.Match[str]], str]


def _rule(
    name: str,
    pattern: str,
    replacement: str | Callable[[re.Match[str]], str],
    flags: int = re.IGNORECASE,
) -> Rule:
    return Rule(name, re.compile(pattern, flags), replacement)


# Bare numbers and literals next to a secret's name are counters and flags
# ("TCPMD5NotFound": 0, "MPJoinNoTokenFound": 3), not secrets; leaving them
# also keeps JSON valid. A numeric secret of twelve digits or more is still
# taken out.
_NOT_A_SECRET = re.compile(r"\d{1,11}|true|false|null|none|yes|no", re.IGNORECASE)


def _keep_quotes(match: re.Match[str]) -> str:
    """Replace the value but keep its quotes, so JSON stays JSON."""
    if match["bare"] and _NOT_A_SECRET.fullmatch(match["bare"]):
        return match[0]
    if match["quote"]:
        return f"{match['lead']}{match['quote']}{MARK}{match['quote']}"
    return f"{match['lead']}{MARK}"


DEFAULT_RULES = (
    # Authorization: Bearer abc / Proxy-Authorization: Basic abc=
    _rule(
        "authorization header",
        r"\b((?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)"
        r"(?:(bearer|basic|digest|token|negotiate)\s+)?[^\s\"',;]+",
        rf"\1\2 {MARK}",
    ),
    _rule("bearer token", r"\b(bearer)\s+[A-Za-z0-9._~+/=-]{6,}", rf"\1 {MARK}"),
    # scheme://user:password@host
    _rule(
        "url credentials",
        r"\b([a-z][a-z0-9+.-]*://[^:@/\s\"']*):[^@/\s\"']+@",
        rf"\1:{MARK}@",
    ),
    # ?token=...&api_key=...
    _rule(
        "url parameter",
        r"([?&;](?:access_token|id_token|refresh_token|token|api_?key|apikey|key|"
        r"password|passwd|pwd|secret|sig|signature|auth|session|code)=)[^&\s\"'#]+",
        rf"\1{MARK}",
    ),
    # --password hunter2, --api-key=abc; -p=... is too ambiguous to touch.
    _rule(
        "secret option",
        rf"(?P<lead>--{_SENSITIVE_NAME}(?:=|\s+))(?!-|{re.escape(MARK)}){_VALUE}",
        _keep_quotes,
    ),
    # PASSWORD=x, "api_key": "x", token: 'x y'
    _rule(
        "secret assignment",
        rf"\b(?P<lead>{_SENSITIVE_NAME}(?:\\?[\"'])?\s*[=:]\s*)"
        rf"(?!{re.escape(MARK)}|\\?[\"']{re.escape(MARK)}){_VALUE}",
        _keep_quotes,
    ),
    _rule("aws access key", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", MARK, 0),
    _rule("github token", r"\bgh[pousr]_[A-Za-z0-9]{30,}\b", MARK, 0),
    _rule("slack token", r"\bxox[abposr]-[A-Za-z0-9-]{10,}", MARK, 0),
    _rule(
        "jwt",
        r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}",
        MARK,
        0,
    ),
)

# Every default rule needs one of these in the lowered text to match.
_SCREEN = re.compile(
    r"authoriz|bearer|passw|passphrase|secret|token|api[_-]?key|access[_-]?key|"
    r"private|credential|session|auth[_-]?key|://|[?&;][a-z_]*=|akia|asia|"
    r"gh[pousr]_|xox|eyj"
)
_KEY_BEGIN = re.compile(r"-----BEGIN ([A-Z0-9 ]*PRIVATE KEY)-----")
_KEY_END = re.compile(r"-----END [A-Z0-9 ]*PRIVATE KEY-----")


class Redactor:
    """Applies the redaction rules to text; one instance per capture."""

    def __init__(self, extra_patterns: Iterable[str] = ()) -> None:
        rules = list(DEFAULT_RULES)
        for index, pattern in enumerate(extra_patterns):
            try:
                rules.append(
                    Rule(f"redact.patterns[{index}]", re.compile(pattern), MARK)
                )
            except re.error as err:
                raise ConfigError(
                    f"redact.patterns[{index}] {pattern!r} is not a regular "
                    f"expression: {err}"
                ) from None
        self.rules = tuple(rules)
        self._always = tuple(rules[len(DEFAULT_RULES) :])

    def redact(self, text: str) -> tuple[str, int]:
        """Return ``text`` without secrets, and how many were taken out."""
        count = 0
        lowered = text.lower()
        if "-----begin" in lowered:
            text, count = self._redact_keys(text)
            lowered = text.lower()
        if len(lowered) == len(text):
            text, found = self._redact_lines(text, lowered)
        else:
            # lower() changed the length (a few non-ASCII letters do), so
            # positions do not line up: run the rules over everything.
            text, found = self._apply(self.rules[: len(DEFAULT_RULES)], text)
        count += found
        text, found = self._apply(self._always, text)
        return text, count + found

    def _redact_lines(self, text: str, lowered: str) -> tuple[str, int]:
        """Apply the default rules to the lines that hold a secret's keyword.

        Most evidence holds no secret at all: a keyword search over lowered
        text runs far faster than the rules, which then see only a few lines.
        """
        pieces: list[str] = []
        count = 0
        done = 0
        for hit in _SCREEN.finditer(lowered):
            if hit.start() < done:
                continue
            start = text.rfind("\n", 0, hit.start()) + 1
            end = text.find("\n", hit.end())
            end = len(text) if end < 0 else end + 1
            line, found = self._apply(self.rules[: len(DEFAULT_RULES)], text[start:end])
            pieces += [text[done:start], line]
            count += found
            done = end
        if not pieces:
            return text, 0
        pieces.append(text[done:])
        return "".join(pieces), count

    @staticmethod
    def _apply(rules: tuple[Rule, ...], text: str) -> tuple[str, int]:
        count = 0

        def replace(rule: Rule, match: re.Match[str]) -> str:
            nonlocal count
            replaced = (
                match.expand(rule.replacement)
                if isinstance(rule.replacement, str)
                else rule.replacement(match)
            )
            # A rule may decide a match is no secret and give it back as it was.
            count += replaced != match[0]
            return replaced

        for rule in rules:
            text = rule.pattern.sub(lambda match, rule=rule: replace(rule, match), text)
        return text, count

    def stream(self) -> StreamRedactor:
        return StreamRedactor(self)

    @staticmethod
    def _redact_keys(text: str) -> tuple[str, int]:
        count = 0
        while (begin := _KEY_BEGIN.search(text)) is not None:
            end = _KEY_END.search(text, begin.end())
            stop = end.end() if end else len(text)
            text = text[: begin.start()] + f"[REDACTED {begin[1]}]" + text[stop:]
            count += 1
        return text, count


class StreamRedactor:
    """Redacts output that arrives in chunks, without splitting a secret.

    Text is released a whole line at a time; an open private key block is
    held back until its END line, so no part of it is ever written.
    """

    # A "line" longer than this is released unsplit rather than held for ever.
    MAX_HELD = 1024 * 1024

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._held = ""
        self.count = 0

    def feed(self, chunk: str) -> str:
        self._held += chunk
        cut = self._held.rfind("\n") + 1
        if cut == 0 and len(self._held) < self.MAX_HELD:
            return ""
        if cut == 0:
            cut = len(self._held)
        ready, self._held = self._held[:cut], self._held[cut:]
        begin = _KEY_BEGIN.search(ready)
        unfinished_key = begin and not _KEY_END.search(ready, begin.end())
        if unfinished_key and len(self._held) + len(ready) < self.MAX_HELD:
            self._held = ready + self._held
            return ""
        return self._apply(ready)

    def close(self) -> str:
        rest, self._held = self._held, ""
        return self._apply(rest) if rest else ""

    def _apply(self, text: str) -> str:
        text, found = self._redactor.redact(text)
        self.count += found
        return text
