"""What the request context accepts from clients: request IDs, W3C traceparents and forwarded addresses."""

from __future__ import annotations

import os
import re
import string
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from shared.context import (
    REQUEST_STATE_KEY,
    RequestContextMiddleware,
    RequestState,
    accept_request_id,
    accept_traceparent,
    build_context,
    client_address,
    forwarded_scheme,
    nearest_forwarded,
    new_request_id,
    new_traceparent,
    request_context,
    request_state,
)
from shared.types import Message, Receive, Scope, Send

ALLOWED_ID_CHARS = string.ascii_letters + string.digits + "._:-"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
VALID_TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
NEW_TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01")


def is_uuid4(value: str) -> bool:
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return False
    return parsed.version == 4 and str(parsed) == value


@pytest.mark.parametrize(
    "value",
    ["a", "x" * 128, ALLOWED_ID_CHARS, "req-123", "2f1c9a7e-1b7e-4a53-9b43-9d2f0b1a6c11", "svc:auth.v1_2"],
)
def test_valid_request_id_is_kept(value: str) -> None:
    assert accept_request_id(value) == value


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "x" * 129,
        "has space",
        "line\nbreak",
        "trailing-newline\n",
        "carriage\rreturn",
        "caf\u00e9",
        b"caf\xc3\xa9".decode("latin-1"),
        "semi;colon",
        "path/traversal",
        "tab\there",
        "<script>",
    ],
)
def test_invalid_request_id_is_replaced_with_a_uuid4(value: str | None) -> None:
    accepted = accept_request_id(value)
    assert accepted != value
    assert is_uuid4(accepted)


def test_replacement_ids_are_unique() -> None:
    assert len({accept_request_id("") for _ in range(50)}) == 50


@settings(database=None, deadline=None)
@given(st.text(max_size=200))
def test_property_accepted_request_id_is_always_safe_to_echo(value: str) -> None:
    accepted = accept_request_id(value)
    assert 1 <= len(accepted) <= 128
    assert set(accepted) <= set(ALLOWED_ID_CHARS)
    assert accepted == value or is_uuid4(accepted)


def test_valid_traceparent_is_kept() -> None:
    assert accept_traceparent(VALID_TRACEPARENT) == VALID_TRACEPARENT
    unsampled = f"00-{TRACE_ID}-{PARENT_ID}-00"
    assert accept_traceparent(unsampled) == unsampled


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "garbage",
        f"00-{'0' * 32}-{PARENT_ID}-01",
        f"00-{TRACE_ID}-{'0' * 16}-01",
        f"ff-{TRACE_ID}-{PARENT_ID}-01",
        f"00-{TRACE_ID.upper()}-{PARENT_ID}-01",
        f"00-{TRACE_ID}-{PARENT_ID.upper()}-01",
        f"00-{TRACE_ID[:-1]}-{PARENT_ID}-01",
        f"00-{TRACE_ID}0-{PARENT_ID}-01",
        f"00-{TRACE_ID}-{PARENT_ID[:-1]}-01",
        f"0-{TRACE_ID}-{PARENT_ID}-01",
        f"00-{TRACE_ID}-{PARENT_ID}-1",
        f"00-{TRACE_ID}-{PARENT_ID}",
        f"00_{TRACE_ID}_{PARENT_ID}_01",
        f" {VALID_TRACEPARENT}",
        f"{VALID_TRACEPARENT}\n",
        f"00-{TRACE_ID[:-1]}g-{PARENT_ID}-01",
    ],
)
def test_invalid_traceparent_is_regenerated(value: str | None) -> None:
    accepted = accept_traceparent(value)
    assert accepted != value
    assert NEW_TRACEPARENT.fullmatch(accepted)
    _, trace_id, parent_id, _ = accepted.split("-")
    assert trace_id != "0" * 32
    assert parent_id != "0" * 16


def test_regenerated_traceparents_are_unique() -> None:
    assert len({accept_traceparent("garbage") for _ in range(50)}) == 50


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "hops", "expected"),
    [
        # No trusted proxy: X-Forwarded-For is whatever the client typed, so it is ignored.
        ("203.0.113.7", "6.6.6.6", 0, "203.0.113.7"),
        ("203.0.113.7", None, 0, "203.0.113.7"),
        # One trusted proxy appends the address it saw; anything to its left is client-supplied.
        ("10.0.0.2", "203.0.113.7", 1, "203.0.113.7"),
        ("10.0.0.2", "6.6.6.6, 203.0.113.7", 1, "203.0.113.7"),
        ("10.0.0.2", "6.6.6.6,7.7.7.7,203.0.113.7", 1, "203.0.113.7"),
        # Two trusted proxies: the second-to-last entry was written by the outer one.
        ("10.0.0.3", "203.0.113.7, 10.0.0.2", 2, "203.0.113.7"),
        ("10.0.0.3", "6.6.6.6, 203.0.113.7, 10.0.0.2", 2, "203.0.113.7"),
        # A trusted hop but no header: the peer is the client.
        ("10.0.0.2", None, 1, "10.0.0.2"),
        ("10.0.0.2", "", 1, "10.0.0.2"),
        ("10.0.0.2", " , ", 1, "10.0.0.2"),
        (None, None, 0, None),
    ],
)
def test_client_address_trusts_only_the_configured_hops(
    peer: str | None, forwarded_for: str | None, hops: int, expected: str | None
) -> None:
    assert client_address(peer, forwarded_for, hops) == expected


def test_build_context_reads_raw_asgi_headers() -> None:
    scope = {
        "type": "http",
        "client": ("10.0.0.2", 5000),
        "headers": [
            (b"x-request-id", b"req-1"),
            (b"traceparent", VALID_TRACEPARENT.encode()),
            (b"x-forwarded-for", b"6.6.6.6, 203.0.113.7"),
        ],
    }
    context = build_context(scope, trusted_hops=1)
    assert context.request_id == "req-1"
    assert context.traceparent == VALID_TRACEPARENT
    assert context.client == "203.0.113.7"


def test_build_context_replaces_non_ascii_request_id_bytes() -> None:
    scope = {"type": "http", "client": None, "headers": [(b"x-request-id", b"caf\xe9")]}
    context = build_context(scope, trusted_hops=0)
    assert is_uuid4(context.request_id)
    assert NEW_TRACEPARENT.fullmatch(context.traceparent)
    assert context.client is None


def test_build_context_reads_the_first_of_repeated_ids_and_every_forwarded_for_line() -> None:
    scope = {
        "type": "http",
        "client": ("10.0.0.1", 1),
        "headers": [
            (b"x-request-id", b"first"),
            (b"traceparent", VALID_TRACEPARENT.encode()),
            (b"x-forwarded-for", b"203.0.113.7"),
            (b"x-request-id", b"second"),
            (b"traceparent", b"00-11111111111111111111111111111111-2222222222222222-01"),
            (b"x-forwarded-for", b"6.6.6.6"),
        ],
    }
    context = build_context(scope, trusted_hops=1)
    # The lines of X-Forwarded-For are one list: a proxy that adds its entry as a line of its own is believed.
    assert (context.request_id, context.traceparent, context.client) == ("first", VALID_TRACEPARENT, "6.6.6.6")


@pytest.mark.parametrize(
    ("lines", "trusted_hops", "expected"),
    [
        ([], 1, "http"),
        ([b"https"], 0, "http"),
        ([b"https"], 1, "https"),
        ([b"https, http"], 1, "http"),
        ([b"https", b"http"], 1, "http"),
        ([b"http, HTTPS"], 1, "https"),
        ([b"gopher"], 1, "http"),
    ],
)
def test_forwarded_scheme_believes_only_the_nearest_trusted_hop(
    lines: list[bytes], trusted_hops: int, expected: str
) -> None:
    scope = {"type": "http", "scheme": "http", "headers": [(b"x-forwarded-proto", line) for line in lines]}
    assert forwarded_scheme(scope, trusted_hops) == expected


def test_nearest_forwarded_is_the_last_entry_across_lines() -> None:
    assert nearest_forwarded(["a.example, b.example", " c.example ,"]) == "c.example"
    assert nearest_forwarded([" , "]) is None


def test_new_ids_are_canonical_distinct_uuid4s_and_traceparents() -> None:
    ids = {new_request_id() for _ in range(5000)}
    traces = {new_traceparent() for _ in range(5000)}
    assert len(ids) == len(traces) == 5000
    assert all(is_uuid4(value) and uuid.UUID(value).variant == uuid.RFC_4122 for value in ids)
    assert all(NEW_TRACEPARENT.fullmatch(value) for value in traces)


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    # IDs come from `random`, which must be reseeded in a child process (a pre-forking server's workers).
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write_end, f"{new_request_id()} {new_traceparent()}".encode())
        os._exit(0)
    os.close(write_end)
    child = os.read(read_end, 200).decode().split()
    os.close(read_end)
    os.waitpid(pid, 0)
    assert child and child != [new_request_id(), new_traceparent()]


# --- per-request state ----------------------------------------------------------------------------------------------


def http_scope() -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": "/", "headers": [(b"x-request-id", b"req-7")], "client": None}


async def serve(app: Any, scope: dict[str, Any]) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def test_the_middleware_sets_one_typed_state_that_inner_code_writes_and_outer_code_reads() -> None:
    seen: list[RequestState] = []

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        state = request_state(scope)
        seen.append(state)
        state.route_label = "/things"
        state.log_fields["traffic"] = "regulator"
        state.refused_body = True
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def outer(scope: Scope, receive: Receive, send: Send) -> None:
        await RequestContextMiddleware(handler)(scope, receive, send)
        state = request_state(scope)  # after the response: what the handler wrote
        assert (state.route_label, state.log_fields, state.refused_body) == ("/things", {"traffic": "regulator"}, True)
        assert state.exchange is not None and state.exchange.status == 204

    scope = http_scope()
    sent = await serve(outer, scope)
    [state] = seen
    assert state is scope[REQUEST_STATE_KEY]
    assert state.context is not None and state.context.request_id == "req-7"
    assert request_context(scope) is state.context
    assert state.principal is None
    assert "state" not in scope  # Starlette's `scope["state"]` holds nothing of ours
    assert (b"x-request-id", b"req-7") in sent[0]["headers"]


async def test_each_request_has_a_state_of_its_own() -> None:
    states: list[RequestState] = []

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        states.append(request_state(scope))
        request_state(scope).log_fields["n"] = len(states)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = RequestContextMiddleware(handler)
    await serve(app, http_scope())
    await serve(app, http_scope())
    first, second = states
    assert first is not second
    assert (first.log_fields, second.log_fields) == ({"n": 1}, {"n": 2})


def test_the_state_is_slotted_so_a_misspelt_field_cannot_be_written() -> None:
    state = RequestState()
    with pytest.raises(AttributeError):
        state.route = "/typo"  # type: ignore[attr-defined]
    assert not hasattr(state, "__dict__")


def test_without_the_middleware_the_state_is_empty_but_shared_and_the_context_is_an_error() -> None:
    scope = http_scope()
    state = request_state(scope)
    state.route_label = "/x"
    assert request_state(scope) is state  # kept in the scope: what one middleware writes the next one reads
    assert (state.context, state.exchange, state.log_fields, state.refused_body) == (None, None, {}, False)
    with pytest.raises(LookupError, match="RequestContextMiddleware"):
        request_context(scope)


def test_starlettes_request_state_keeps_working_beside_ours() -> None:
    async def endpoint(request: Request) -> Response:
        request.state.note = "kept"
        return PlainTextResponse(f"{request.state.note} {request_state(request.scope).context is not None}")

    app = RequestContextMiddleware(Starlette(routes=[Route("/", endpoint)]))
    with TestClient(app) as client:
        assert client.get("/").text == "kept True"
