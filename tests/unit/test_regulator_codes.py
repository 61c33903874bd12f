"""Pure rules of regulator credentials: access-code shape and lookup, session-token shape, names, expiry periods."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.regulator import codes


def test_a_new_code_parses_back_to_its_lookup_and_nothing_else_does() -> None:
    code = codes.new_access_code()
    assert code.text == f"rgc.{code.lookup}.{code.secret}" and len(code.lookup) == 16
    assert codes.parse_lookup(code.text) == code.lookup
    assert codes.new_access_code().lookup != code.lookup
    for bad in (
        "",
        "rgc",
        f"rgc.{code.lookup}",
        f"rgx.{code.lookup}.{code.secret}",
        code.text + "x",
        f"rgc.{code.lookup.upper()}.{code.secret}",
        f" {code.text}",
        code.text.replace(".", "_"),
    ):
        assert codes.parse_lookup(bad) is None, bad


def test_a_derived_code_is_the_same_for_the_same_key_and_name_only() -> None:
    first = codes.derived_access_code(b"k" * 32, "demo-regulator")
    assert first == codes.derived_access_code(b"k" * 32, "demo-regulator")
    assert first != codes.derived_access_code(b"j" * 32, "demo-regulator")
    assert first != codes.derived_access_code(b"k" * 32, "other")
    assert codes.parse_lookup(first.text) == first.lookup


def test_session_tokens_have_their_own_shape() -> None:
    token = codes.new_session_token()
    assert codes.is_session_token(token) and token.startswith("rgs_")
    assert not codes.is_session_token("eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2ln")
    assert not codes.is_session_token(token[:-1])
    assert not codes.is_session_token(codes.new_access_code().text)


@pytest.mark.parametrize("name", ["asic", "asic.team-1", "A_b", "x" * 64])
def test_valid_names(name: str) -> None:
    assert codes.valid_name(name) == name


@pytest.mark.parametrize("name", ["", "has space", "x" * 65, "ann@asic.gov.au", "tab\t", "é"])
def test_invalid_names_say_the_rule(name: str) -> None:
    with pytest.raises(ValueError, match="1 to 64 letters"):
        codes.valid_name(name)


def test_expiry_periods() -> None:
    assert codes.parse_expires("90d") == timedelta(days=90)
    assert codes.parse_expires("12w") == timedelta(weeks=12)
    assert codes.parse_expires(" 1d ") == timedelta(days=1)
    for bad in ("", "0d", "90", "d", "-5d", "1.5d", "3m", "90 d"):
        with pytest.raises(ValueError, match="days or weeks"):
            codes.parse_expires(bad)
    with pytest.raises(ValueError, match="at most 730 days"):
        codes.parse_expires("731d")
