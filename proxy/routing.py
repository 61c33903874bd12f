"""Path normalisation and the prefix table: which service a request goes to, and with which limits.

The proxy matches and forwards the *normalised* path, so the upstream sees exactly the path that was matched:
`/auth/%2e%2e/internal/x`, `/auth/..%2Finternal` and `//internal` all become `/internal/x` before matching,
and are refused there, instead of being read one way here and another way by the upstream.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from urllib.parse import quote, unquote

MiB = 1024 * 1024
DEFAULT_MAX_BODY_BYTES = 1 * MiB
DEFAULT_TIMEOUT_S = 10.0
MAX_PATH_CHARS = 2048

# SPEC section 1: the public prefix table.
DEFAULT_PREFIXES: tuple[tuple[str, str], ...] = (
    ("/auth", "auth"),
    ("/users", "auth"),
    ("/bank-lines", "core"),
    ("/alerts", "core"),
    ("/bas", "core"),
    ("/org", "core"),
    ("/admin", "core"),
    ("/compliance", "compliance"),
    ("/monitoring", "compliance"),
    ("/audit", "compliance"),
    ("/regulator", "regulator"),
)
# Service-to-service routes; never reachable from outside.
BLOCKED_PREFIXES = ("/internal",)
# Characters left as they are when the normalised path is re-encoded for the upstream (RFC 3986 pchar + "/").
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
_PERCENT_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
# Characters a path can carry unencoded; a path of only these, with no empty or dot segments, is already normal.
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9/:@!$&'()*+,;=\-._~]*")


class BadPath(ValueError):
    """The path cannot be normalised safely (control characters, backslashes, double encoding, too long)."""


@dataclass(frozen=True)
class ProxyRoute:
    prefix: str
    service: str
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def is_regulator(self) -> bool:
        return self.service == "regulator"


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4 over `/`-separated segments, also collapsing empty segments (`//`)."""
    output: list[str] = []
    segments = path.split("/")
    for segment in segments[1:]:
        if segment in ("", "."):
            continue
        if segment == "..":
            if output:
                output.pop()
            continue
        output.append(segment)
    trailing = "/" if segments[-1] in ("", ".", "..") and output else ""
    return "/" + "/".join(output) + trailing


def normalise_path(raw_path: str) -> str:
    """The decoded, dot-free, single-slash path; raises `BadPath` for input no honest client sends."""
    if len(raw_path) > MAX_PATH_CHARS:
        raise BadPath("path too long")
    if is_plain(raw_path):
        return raw_path  # the common case: nothing to decode, no segment to remove
    if not raw_path.isascii():
        raise BadPath("path must be percent-encoded ASCII")
    try:
        decoded = unquote(raw_path, errors="strict")
    except UnicodeDecodeError:
        raise BadPath("path is not valid UTF-8 once decoded") from None
    if _PERCENT_ESCAPE.search(decoded):
        raise BadPath("path is encoded twice")
    if "\\" in decoded or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in decoded):
        raise BadPath("path contains a backslash or a control character")
    if not decoded.startswith("/"):
        raise BadPath("path must start with /")
    return remove_dot_segments(decoded)


def is_plain(path: str) -> bool:
    return _PLAIN_PATH.fullmatch(path) is not None and "//" not in path and "/." not in path


def encode_path(path: str) -> str:
    """The normalised path as it goes on the wire to the upstream."""
    return path if _PLAIN_PATH.fullmatch(path) else quote(path, safe=_PATH_SAFE)


def _boundaries(prefix: str) -> tuple[str, str]:
    """The prefix itself, and what every path under it starts with (matching stops at segment boundaries)."""
    return prefix, prefix.rstrip("/") + "/"


def _under(path: str, boundaries: tuple[str, str]) -> bool:
    return path == boundaries[0] or path.startswith(boundaries[1])


class RouteTable:
    """Longest-prefix match over the configured routes; `/internal/...` never matches."""

    def __init__(self, routes: Iterable[ProxyRoute]) -> None:
        self.routes = sorted(routes, key=lambda route: len(route.prefix), reverse=True)
        self._blocked = [_boundaries(prefix) for prefix in BLOCKED_PREFIXES]
        self._table = [(_boundaries(route.prefix), route) for route in self.routes]

    def match(self, path: str) -> ProxyRoute | None:
        for blocked in self._blocked:
            if _under(path, blocked):
                return None
        for boundaries, route in self._table:
            if _under(path, boundaries):
                return route
        return None

    @property
    def services(self) -> list[str]:
        return sorted({route.service for route in self.routes})


def build_route_table(
    prefixes: Sequence[tuple[str, str]] = DEFAULT_PREFIXES,
    *,
    default_max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    default_timeout_s: float = DEFAULT_TIMEOUT_S,
    body_limits: Mapping[str, int] | None = None,
    timeouts: Mapping[str, float] | None = None,
) -> RouteTable:
    """The prefix table with per-route overrides; an override for a longer prefix adds a route of its own,
    inheriting whatever the prefix above it has (including that prefix's own overrides)."""
    routes = {
        prefix: ProxyRoute(prefix, service, default_max_body_bytes, default_timeout_s) for prefix, service in prefixes
    }
    limits, times = dict(body_limits or {}), dict(timeouts or {})
    for prefix in sorted({*limits, *times}, key=len):
        parent = RouteTable(routes.values()).match(prefix)
        if parent is None:
            raise ValueError(f"override {prefix} is not under any routed prefix")
        route = replace(parent, prefix=prefix)
        if prefix in limits:
            route = replace(route, max_body_bytes=limits[prefix])
        if prefix in times:
            route = replace(route, timeout_s=times[prefix])
        routes[prefix] = route
    return RouteTable(routes.values())
