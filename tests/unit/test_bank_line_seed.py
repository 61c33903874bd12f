"""The pure bank-line generator of `apgms seed --bank-lines`: deterministic, dated in its window, valid money with
consistent GST and PAYGW components, payees from its lists."""

from __future__ import annotations

import uuid
from datetime import date
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apgms.bank_line_seed import (
    FIXED_PAYEES,
    MAX_LINE_CENTS,
    LineBatch,
    LineGenerator,
    gst_cents,
    paygw_cents,
    window_start,
)
from services.core.models import DESCRIPTION_MAX_CHARS, PAYEE_MAX_CHARS, component_errors
from shared.money import format_money, is_money, parse_money

ORG = uuid.UUID("00000000-0000-4000-8000-00000000000a")
OTHER_ORG = uuid.UUID("00000000-0000-4000-8000-00000000000b")
TODAY = date(2026, 11, 27)
LINES = 5_000
THURSDAY = 3


def rows(batch: LineBatch) -> list[tuple[object, ...]]:
    return list(
        zip(
            batch.ids,
            batch.dates,
            batch.amounts,
            batch.gst_amounts,
            batch.paygw_amounts,
            batch.payees,
            batch.descriptions,
            strict=True,
        )
    )


@pytest.fixture(scope="module")
def batch() -> LineBatch:
    return LineGenerator(7, ORG, 0, TODAY).batch(LINES)


def test_the_same_seed_org_and_start_give_the_same_lines_however_batched(batch: LineBatch) -> None:
    again = LineGenerator(7, ORG, 0, TODAY)
    assert rows(again.batch(1_234)) + rows(again.batch(LINES - 1_234)) == rows(batch)


def test_another_seed_org_or_start_gives_other_lines(batch: LineBatch) -> None:
    ids = set(batch.ids)
    for other in (
        LineGenerator(8, ORG, 0, TODAY),
        LineGenerator(7, OTHER_ORG, 0, TODAY),
        LineGenerator(7, ORG, 1, TODAY),
    ):
        assert ids.isdisjoint(other.batch(LINES).ids)
    assert len(ids) == LINES
    assert all(line_id.version == 4 for line_id in ids)


def test_dates_lie_in_the_two_years_up_to_today(batch: LineBatch) -> None:
    assert window_start(TODAY) == date(2024, 11, 27)
    assert window_start(date(2028, 2, 29)) == date(2026, 2, 28)
    assert all(date(2024, 11, 27) <= day <= TODAY for day in batch.dates)
    assert (max(batch.dates) - min(batch.dates)).days > 700, "spread over the window"


def test_amounts_are_money_with_two_places_within_twelve_digits(batch: LineBatch) -> None:
    for amount in (*batch.amounts, *batch.gst_amounts, *batch.paygw_amounts):
        assert is_money(amount), amount
        assert amount.as_tuple().exponent == -2
        assert parse_money(format_money(amount)) == amount
        assert abs(amount) <= Decimal(MAX_LINE_CENTS) / 100


def test_amounts_are_mostly_small_debits_with_some_large_credits(batch: LineBatch) -> None:
    debits = [amount for amount in batch.amounts if amount < 0]
    credits = [amount for amount in batch.amounts if amount > 0]
    assert len(debits) + len(credits) == LINES
    assert 0.7 < len(debits) / LINES < 0.9
    small = sorted(-amount for amount in debits)[len(debits) // 2]
    assert Decimal("10.00") < small < Decimal("500.00"), "the median debit is a purchase, not an invoice"
    assert max(credits) > Decimal("10000.00")
    assert len(set(batch.amounts)) > LINES * 0.9, "a spread of amounts, not a few repeated"


def test_gst_is_one_eleventh_of_the_amount_with_its_sign_or_zero(batch: LineBatch) -> None:
    with_gst = 0
    for amount, gst in zip(batch.amounts, batch.gst_amounts, strict=True):
        if gst:
            with_gst += 1
            cents = int(abs(amount) * 100)
            assert abs(gst) == Decimal(gst_cents(cents)) / 100
            assert (gst > 0) == (amount > 0)
    assert with_gst > LINES * 0.7


def test_paygw_is_withheld_on_wage_lines_only(batch: LineBatch) -> None:
    wages = [
        (amount, gst, paygw, description)
        for amount, gst, paygw, description in zip(
            batch.amounts, batch.gst_amounts, batch.paygw_amounts, batch.descriptions, strict=True
        )
        if paygw
    ]
    assert len(wages) > LINES * 0.04
    for amount, gst, paygw, description in wages:
        assert paygw > 0 and amount < 0 and gst == 0
        gross = -amount + paygw
        assert paygw == Decimal(paygw_cents(int(gross * 100))) / 100
        assert paygw < -amount, "withheld is less than the net pay at any rate below 50%"
        assert "pay" in description.lower()


def test_wages_fall_on_fortnightly_thursdays(batch: LineBatch) -> None:
    paydays = {day for day, paygw in zip(batch.dates, batch.paygw_amounts, strict=True) if paygw}
    assert all(day.weekday() == THURSDAY for day in paydays)
    assert all((max(paydays) - day).days % 14 == 0 for day in paydays)


def test_payees_come_from_the_fixed_lists_and_the_orgs_catalogue(batch: LineBatch) -> None:
    generator = LineGenerator(7, ORG, 0, TODAY)
    allowed = generator.catalogue.payees()
    assert set(batch.payees) <= allowed
    assert {"Woolworths", "Bunnings Warehouse", "Telstra", "Australian Taxation Office"} <= FIXED_PAYEES
    assert any(payee.endswith("Pty Ltd") for payee in batch.payees)
    assert set(generator.catalogue.employees) & set(batch.payees), "wage lines name employees"
    assert all(payee and description for payee, description in zip(batch.payees, batch.descriptions, strict=True))


@given(st.integers(min_value=0, max_value=MAX_LINE_CENTS))
def test_gst_cents_rounds_a_eleventh_to_the_nearest_cent(cents: int) -> None:
    assert abs(Decimal(gst_cents(cents)) - Decimal(cents) / 11) <= Decimal("0.5")


def test_paygw_follows_the_brackets() -> None:
    assert paygw_cents(0) == 0
    assert paygw_cents(700_00) == 0, "18,200 a year is tax free"
    # 2,000.00 a fortnight is 52,000 a year: 16% of 26,800 + 30% of 7,000 + 2% Medicare = 7,428 a year.
    assert paygw_cents(2_000_00) == round(7_428_00 / 26)
    assert [paygw_cents(gross) for gross in (1_000_00, 3_000_00, 9_000_00)] == sorted(
        paygw_cents(gross) for gross in (1_000_00, 3_000_00, 9_000_00)
    )


def test_every_line_obeys_the_apis_field_rules(batch: LineBatch) -> None:
    """A seeded line is one the API could have accepted: the same component and length rules."""
    for amount, gst, paygw, payee, description in zip(
        batch.amounts, batch.gst_amounts, batch.paygw_amounts, batch.payees, batch.descriptions, strict=True
    ):
        assert component_errors(amount, gst, paygw) == []
        assert 0 < len(payee.strip()) <= PAYEE_MAX_CHARS and len(description) <= DESCRIPTION_MAX_CHARS
