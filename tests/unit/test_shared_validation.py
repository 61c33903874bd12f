"""`shared.validation`: the paths of bad values in parsed JSON, and the 400 for a body orjson refuses."""

from __future__ import annotations

import uuid

import pytest
from starlette.requests import Request

from shared.errors import ApiError
from shared.validation import malformed_json, nul_paths, path_uuid


@pytest.mark.parametrize(
    ("body", "paths"),
    [
        (b'{"amount": 1e309}', ["amount"]),
        (b'{"amount": -1e309}', ["amount"]),
        (b'{"amount": NaN}', ["amount"]),
        (b'{"amount": Infinity, "gst": -Infinity}', ["amount", "gst"]),
        (b'{"lines": [{"amount": 1}, {"amount": 123456789012345678901234567890}]}', ["lines.1.amount"]),
        (b"[NaN]", ["$.0"]),
        (b"NaN", ["$"]),
    ],
)
def test_numbers_orjson_cannot_hold_are_named_by_path(body: bytes, paths: list[str]) -> None:
    problem = malformed_json(body)
    assert problem.code == "invalid_body"
    assert [error.path for error in problem.errors] == paths
    assert all(error.message == "number out of range" for error in problem.errors)


@pytest.mark.parametrize(
    "body",
    [b'{"a":', b"\xff\xfe", b"{not json}", b'{"a": 1} trailing', b"[" * 100_000 + b"]" * 100_000, b""],
)
def test_anything_else_orjson_refuses_is_plainly_not_json(body: bytes) -> None:
    problem = malformed_json(body)
    assert (problem.code, problem.detail, problem.errors) == ("invalid_body", "The body is not valid JSON", ())


def test_nul_paths_finds_keys_and_values_at_any_depth() -> None:
    data = {"a": "x\x00", "b": [{"c\x00": 1}, "ok"], "d": {"e": ["\x00"]}}
    assert nul_paths(data) == ["a", "b.0.c\x00", "d.e.0"]
    assert nul_paths({"fine": ["text", 1, None]}) == []


def _request_with(path_params: dict[str, str]) -> Request:
    return Request({"type": "http", "method": "GET", "path": "/", "headers": [], "path_params": path_params})


def test_path_uuid_returns_the_id_and_answers_anything_else_404() -> None:
    ident = uuid.uuid4()
    assert path_uuid(_request_with({"id": str(ident)}), "id") == ident
    for text in ("not-a-uuid", "", "1234", str(ident) + "0"):
        with pytest.raises(ApiError) as caught:
            path_uuid(_request_with({"id": text}), "id")
        assert caught.value.code == "not_found"


def test_path_uuid_takes_only_the_canonical_hyphenated_form_in_either_case() -> None:
    ident = uuid.uuid4()
    assert path_uuid(_request_with({"id": str(ident).upper()}), "id") == ident
    for text in (
        "{" + str(ident) + "}",
        f"urn:uuid:{ident}",
        ident.hex,
        ident.hex.upper(),
        f" {ident}",
        f"{ident}\n",
        str(ident).replace("-", "", 1) + "0",
    ):
        with pytest.raises(ApiError) as caught:
            path_uuid(_request_with({"id": text}), "id")
        assert caught.value.code == "not_found", text
