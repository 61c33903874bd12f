"""Header hygiene between client, proxy and upstream (RFC 9110 section 7.6).

Hop-by-hop headers, and every header the `Connection` header names, are dropped in both directions: sending
`Connection: X-Forwarded-For` must not let a client delete a header we set. Forwarding headers from the client
are kept only when `trusted_hops` > 0 (another proxy of ours sits in front); the request ID and traceparent are
always ours.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

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


def connection_named(headers: Iterable[tuple[str, str]]) -> set[str]:
    """Header names listed in any `Connection` header."""
    named: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            named.update(token.strip().lower() for token in value.split(",") if token.strip())
    return named


def strip_hop_by_hop(headers: Sequence[tuple[str, str]]) -> Headers:
    dropped = HOP_BY_HOP | connection_named(headers)
    return [(name, value) for name, value in headers if name.lower() not in dropped]


def decode_asgi_headers(raw: Iterable[tuple[bytes, bytes]]) -> Headers:
    return [(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in raw]


def upstream_request_headers(
    client_headers: Sequence[tuple[str, str]],
    *,
    peer: str | None,
    scheme: str,
    request_id: str,
    traceparent: str,
    trusted_hops: int,
) -> Headers:
    """The headers sent upstream: hygiene applied, forwarding headers appended, request ID and trace set."""
    kept = strip_hop_by_hop(client_headers)
    trusted = trusted_hops > 0
    incoming: dict[str, str] = {}
    for name, value in kept:
        if name in FORWARDING:
            # Several lines of one header form one comma-separated list (RFC 9110 section 5.3).
            incoming[name] = f"{incoming[name]}, {value}" if name in incoming else value
    out = [(name, value) for name, value in kept if name not in FORWARDING and name not in PROXY_OWNED]

    host = next((value for name, value in kept if name == "host"), "")
    chain = [hop.strip() for hop in incoming.get("x-forwarded-for", "").split(",") if hop.strip()] if trusted else []
    if peer:
        chain.append(peer)
    if chain:
        out.append(("x-forwarded-for", ", ".join(chain)))
    out.append(("x-forwarded-proto", incoming.get("x-forwarded-proto", scheme) if trusted else scheme))
    forwarded_host = incoming.get("x-forwarded-host", host) if trusted else host
    if forwarded_host:
        out.append(("x-forwarded-host", forwarded_host))
    out.append(("x-request-id", request_id))
    out.append(("traceparent", traceparent))
    return out


def downstream_response_headers(upstream_headers: Sequence[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers as ASGI bytes, hop-by-hop and `Connection`-named ones removed.

    `x-request-id` is dropped too: the request-context middleware sets the one the client sees.
    """
    kept = strip_hop_by_hop(upstream_headers)
    return [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in kept
        if name.lower() not in ("x-request-id", "date", "server")
    ]
