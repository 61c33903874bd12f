"""Header hygiene between client, proxy and upstream, as plain functions over header lists."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from proxy.edge import EdgeMiddleware
from proxy.headers import HOP_BY_HOP, downstream_response_headers, requested_host, upstream_request_headers
from shared.types import Message, Receive, Scope, Send

REQUEST_ID = "ours-123"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def upstream(
    client: Sequence[tuple[str, str]], *, peer: str | None = "10.0.0.9", scheme: str = "http", trusted_hops: int = 0
) -> list[tuple[str, str]]:
    raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in client]
    return upstream_request_headers(
        raw, peer=peer, scheme=scheme, request_id=REQUEST_ID, traceparent=TRACEPARENT, trusted_hops=trusted_hops
    ).headers


def downstream(headers: Sequence[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return downstream_response_headers([(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers])


def values(headers: Sequence[tuple[str, str]], name: str) -> list[str]:
    return [value for key, value in headers if key == name]


def names(headers: Sequence[tuple[str, str]]) -> set[str]:
    return {key for key, _ in headers}


def test_hop_by_hop_headers_never_go_upstream() -> None:
    client = [(name, "x") for name in sorted(HOP_BY_HOP)] + [("accept", "application/json")]
    out = upstream(client)
    assert not names(out) & HOP_BY_HOP
    assert values(out, "accept") == ["application/json"]


def test_headers_named_in_connection_are_dropped_but_our_forwarding_header_is_still_set() -> None:
    client = [
        ("host", "api.example"),
        ("connection", "x-forwarded-for, X-Secret"),
        ("x-forwarded-for", "6.6.6.6"),
        ("x-secret", "must-not-cross"),
        ("authorization", "Bearer t"),
    ]
    for trusted_hops in (0, 1):
        out = upstream(client, trusted_hops=trusted_hops)
        assert "x-secret" not in names(out)
        assert "connection" not in names(out)
        assert values(out, "x-forwarded-for") == ["10.0.0.9"]
        assert values(out, "authorization") == ["Bearer t"]


def test_every_connection_header_is_read_case_insensitively_both_ways() -> None:
    headers = [("Connection", "Keep-Alive, X-A"), ("connection", " x-b ,, "), ("x-a", "1"), ("X-B", "2"), ("x-c", "3")]
    assert downstream(headers) == [(b"x-c", b"3")]
    out = upstream(headers)
    assert not names(out) & {"connection", "keep-alive", "x-a", "x-b"}
    assert values(out, "x-c") == ["3"]


def test_a_connection_named_host_or_forwarding_header_is_not_read() -> None:
    client = [("connection", "x-forwarded-host, host"), ("host", "api.example"), ("x-forwarded-host", "evil.example")]
    out = upstream(client, trusted_hops=1)
    assert values(out, "x-forwarded-host") == []


def test_untrusted_client_forwarding_headers_are_replaced_by_the_peer() -> None:
    client = [
        ("host", "api.example"),
        ("x-forwarded-for", "1.2.3.4, 5.6.7.8"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil.example"),
        ("forwarded", "for=1.2.3.4"),
    ]
    out = upstream(client, trusted_hops=0)
    assert values(out, "x-forwarded-for") == ["10.0.0.9"]
    assert values(out, "x-forwarded-proto") == ["http"]
    assert values(out, "x-forwarded-host") == ["api.example"]
    assert values(out, "forwarded") == []


def test_a_trusted_hop_is_believed_for_what_it_set_and_the_client_chain_ends_at_the_client() -> None:
    client = [
        ("host", "internal-lb:3000"),
        ("x-forwarded-for", "1.2.3.4, 5.6.7.8"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "api.example"),
    ]
    out = upstream(client, trusted_hops=1)
    # 5.6.7.8 is the address the load balancer (our peer, 10.0.0.9) saw: the client; the services trust one hop.
    assert values(out, "x-forwarded-for") == ["1.2.3.4, 5.6.7.8"]
    assert values(out, "x-forwarded-proto") == ["https"]
    assert values(out, "x-forwarded-host") == ["api.example"]


def test_only_the_entries_the_trusted_hop_appended_are_believed() -> None:
    # Issue #9, finding 11: the client sent `https` and `evil.example`; the load balancer appended what it saw.
    client = [
        ("host", "internal-lb:3000"),
        ("x-forwarded-proto", "https, http"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-host", "api.example"),
    ]
    out = upstream(client, trusted_hops=1)
    assert values(out, "x-forwarded-proto") == ["http"]
    assert values(out, "x-forwarded-host") == ["api.example"]


def test_an_unknown_forwarded_proto_falls_back_to_our_scheme() -> None:
    out = upstream([("x-forwarded-proto", "gopher")], scheme="http", trusted_hops=1)
    assert values(out, "x-forwarded-proto") == ["http"]


@pytest.mark.parametrize(
    ("chain", "trusted_hops", "expected"),
    [
        ("6.6.6.6, 1.1.1.1", 1, "6.6.6.6, 1.1.1.1"),
        ("6.6.6.6, 1.1.1.1, 10.0.0.2", 2, "6.6.6.6, 1.1.1.1"),
        ("1.1.1.1", 3, "1.1.1.1"),
    ],
)
def test_the_chain_sent_upstream_ends_with_the_client_the_trusted_hops_vouch_for(
    chain: str, trusted_hops: int, expected: str
) -> None:
    out = upstream([("x-forwarded-for", chain)], trusted_hops=trusted_hops)
    assert values(out, "x-forwarded-for") == [expected]


def test_untrusted_forwarding_headers_are_replaced_by_ours() -> None:
    client = [("host", "api.example"), ("x-forwarded-proto", "https"), ("x-forwarded-host", "evil.example")]
    out = upstream(client, scheme="http", trusted_hops=0)
    assert values(out, "x-forwarded-proto") == ["http"]
    assert values(out, "x-forwarded-host") == ["api.example"]
    assert values(out, "x-forwarded-for") == ["10.0.0.9"]


def test_trusted_hop_without_forwarding_headers_falls_back_to_our_view() -> None:
    out = upstream([("host", "api.example")], scheme="https", trusted_hops=1)
    assert values(out, "x-forwarded-for") == ["10.0.0.9"]
    assert values(out, "x-forwarded-proto") == ["https"]
    assert values(out, "x-forwarded-host") == ["api.example"]


def test_forwarded_for_split_over_several_lines_is_one_list() -> None:
    # RFC 9110 section 5.3: several lines of a list header are one comma-joined value; none may be lost.
    client = [("x-forwarded-for", "1.1.1.1"), ("x-forwarded-for", "2.2.2.2")]
    out = upstream(client, trusted_hops=1)
    assert values(out, "x-forwarded-for") == ["1.1.1.1, 2.2.2.2"]


def test_without_a_peer_no_forwarded_for_is_invented() -> None:
    out = upstream([("x-forwarded-for", "1.2.3.4")], peer=None, trusted_hops=0)
    assert values(out, "x-forwarded-for") == []
    assert values(out, "x-forwarded-proto") == ["http"]


def test_request_id_traceparent_host_and_length_are_always_ours() -> None:
    client = [
        ("host", "api.example"),
        ("x-request-id", "client-chosen"),
        ("traceparent", "00-11111111111111111111111111111111-2222222222222222-01"),
        ("tracestate", "vendor=x"),
        ("content-length", "999"),
        ("content-type", "application/json"),
    ]
    for trusted_hops in (0, 2):
        out = upstream(client, trusted_hops=trusted_hops)
        assert values(out, "x-request-id") == [REQUEST_ID]
        assert values(out, "traceparent") == [TRACEPARENT]
        assert values(out, "tracestate") == []
        assert values(out, "host") == []
        assert values(out, "content-length") == []
        assert values(out, "content-type") == ["application/json"]
        assert len(out) == len(set(out))


def test_end_to_end_headers_keep_their_order_and_duplicates() -> None:
    client = [("accept", "a"), ("cookie", "c1"), ("x-custom", "1"), ("cookie", "c2")]
    out = upstream(client)
    assert [pair for pair in out if pair[0] in ("accept", "cookie", "x-custom")] == client


def test_client_header_names_are_lowercased_and_values_kept_as_latin1() -> None:
    head = upstream_request_headers(
        [(b"X-Thing", b"caf\xe9"), (b"accept", b"*/*")],
        peer=None,
        scheme="http",
        request_id=REQUEST_ID,
        traceparent=TRACEPARENT,
        trusted_hops=0,
    )
    assert head.headers[:2] == [("x-thing", "caf\u00e9"), ("accept", "*/*")]


def test_content_length_and_chunked_are_reported_not_passed_on() -> None:
    raw = [(b"Content-Length", b"12"), (b"content-length", b"99"), (b"transfer-encoding", b"chunked")]
    head = upstream_request_headers(
        raw, peer=None, scheme="http", request_id=REQUEST_ID, traceparent=TRACEPARENT, trusted_hops=0
    )
    assert (head.content_length, head.chunked) == ("12", True)
    assert not names(head.headers) & {"content-length", "transfer-encoding"}


def test_downstream_response_headers_drop_hop_by_hop_named_and_request_id() -> None:
    upstream_headers = [
        ("Content-Type", "application/json"),
        ("Connection", "X-Upstream-Secret, close"),
        ("X-Upstream-Secret", "must-not-cross"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "h2c"),
        ("Trailer", "x-checksum"),
        ("X-Request-ID", "upstream-chosen"),
        ("Content-Encoding", "gzip"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]
    out = downstream(upstream_headers)
    assert out == [
        (b"content-type", b"application/json"),
        (b"content-encoding", b"gzip"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
    ]


@pytest.mark.parametrize("name", ["Date", "Server"])
def test_downstream_response_headers_leave_date_and_server_to_our_server(name: str) -> None:
    assert downstream([(name, "x"), ("etag", '"1"')]) == [(b"etag", b'"1"')]


def test_response_header_values_pass_byte_for_byte() -> None:
    raw = [(b"Content-Disposition", 'attachment; filename="r\u00e9sum\u00e9.pdf"'.encode())]
    assert downstream_response_headers(raw) == [(b"content-disposition", raw[0][1])]


# --- the host the allowlist checks is the host sent upstream (review of the issue #9 finding 11 fix) -------------

PUBLIC = frozenset({b"api.example.com"})


async def edge_status(headers: list[tuple[bytes, bytes]], trusted_hops: int) -> int:
    """The status the production edge gives these headers on a proxied route (200: let through)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    edge = EdgeMiddleware(app, allowed_origins=frozenset(), public_hosts=PUBLIC, trusted_hops=trusted_hops, hsts=True)
    scope = {"type": "http", "http_version": "1.1", "method": "GET", "path": "/bank-lines", "headers": headers}
    started: list[int] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            started.append(message["status"])

    await edge(scope, receive, send)
    return started[0]


def sent_host(headers: list[tuple[bytes, bytes]], trusted_hops: int) -> str | None:
    head = upstream_request_headers(
        headers, peer="10.0.0.2", scheme="http", request_id="r", traceparent="t", trusted_hops=trusted_hops
    )
    return next((value for name, value in head.headers if name == "x-forwarded-host"), None)


@pytest.mark.parametrize("trusted_hops", [0, 1, 2])
@pytest.mark.parametrize(
    "headers",
    [
        [(b"host", b"evil.example"), (b"x-forwarded-host", b"api.example.com"), (b"connection", b"x-forwarded-host")],
        [(b"host", b"evil.example"), (b"x-forwarded-host", b"api.example.com"), (b"connection", b"X-Forwarded-Host")],
        [(b"host", b"api.example.com"), (b"x-forwarded-host", b"evil.example"), (b"connection", b"x-forwarded-host")],
        [(b"host", b"evil.example"), (b"x-forwarded-host", b"api.example.com")],
        [(b"host", b"api.example.com"), (b"x-forwarded-host", b"evil.example")],
        [(b"host", b"api.example.com"), (b"connection", b"host"), (b"x-forwarded-host", b"api.example.com")],
        [(b"host", b"api.example.com"), (b"connection", b"host")],
        [(b"host", b"api.example.com"), (b"x-forwarded-host", b"evil.example, api.example.com")],
    ],
)
async def test_the_edge_lets_through_exactly_the_requests_whose_forwarded_host_is_public(
    headers: list[tuple[bytes, bytes]], trusted_hops: int
) -> None:
    """The review: `Connection: x-forwarded-host` made the edge check the forwarded host while the forwarder dropped
    it and sent the client's Host (`evil.example`) upstream as `X-Forwarded-Host`."""
    sent = sent_host(headers, trusted_hops)
    assert requested_host(headers, trusted_hops) == (sent or "")
    expected = 200 if sent is not None and sent.lower().encode() in PUBLIC else 400
    assert await edge_status(headers, trusted_hops) == expected
