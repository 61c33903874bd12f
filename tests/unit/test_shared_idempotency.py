"""Idempotency as plain data: which keys are accepted, what the fingerprint covers, and each decision."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from shared.errors import ApiError
from shared.idempotency import (
    KEY_MAX_CHARS,
    MAX_STORED_BODY_BYTES,
    REPLAY_HEADER,
    Conflict,
    InProgress,
    Proceed,
    Record,
    Replay,
    StoredResponse,
    check_key,
    decide,
    fingerprint,
    idempotent,
    replay_response,
    request_target,
    route_name,
    stored_response,
)
from shared.money import Money

USER = "user:3f2c1b0a-9e8d-4c7b-8a69-5f4e3d2c1b0a"
OTHER_USER = "user:0b9f3e2a-1c4d-4e8f-8a6b-2d5c7e9f1a30"
TARGET = "/bank-lines"
NOW = datetime(2026, 11, 27, 21, 55, 37, tzinfo=UTC)
ANSWER = StoredResponse(201, (("content-type", "application/json"), ("location", "/bank-lines/1")), b'{"id":1}')

visible_ascii = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=255)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def refusal(values: list[str]) -> ApiError:
    with pytest.raises(ApiError) as caught:
        check_key(values)
    return caught.value


# --- keys ------------------------------------------------------------------------------------------------------


def test_no_header_means_no_key() -> None:
    assert check_key([]) is None


@pytest.mark.parametrize("key", ["a", "!", "~", "x" * KEY_MAX_CHARS, "order-2026-11-27/0001", "aB3:_.;{}|"])
def test_visible_ascii_keys_are_accepted(key: str) -> None:
    assert check_key([key]) == key


@pytest.mark.parametrize(
    "key",
    ["", "x" * (KEY_MAX_CHARS + 1), "a b", " a", "a\t", "a\x7f", "\x00", "clé", "key\u2028", "ключ", "a\n"],
    ids=["empty", "256 chars", "space", "leading space", "tab", "DEL", "NUL", "e-acute", "line sep", "cyrillic", "LF"],
)
def test_other_keys_are_a_400(key: str) -> None:
    error = refusal([key])
    assert (error.code, error.kind.status) == ("bad_request", 400)
    assert "Idempotency-Key" in error.detail


def test_two_key_headers_are_a_400() -> None:
    assert refusal(["a", "a"]).code == "bad_request"


@given(visible_ascii)
def test_every_visible_ascii_key_up_to_255_is_accepted(key: str) -> None:
    assert check_key([key]) == key


@given(st.text(min_size=1, max_size=300).filter(lambda k: any(not 0x21 <= ord(c) <= 0x7E for c in k) or len(k) > 255))
def test_any_key_with_another_character_or_too_long_is_refused(key: str) -> None:
    assert refusal([key]).code == "bad_request"


# --- fingerprints ----------------------------------------------------------------------------------------------


def test_key_order_and_whitespace_of_the_body_do_not_matter() -> None:
    first = orjson.loads('{"amount": "12.50", "payee": "ATO", "meta": {"a": 1, "b": [1, 2]}}')
    second = orjson.loads('{"meta":{"b":[1,2],"a":1},"payee":"ATO","amount":"12.50"}')
    assert fingerprint(first, USER, TARGET) == fingerprint(second, USER, TARGET)


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6), st.randoms())
def test_key_insertion_order_never_changes_the_fingerprint(body: dict[str, Any], rng: Any) -> None:
    items = list(body.items())
    rng.shuffle(items)
    assert fingerprint(dict(items), USER, TARGET) == fingerprint(body, USER, TARGET)


def test_another_actor_target_or_body_is_another_fingerprint() -> None:
    body = {"amount": "12.50"}
    base = fingerprint(body, USER, TARGET)
    assert fingerprint(body, OTHER_USER, TARGET) != base
    assert fingerprint(body, USER, "/bank-lines?split=1") != base
    assert fingerprint(body, USER, "/bank-lines/2") != base
    assert fingerprint({"amount": "12.51"}, USER, TARGET) != base
    assert fingerprint({"amount": "12.50", "note": None}, USER, TARGET) != base


@given(json_values, json_values)
def test_different_bodies_have_different_fingerprints(first: Any, second: Any) -> None:
    assert (fingerprint(first, USER, TARGET) == fingerprint(second, USER, TARGET)) == (
        orjson.dumps(first, option=orjson.OPT_SORT_KEYS) == orjson.dumps(second, option=orjson.OPT_SORT_KEYS)
    )


class Payment(BaseModel):
    amount: Money
    payee: str


def test_a_model_is_fingerprinted_as_its_json() -> None:
    model = Payment.model_validate({"amount": "12.50", "payee": "ATO"})
    assert model.amount == Decimal("12.50")
    assert fingerprint(model, USER, TARGET) == fingerprint({"payee": "ATO", "amount": "12.50"}, USER, TARGET)


def test_raw_bytes_are_hashed_as_sent_and_never_collide_with_json() -> None:
    assert fingerprint(b"", USER, TARGET) == fingerprint(b"", USER, TARGET)
    assert fingerprint(b"", USER, TARGET) != fingerprint(b" ", USER, TARGET)
    assert fingerprint(b"", USER, TARGET) != fingerprint("", USER, TARGET)
    assert fingerprint(b'{"a":1}', USER, TARGET) != fingerprint({"a": 1}, USER, TARGET)


def test_a_float_in_the_body_is_refused() -> None:
    with pytest.raises(TypeError, match="float"):
        fingerprint({"amount": 12.5}, USER, TARGET)


# --- decisions -------------------------------------------------------------------------------------------------

FINGERPRINT = fingerprint({"amount": "12.50"}, USER, TARGET)
OTHER_FINGERPRINT = fingerprint({"amount": "99.00"}, USER, TARGET)


def record(*, response: StoredResponse | None = ANSWER, expires_in: timedelta = timedelta(hours=1)) -> Record:
    return Record(FINGERPRINT, response, NOW + expires_in)


def test_no_record_proceeds() -> None:
    assert decide(None, FINGERPRINT, NOW) == Proceed()


def test_a_completed_record_replays_its_answer() -> None:
    assert decide(record(), FINGERPRINT, NOW) == Replay(ANSWER)


def test_another_request_under_the_key_conflicts_pending_or_completed() -> None:
    assert decide(record(), OTHER_FINGERPRINT, NOW) == Conflict()
    assert decide(record(response=None), OTHER_FINGERPRINT, NOW) == Conflict()


def test_a_pending_record_is_in_progress() -> None:
    assert decide(record(response=None), FINGERPRINT, NOW) == InProgress()


@pytest.mark.parametrize("response", [ANSWER, None])
@pytest.mark.parametrize("fp", [FINGERPRINT, OTHER_FINGERPRINT])
def test_an_expired_record_is_absent(response: StoredResponse | None, fp: bytes) -> None:
    assert decide(record(response=response, expires_in=timedelta(0)), fp, NOW) == Proceed()
    assert decide(record(response=response, expires_in=-timedelta(seconds=1)), fp, NOW) == Proceed()


@given(st.binary(min_size=32, max_size=32), st.booleans(), st.integers(-100_000, 100_000))
def test_decisions_follow_the_rules(other: bytes, completed: bool, expires_in_s: int) -> None:
    stored = record(response=ANSWER if completed else None, expires_in=timedelta(seconds=expires_in_s))
    decision = decide(stored, other, NOW)
    if expires_in_s <= 0:
        assert decision == Proceed()
    elif other != FINGERPRINT:
        assert decision == Conflict()
    else:
        assert decision == (Replay(ANSWER) if completed else InProgress())


# --- stored and replayed answers -------------------------------------------------------------------------------


def test_only_the_replayed_headers_are_stored() -> None:
    response = JSONResponse({"id": 1}, status_code=201, headers={"location": "/bank-lines/1", "x-trace": "1"})
    response.set_cookie("session", "secret")
    stored = stored_response(response)
    assert stored.status == 201
    assert stored.body == b'{"id":1}'
    assert dict(stored.headers) == {"content-type": "application/json", "location": "/bank-lines/1"}


def test_a_replay_is_the_stored_answer_marked_as_one() -> None:
    replay = replay_response(ANSWER)
    assert (replay.status_code, replay.body) == (201, b'{"id":1}')
    assert replay.headers["content-type"] == "application/json"
    assert replay.headers["location"] == "/bank-lines/1"
    assert replay.headers["content-length"] == "8"
    assert replay.headers[REPLAY_HEADER] == "true"


def test_a_streamed_or_oversized_answer_cannot_be_stored() -> None:
    async def chunks() -> Any:
        yield b"x"

    with pytest.raises(TypeError, match="complete body"):
        stored_response(StreamingResponse(chunks()))
    with pytest.raises(ValueError, match="more than"):
        stored_response(Response(b"x" * (MAX_STORED_BODY_BYTES + 1)))


def test_route_name_is_method_and_template_and_target_is_path_and_query() -> None:
    class FakeRoute:
        path = "/bank-lines/{line_id:uuid}/split"

    line = uuid.uuid4()
    scope = {"method": "POST", "route": FakeRoute(), "path": f"/bank-lines/{line}/split", "query_string": b"x=1"}
    assert route_name(scope) == "POST /bank-lines/:line_id/split"
    assert request_target(scope) == f"/bank-lines/{line}/split?x=1"
    assert request_target({**scope, "query_string": b""}) == f"/bank-lines/{line}/split"


# --- the handler API without a key (no database involved) ---------------------------------------------------


def post(headers: list[tuple[bytes, bytes]]) -> Request:
    return Request({"type": "http", "method": "POST", "path": TARGET, "query_string": b"", "headers": headers})


async def test_without_a_key_the_work_simply_runs_and_a_required_key_is_a_400() -> None:
    async def work() -> Response:
        return Response(b"done", status_code=201)

    no_database: Any = None
    answer = await idempotent(post([]), no_database, work, org_id=uuid.uuid4(), actor=USER, body=b"")
    assert (answer.status_code, answer.body, REPLAY_HEADER in answer.headers) == (201, b"done", False)
    with pytest.raises(ApiError) as caught:
        await idempotent(post([]), no_database, work, org_id=uuid.uuid4(), actor=USER, body=b"", required=True)
    assert caught.value.code == "bad_request"
    with pytest.raises(ApiError) as caught:
        await idempotent(
            post([(b"idempotency-key", b"a b")]), no_database, work, org_id=uuid.uuid4(), actor=USER, body=b""
        )
    assert caught.value.code == "bad_request"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"amount": "12.50", "note": {"ratio": 1.5}}, "fractional number"),
        ({"amount": "12.50", "count": 2**53}, "integer beyond"),
        ({"amount": "12.50", "count": -(2**53)}, "integer beyond"),
        ({"amount": "12.50", "payee": "\ud800"}, "not valid Unicode"),
    ],
)
async def test_a_body_with_no_canonical_json_under_a_key_is_a_400_before_any_database_work(
    body: object, problem: str
) -> None:
    async def work() -> Response:
        raise AssertionError("the work must not run")

    no_database: Any = None
    request = post([(b"idempotency-key", b"k-1")])
    with pytest.raises(ApiError) as caught:
        await idempotent(request, no_database, work, org_id=uuid.uuid4(), actor=USER, body=body)
    assert (caught.value.code, caught.value.kind.status) == ("invalid_body", 400)
    assert problem in caught.value.detail
