"""Where load goes and what it sends: the resolved address and the request bytes."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from roxy_triage import __version__
from roxy_triage.errors import ConfigError, TargetUnreachable

# Methods whose requests always carry a Content-Length, even an empty one:
# servers answer 411 to a bodiless POST without it.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# RFC 9110 token: what a method or header name may be made of.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


@dataclass(frozen=True)
class Endpoint:
    """A load target: the address connections go to and the request line's parts."""

    url: str
    family: int
    address: str
    port: int
    # Host header value: the URL's authority, as a browser or curl sends it.
    authority: str
    # Path and query string of the request line.
    target: str

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.address).is_loopback


def resolve(url: str, *, allow_remote: bool = False) -> Endpoint:
    """Check ``url`` and resolve its host; refuse anything off loopback unless allowed.

    Load is traffic, and traffic can deepen an incident: the tool only loads
    loopback unless the operator asks for more.
    """
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(
            f"{url!r} is not an http:// URL with a host, like http://127.0.0.1:8766/run"
        )
    try:
        port = parts.port or 80
    except ValueError:
        raise ConfigError(f"{url!r} has a port that is not 0 to 65535") from None
    try:
        found = socket.getaddrinfo(
            parts.hostname, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except socket.gaierror as err:
        raise TargetUnreachable(
            f"cannot resolve {parts.hostname!r} from {url}: {err.strerror}"
        ) from None
    family, _, _, _, sockaddr = found[0]
    address = str(sockaddr[0])
    if not allow_remote and not all(
        ipaddress.ip_address(entry[4][0]).is_loopback for entry in found
    ):
        raise ConfigError(
            f"{parts.hostname} is not a loopback address; load goes only to "
            "127.0.0.0/8 or ::1 unless --allow-remote is given"
        )
    target = parts.path or "/"
    if parts.query:
        target += f"?{parts.query}"
    return Endpoint(url, family, address, port, parts.netloc, target)


def request_bytes(
    endpoint: Endpoint,
    method: str,
    body: str,
    headers: Mapping[str, str],
    *,
    keep_alive: bool,
) -> bytes:
    """The exact bytes of one request, built once and sent for every request."""
    if not _TOKEN.fullmatch(method):
        raise ConfigError(f"method {method!r} is not an HTTP method name")
    payload = body.encode("utf-8")
    fields = {
        "Host": endpoint.authority,
        "User-Agent": f"roxy-triage/{__version__}",
        "Accept": "*/*",
    }
    for name, value in headers.items():
        if (
            not name
            or any(char in f"{name}{value}" for char in "\r\n\0")
            or ":" in name
        ):
            raise ConfigError(f"header {name!r}: {value!r} cannot be sent as given")
        _set(fields, name, value)
    if payload or method.upper() in _BODY_METHODS:
        _set(fields, "Content-Length", str(len(payload)))
    # Saying "close" up front lets the server release its worker as soon as
    # it has answered instead of waiting for a second request that never
    # comes.
    _set(fields, "Connection", "keep-alive" if keep_alive else "close")
    head = f"{method} {endpoint.target} HTTP/1.1\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in fields.items())
    return head.encode("latin-1") + b"\r\n" + payload


def _set(fields: dict[str, str], name: str, value: str) -> None:
    """Set a header, replacing one of the same name whatever its case."""
    for same in [key for key in fields if key.lower() == name.lower()]:
        del fields[same]
    fields[name] = value
