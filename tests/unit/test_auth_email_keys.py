"""The rule that makes an email address an account key (services/auth/emails.py; issue #9, finding 4)."""

from __future__ import annotations

import sys
import unicodedata
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.auth import emails
from services.auth.emails import EMAIL_MAX_CHARS, canonical_email, email_key

ADDRESS = "Jessie.Auditor@Demo.APGMS.example"


def fullwidth(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


@pytest.mark.parametrize(
    "spelled",
    [
        ADDRESS,
        ADDRESS.lower(),
        ADDRESS.upper(),
        f"  {ADDRESS}\t\n",
        f"\u3000{ADDRESS}\u00a0",  # an ideographic and a no-break space
        fullwidth(ADDRESS),
        ADDRESS.replace("s", "\u017f"),  # the long s
        ADDRESS.replace("x", "\uff58"),
    ],
)
def test_spellings_of_one_address_have_one_key(spelled: str) -> None:
    assert email_key(spelled) == "jessie.auditor@demo.apgms.example"


def test_the_canonical_form_keeps_the_case_it_was_given() -> None:
    assert canonical_email(f" {fullwidth(ADDRESS)} ") == ADDRESS


@pytest.mark.parametrize(
    "refused",
    [
        ADDRESS.replace("i", "\u0130", 1),  # I with a dot above: PostgreSQL's lower() makes it `i`
        ADDRESS.replace("i", "\u0131", 1),  # dotless i: Python's upper() makes it `I`
        ADDRESS.replace("A", "\u0391", 1),  # Greek capital alpha, a look-alike
        ADDRESS.replace("e", "\u0435", 1),  # Cyrillic e
        "jessie@b\u00fccher.example",  # an international domain not in its xn-- form
        "jessie\u200b@demo.example",  # zero-width space
        "jes sie@demo.example",
        "jessie\x7f@demo.example",
    ],
)
def test_what_is_not_printable_ascii_after_nfkc_is_refused(refused: str) -> None:
    with pytest.raises(ValueError, match="printable ASCII"):
        email_key(refused)


@given(st.text(max_size=80))
def test_a_key_is_printable_lower_case_ascii_and_its_own_key(text: str) -> None:
    try:
        key = email_key(text)
    except ValueError:
        return
    assert all("!" <= c <= "~" for c in key)
    # Python's casefold() and lower() and PostgreSQL's lower() all agree on ASCII: no second opinion is possible.
    assert key == key.lower() == key.casefold()
    assert email_key(key) == key
    assert email_key(canonical_email(text)) == key


@pytest.mark.parametrize("text", ["a" * 321, "\u33c2" * 340_000, " " * 400 + ADDRESS])
def test_text_over_the_limit_is_refused_before_it_is_normalised(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def normalise(*_: object) -> str:
        raise AssertionError("normalised text over the limit")

    monkeypatch.setattr(emails, "unicodedata", SimpleNamespace(normalize=normalise))
    with pytest.raises(ValueError, match=f"at most {EMAIL_MAX_CHARS} characters"):
        email_key(text)


def test_an_address_of_exactly_the_limit_is_a_key() -> None:
    address = "a" * 64 + "@" + "b" * (EMAIL_MAX_CHARS - 64 - 1 - len(".example")) + ".example"
    assert len(address) == EMAIL_MAX_CHARS
    assert email_key(address) == address


@given(st.text(max_size=40))
def test_nfkc_never_shortens_a_text_it_makes_ascii(text: str) -> None:
    """Why refusing text over the limit before NFKC loses no address but space-padded ones (emails.py)."""
    normalised = unicodedata.normalize("NFKC", text)
    if normalised.isascii():
        assert len(normalised) >= len(text)


def test_no_character_nfkc_makes_ascii_is_shorter_after_it() -> None:
    """The same, exhaustively for single characters; composition only ever produces non-ASCII characters."""
    for point in range(sys.maxunicode + 1):
        character = chr(point)
        normalised = unicodedata.normalize("NFKC", character)
        if normalised.isascii():
            assert len(normalised) >= 1, hex(point)
        if unicodedata.normalize("NFD", character) != character:
            assert not character.isascii(), hex(point)
