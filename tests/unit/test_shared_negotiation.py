"""Content negotiation: JSON by default, msgpack when Accept prefers it, 406 when Accept admits neither; the same
document either way."""

from __future__ import annotations

from datetime import date

import msgpack
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel
from starlette.requests import Request

from shared.errors import ApiError
from shared.money import Money
from shared.negotiation import (
    JSON_MEDIA_TYPE,
    MSGPACK_MEDIA_TYPE,
    MediaRange,
    decode,
    encode,
    negotiate,
    negotiated_response,
    parse_accept,
)

JSON, MSGPACK = JSON_MEDIA_TYPE, MSGPACK_MEDIA_TYPE


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        (None, JSON),
        ("", JSON),
        ("*/*", JSON),
        ("application/*", JSON),
        ("application/json", JSON),
        ("application/msgpack", MSGPACK),
        ("APPLICATION/MSGPACK", MSGPACK),
        ("application/msgpack; charset=binary", MSGPACK),
        # A more specific range beats a wildcard of the same quality.
        ("application/msgpack, */*", MSGPACK),
        ("*/*, application/msgpack", MSGPACK),
        ("application/*, application/msgpack", MSGPACK),
        # Equal quality and specificity: the range written first.
        ("application/msgpack, application/json", MSGPACK),
        ("application/json, application/msgpack", JSON),
        # Quality decides before anything else.
        ("application/json;q=0.5, application/msgpack", MSGPACK),
        ("application/msgpack;q=0.5, application/json;q=0.9", JSON),
        ("application/msgpack;q=0.9, */*;q=0.95", JSON),
        ("application/msgpack;q=1.000, application/json;q=0.999", MSGPACK),
        ("application/msgpack;Q=0.2, application/json;q=0.1", MSGPACK),
        # The most specific matching range sets a type's quality, even when a wildcard would allow more.
        ("application/json;q=0, */*", MSGPACK),
        ("application/msgpack;q=0, application/*", JSON),
        # Browsers and tools that list other types first still get what they also admit.
        ("text/html, application/xhtml+xml, */*;q=0.8", JSON),
        ("text/plain, application/msgpack;q=0.1", MSGPACK),
        # Accept-extensions after q are not parameters of the range.
        ("application/msgpack;q=0.5;ext=1, application/json;q=0.4", MSGPACK),
        # Nothing parseable is no preference at all.
        ("garbage", JSON),
        ("*/json", JSON),
        ("application/json;q=2", JSON),
        (",,, ,", JSON),
    ],
)
def test_the_chosen_media_type(accept: str | None, chosen: str) -> None:
    assert negotiate(accept) == chosen


@pytest.mark.parametrize(
    "accept",
    [
        "text/html",
        "text/*",
        "image/png, text/csv;q=0.9",
        "application/json;q=0",
        "application/json;q=0, application/msgpack;q=0.000",
        "*/*;q=0",
        "application/*;q=0, text/html",
        "application/xml, application/x-msgpack",
        # A malformed range is skipped, the well-formed one still decides.
        "application/json;q=abc, text/html",
    ],
)
def test_an_accept_admitting_neither_type_is_none(accept: str) -> None:
    assert negotiate(accept) is None


def test_parse_accept_keeps_order_quality_and_drops_malformed_ranges() -> None:
    assert parse_accept("text/html;q=0.7, */json, application/*;q=.5, application/msgpack;q=0.25, */*") == [
        MediaRange("text", "html", 700, 0),
        MediaRange("application", "msgpack", 250, 3),
        MediaRange("*", "*", 1000, 4),
    ]


def test_a_long_accept_is_read_only_up_to_its_limit() -> None:
    long_accept = ", ".join(["text/html"] * 40 + ["application/msgpack"])
    assert negotiate(long_accept) is None


@given(st.text(max_size=200))
def test_any_accept_gives_an_offered_type_or_none(accept: str) -> None:
    assert negotiate(accept) in (JSON, MSGPACK, None)


class Document(BaseModel):
    count: int
    amount: Money
    day: date
    months: list[str] | None


DOCUMENT = Document(count=3, amount="-1234.50", day=date(2025, 7, 1), months=None)


def request_with(accept: str | None) -> Request:
    headers = [] if accept is None else [(b"accept", accept.encode())]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers, "query_string": b""})


def test_json_and_msgpack_answers_carry_the_same_document_with_money_as_a_string() -> None:
    as_json = negotiated_response(request_with(None), DOCUMENT)
    as_msgpack = negotiated_response(request_with(MSGPACK), DOCUMENT)
    assert as_json.headers["content-type"] == JSON
    assert as_msgpack.headers["content-type"] == MSGPACK
    assert as_json.headers["vary"] == as_msgpack.headers["vary"] == "accept"
    expected = {"count": 3, "amount": "-1234.50", "day": "2025-07-01", "months": None}
    assert orjson.loads(bytes(as_json.body)) == expected
    assert msgpack.unpackb(bytes(as_msgpack.body)) == expected
    assert decode(bytes(as_msgpack.body), MSGPACK) == decode(bytes(as_json.body), JSON) == expected


def test_a_request_admitting_neither_type_is_406_not_acceptable() -> None:
    with pytest.raises(ApiError) as raised:
        negotiated_response(request_with("text/html"), DOCUMENT)
    assert (raised.value.kind.status, raised.value.code) == (406, "not_acceptable")
    assert MSGPACK in (raised.value.detail or "")


@pytest.mark.parametrize("media_type", [JSON, MSGPACK])
def test_decode_inverts_encode(media_type: str) -> None:
    document = {"a": [1, "2.50", None, True], "b": {"c": "d"}}
    assert decode(encode(document, media_type), media_type) == document


@pytest.mark.parametrize(
    ("body", "media_type"), [(b"\xc1", MSGPACK), (b"\x92\x01", MSGPACK), (b"{", JSON), (b"\x01\x02", MSGPACK)]
)
def test_decode_refuses_a_malformed_body_with_value_error(body: bytes, media_type: str) -> None:
    with pytest.raises(ValueError):
        decode(body, media_type)


def test_encode_and_decode_refuse_other_media_types() -> None:
    with pytest.raises(ValueError):
        encode({}, "text/html")
    with pytest.raises(ValueError):
        decode(b"{}", "text/html")
