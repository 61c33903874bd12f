"""Designated accounts' rules: derived account ids, the source and reference formats, which attempts are refused,
and (over random sequences of attempts) that a balance is the sum of the accepted deposits and never falls."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from services.core.designated import (
    REFERENCE_MAX_CHARS,
    SOURCE_MAX_CHARS,
    TAXES,
    Attempt,
    Reference,
    Refusal,
    Source,
    account_id,
    account_ids,
    claimed_amount,
    refusal,
    refusal_message,
    tax_of,
)

ORG = uuid.UUID("0b6f1f0e-8f55-4f3a-9d0c-2f1e5b7a9c11")
OTHER = uuid.UUID("4c3a2b1d-0e9f-4a8b-8c7d-6e5f4a3b2c1d")
LISTED = frozenset({"CBA 062-000 12345678", "payroll-clearing"})

sources = TypeAdapter(Source)
references = TypeAdapter(Reference)


def test_account_ids_are_uuid5_of_the_org_and_tax() -> None:
    assert account_id(ORG, "PAYGW") == uuid.uuid5(ORG, "designated:PAYGW")
    assert account_id(ORG, "GST") == uuid.uuid5(ORG, "designated:GST")
    assert account_ids(ORG) == {"PAYGW": account_id(ORG, "PAYGW"), "GST": account_id(ORG, "GST")}
    assert TAXES == ("PAYGW", "GST")


def test_tax_of_names_only_the_orgs_own_accounts() -> None:
    assert tax_of(ORG, account_id(ORG, "PAYGW")) == "PAYGW"
    assert tax_of(ORG, account_id(ORG, "GST")) == "GST"
    assert tax_of(ORG, account_id(OTHER, "PAYGW")) is None
    assert tax_of(ORG, uuid.uuid4()) is None


@pytest.mark.parametrize(
    "text", ["a", "CBA 062-000 12345678", "payroll-clearing", "ANZ_1.2", "x" * SOURCE_MAX_CHARS, "A B"]
)
def test_sources_of_an_identifiers_alphabet_are_accepted(text: str) -> None:
    assert sources.validate_python(text) == text


@pytest.mark.parametrize(
    "text",
    ["", " a", "a ", "x" * (SOURCE_MAX_CHARS + 1), "Pay Ms O'Brien", "a/b", "naïve", "a\nb", "a\tb", "50%"],
)
def test_other_sources_are_refused(text: str) -> None:
    with pytest.raises(ValidationError):
        sources.validate_python(text)


def test_a_source_must_be_a_string() -> None:
    with pytest.raises(ValidationError):
        sources.validate_python(12345678)


@pytest.mark.parametrize("text", ["PAYRUN-2025-07-14", "INV#12/3:a", "r" * REFERENCE_MAX_CHARS])
def test_references_are_accepted(text: str) -> None:
    assert references.validate_python(text) == text


@pytest.mark.parametrize("text", ["", "r" * (REFERENCE_MAX_CHARS + 1), " x", "wages for John Smith!", "a\x00"])
def test_other_references_are_refused(text: str) -> None:
    with pytest.raises(ValidationError):
        references.validate_python(text)


def test_a_positive_deposit_from_a_listed_source_is_allowed() -> None:
    assert refusal(Attempt(Decimal("0.01"), "payroll-clearing"), LISTED) is None


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [
        (Attempt(Decimal("100.00"), "payroll-clearing", "out"), Refusal.WITHDRAWAL),
        (Attempt(Decimal("-100.00"), "payroll-clearing", "out"), Refusal.WITHDRAWAL),
        (Attempt(Decimal("-0.01"), "payroll-clearing"), Refusal.DEBIT),
        (Attempt(Decimal("-5.00"), "somewhere-else"), Refusal.DEBIT),
        (Attempt(Decimal("0.00"), "payroll-clearing"), Refusal.ZERO),
        (Attempt(Decimal("10.00"), "somewhere-else"), Refusal.UNLISTED_SOURCE),
        (Attempt(Decimal("10.00"), "PAYROLL-CLEARING"), Refusal.UNLISTED_SOURCE),
    ],
)
def test_every_other_attempt_is_refused_with_its_reason(attempt: Attempt, expected: Refusal) -> None:
    assert refusal(attempt, LISTED) is expected


def test_an_empty_whitelist_refuses_every_deposit() -> None:
    assert refusal(Attempt(Decimal("10.00"), "payroll-clearing"), frozenset()) is Refusal.UNLISTED_SOURCE


@pytest.mark.parametrize("reason", list(Refusal))
def test_every_refusal_has_a_message_naming_the_account(reason: Refusal) -> None:
    assert "GST designated account" in refusal_message(reason, "GST")


amounts = st.decimals(min_value=Decimal("-1000000.00"), max_value=Decimal("1000000.00"), places=2)
attempts = st.builds(
    Attempt,
    amount=amounts,
    source=st.sampled_from([*sorted(LISTED), "somewhere-else"]),
    direction=st.sampled_from(["in", "in", "in", "out"]),
)


@given(st.lists(attempts, max_size=60))
def test_a_balance_is_the_sum_of_accepted_deposits_and_never_falls(sequence: list[Attempt]) -> None:
    balance = Decimal("0.00")
    accepted: list[Decimal] = []
    for attempt in sequence:
        before = balance
        if refusal(attempt, LISTED) is None:
            accepted.append(attempt.amount)
            balance += attempt.amount
        assert balance >= before
        assert balance == sum(accepted, Decimal("0.00"))
    assert all(amount > 0 for amount in accepted)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"amount": "250.00"}, Decimal("250.00")),
        ({"amount": "-250.00", "to": "x"}, Decimal("-250.00")),
        ({"amount": 250}, None),
        ({"amount": "1e3"}, None),
        ({}, None),
        (["250.00"], None),
        (None, None),
    ],
)
def test_claimed_amount_reads_only_a_money_amount(body: object, expected: Decimal | None) -> None:
    assert claimed_amount(body) == expected
