"""Header hygiene between client, proxy and upstream (RFC 9110 section 7.6).

Hop-by-hop headers, and every header the `Connection` header names, are dropped in both directions: sending
`Connection: X-Forwarded-For` must not let a client delete a header we set. Forwarding headers from the client
are read only when `trusted_hops` > 0 (another proxy of ours sits in front), and then only what that proxy set:
the right-most entries (issue #9, finding 11: a client's own `X-Forwarded-Proto: https` passed through whole, and
read first, got past the OAuth endpoint's HTTPS check). Upstream, the services trust exactly one hop, us, so each
forwarding header we send ends with what we believe: `X-Forwarded-For` runs up to the client address we resolved
(the addresses of our own proxies are left out), `X-Forwarded-Proto` and `X-Forwarded-Host` hold one value. The
request ID and traceparent are always ours.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from shared.context import believed_scheme, nearest_forwarded

Headers = list[tuple[str, str]]

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)
FORWARDING = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded"})
# Set by the proxy itself on the way in; a client's values never reach an upstream.
PROXY_OWNED = frozenset({"x-request-id", "traceparent", "tracestate", "host", "content-length"})


# Client headers that are not passed on as they are: dropped, or read and replaced by ours.
NOT_PASSED_ON = HOP_BY_HOP | FORWARDING | PROXY_OWNED
# Response headers the client never sees from the upstream: hop-by-hop, the request ID (the request-context
# middleware sets the one the client sees), and the date and server header that our server writes itself.
NOT_PASSED_BACK = frozenset(name.encode() for name in HOP_BY_HOP | {"x-request-id", "date", "server"})


def connection_tokens(value: str) -> set[str]:
    """The header names one `Connection` header lists, lowercased."""
    return {token.strip().lower() for token in value.split(",") if token.strip()}


def public_host(host: str, forwarded_hosts: list[str], trusted_hops: int) -> str:
    """The host the client asked for, which the Host allowlist checks and `X-Forwarded-Host` carries upstream: the
    entry the nearest trusted proxy set when `trusted_hops` > 0 and there is one, else `host`. Both callers pass
    only what the `Connection` header did not name (a review found the allowlist reading a forwarded host that was
    then dropped, so `Connection: x-forwarded-host` sent an unchecked Host upstream)."""
    return (nearest_forwarded(forwarded_hosts) if trusted_hops > 0 else None) or host


def requested_host(raw: Iterable[tuple[bytes, bytes]], trusted_hops: int) -> str:
    """`public_host` of a request's ASGI headers, with `upstream_request_headers`'s rules: the first `Host`, and
    no header the `Connection` header names."""
    host: str | None = None
    forwarded: list[str] = []
    named: set[str] = set()
    for name, value in raw:
        if name == b"host" and host is None:
            host = value.decode("latin-1")
        elif name == b"x-forwarded-host":
            forwarded.append(value.decode("latin-1"))
        elif name == b"connection":
            named |= connection_tokens(value.decode("latin-1"))
    if "x-forwarded-host" in named:
        forwarded = []
    if "host" in named:
        host = None
    return public_host(host or "", forwarded, trusted_hops)


class UpstreamHead(NamedTuple):
    headers: Headers
    content_length: str | None  # the client's first Content-Length, as sent
    chunked: bool  # the client sent Transfer-Encoding


def upstream_request_headers(
    raw: Iterable[tuple[bytes, bytes]],
    *,
    peer: str | None,
    scheme: str,
    request_id: str,
    traceparent: str,
    trusted_hops: int,
) -> UpstreamHead:
    """From the client's ASGI headers, the headers sent upstream (hygiene applied, forwarding headers appended,
    request ID and trace set), with what the body handling needs to know. One pass over the client's headers:
    this runs for every request."""
    kept: Headers = []
    special: Headers = []  # forwarding and proxy-owned headers: read below, never passed on as sent
    named: set[str] = set()
    content_length: str | None = None
    chunked = False
    for raw_name, raw_value in raw:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        if name not in NOT_PASSED_ON:
            kept.append((name, value))
        elif name == "connection":
            named |= connection_tokens(value)
        elif name == "content-length":
            content_length = value if content_length is None else content_length
        elif name == "transfer-encoding":
            chunked = True
        elif name not in HOP_BY_HOP:
            special.append((name, value))
    if named:
        # Sending `Connection: X-Forwarded-For` must not let a client delete a header we set, nor pass one on.
        kept = [(name, value) for name, value in kept if name not in named]
        special = [(name, value) for name, value in special if name not in named]

    host = next((value for name, value in special if name == "host"), "")
    incoming: dict[str, list[str]] = {}
    if trusted_hops > 0:  # with no trusted hop, the client's own forwarding headers are never read
        for name, value in special:
            if name in FORWARDING:
                incoming.setdefault(name, []).append(value)
    chain = trusted_chain(incoming.get("x-forwarded-for", []), peer, trusted_hops)
    forwarded_proto = believed_scheme(incoming.get("x-forwarded-proto", []), scheme)
    forwarded_host = public_host(host, incoming.get("x-forwarded-host", []), trusted_hops)
    if chain:
        kept.append(("x-forwarded-for", ", ".join(chain)))
    kept.append(("x-forwarded-proto", forwarded_proto))
    if forwarded_host:
        kept.append(("x-forwarded-host", forwarded_host))
    kept.append(("x-request-id", request_id))
    kept.append(("traceparent", traceparent))
    return UpstreamHead(kept, content_length, chunked)


def trusted_chain(lines: list[str], peer: str | None, trusted_hops: int) -> list[str]:
    """`X-Forwarded-For` for the upstream: the client's chain up to the client address `trusted_hops` proxies
    vouch for (`shared.context.client_address`'s choice), which is thus the last entry."""
    hops = [hop.strip() for line in lines for hop in line.split(",") if hop.strip()]
    if not hops:
        return [peer] if peer else []
    return hops[: len(hops) - min(trusted_hops, len(hops)) + 1]


def downstream_response_headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers (as aiohttp read them) for the ASGI response: names lowercased,
    values passed on byte for byte, hop-by-hop and `Connection`-named ones removed, and `NOT_PASSED_BACK`."""
    out: list[tuple[bytes, bytes]] = []
    named: set[bytes] = set()
    for raw_name, value in raw:
        name = raw_name.lower()
        if name not in NOT_PASSED_BACK:
            out.append((name, value))
        elif name == b"connection":
            named |= {token.encode("latin-1") for token in connection_tokens(value.decode("latin-1"))}
    if named:
        out = [(name, value) for name, value in out if name not in named]
    return out
