"""The designated balances shared out over an org's cycles (`obligations.allocate`): lodged cycles' frozen
required amounts first, then unlodged cycles oldest first; and the running totals a write adds per quarter."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from services.core.bas import quarter_start
from services.core.obligations import (
    LedgerCycle,
    QuarterTotals,
    TaxAmounts,
    allocate,
    amended,
    awaiting_lodgement,
    totals_by_quarter,
)

ZERO = Decimal("0.00")
NON_NEGATIVE = st.integers(min_value=0, max_value=10**12).map(lambda c: Decimal(c).scaleb(-2))
SIGNED = st.integers(min_value=-(10**12), max_value=10**12).map(lambda c: Decimal(c).scaleb(-2))
QUARTERS = [date(2023 + (m - 1) // 12, (m - 1) % 12 + 1, 1) for m in range(1, 37, 3)]


def amounts(values: st.SearchStrategy[Decimal]) -> st.SearchStrategy[TaxAmounts]:
    return st.builds(TaxAmounts, values, values)


@st.composite
def ledgers(draw: st.DrawFn) -> list[LedgerCycle]:
    starts = draw(st.lists(st.sampled_from(QUARTERS), unique=True, max_size=8))
    return [
        LedgerCycle(
            period_start=start,
            totals=QuarterTotals(draw(st.integers(0, 50)), draw(amounts(SIGNED))),
            lodged_required=draw(st.none() | amounts(NON_NEGATIVE)),
        )
        for start in starts
    ]


@given(amounts(NON_NEGATIVE), ledgers())
def test_secured_never_exceeds_required_and_never_more_than_the_balance_in_all(
    balance: TaxAmounts, ledger: list[LedgerCycle]
) -> None:
    shared = allocate(balance, ledger)
    assert set(shared.cycles) == {c.period_start for c in ledger}
    for cycle in ledger:
        found = shared.of(cycle.period_start)
        assert found.paygw.required == cycle.required.paygw and found.gst.required == cycle.required.gst
        for tax in found.taxes:
            assert ZERO <= tax.secured <= tax.required
            assert tax.shortfall == tax.required - tax.secured
    assert sum((o.paygw.secured for o in shared.cycles.values()), ZERO) <= balance.paygw
    assert sum((o.gst.secured for o in shared.cycles.values()), ZERO) <= balance.gst
    assert shared.unlodged_shortfall == sum(
        (shared.of(c.period_start).total_shortfall for c in ledger if not c.lodged), ZERO
    )


@given(amounts(NON_NEGATIVE), amounts(NON_NEGATIVE), ledgers())
def test_a_deposit_never_reduces_any_cycles_secured(
    balance: TaxAmounts, deposit: TaxAmounts, ledger: list[LedgerCycle]
) -> None:
    before = allocate(balance, ledger)
    after = allocate(TaxAmounts(balance.paygw + deposit.paygw, balance.gst + deposit.gst), ledger)
    for start in before.cycles:
        for was, now in zip(before.of(start).taxes, after.of(start).taxes, strict=True):
            assert now.secured >= was.secured


@given(amounts(NON_NEGATIVE), ledgers())
def test_lodged_cycles_are_paid_first_then_unlodged_oldest_first(
    balance: TaxAmounts, ledger: list[LedgerCycle]
) -> None:
    shared = allocate(balance, ledger)
    order = sorted(ledger, key=lambda c: (not c.lodged, c.period_start))
    # A cycle short of anything leaves nothing for any cycle after it in the order.
    for i, cycle in enumerate(order):
        for tax in ("paygw", "gst"):
            if getattr(shared.of(cycle.period_start), tax).shortfall > 0:
                assert all(getattr(shared.of(c.period_start), tax).secured == ZERO for c in order[i + 1 :])


@given(NON_NEGATIVE.filter(lambda x: x > 0))
def test_one_deposit_of_x_secures_the_older_of_two_cycles_requiring_x(x: Decimal) -> None:
    ledger = [
        LedgerCycle(date(2025, 7, 1), QuarterTotals(1, TaxAmounts(x, ZERO))),
        LedgerCycle(date(2025, 10, 1), QuarterTotals(1, TaxAmounts(x, ZERO))),
    ]
    shared = allocate(TaxAmounts(x, ZERO), ledger)
    assert shared.of(date(2025, 7, 1)).status == "READY"
    assert shared.of(date(2025, 10, 1)).status == "BLOCKED"
    assert shared.of(date(2025, 10, 1)).paygw.shortfall == x
    # Lodged at X, the older one keeps its X even when listed later, and its newer lines do not count.
    lodged = [
        LedgerCycle(date(2025, 10, 1), QuarterTotals(1, TaxAmounts(x, ZERO))),
        LedgerCycle(date(2025, 7, 1), QuarterTotals(2, TaxAmounts(x + x, ZERO)), lodged_required=TaxAmounts(x, ZERO)),
    ]
    after = allocate(TaxAmounts(x, ZERO), lodged)
    assert after.of(date(2025, 7, 1)).paygw.secured == x and after.of(date(2025, 7, 1)).paygw.required == x
    assert after.of(date(2025, 10, 1)).paygw.secured == ZERO and after.unlodged_shortfall == x
    assert allocate(TaxAmounts(x, ZERO), []).of(date(2025, 10, 1)).status == "READY"


def test_gst_refund_quarters_require_nothing_and_take_nothing() -> None:
    ledger = [
        LedgerCycle(date(2025, 7, 1), QuarterTotals(3, TaxAmounts(ZERO, Decimal("-40.00")))),
        LedgerCycle(date(2025, 10, 1), QuarterTotals(1, TaxAmounts(ZERO, Decimal("10.00")))),
    ]
    shared = allocate(TaxAmounts(ZERO, Decimal("10.00")), ledger)
    assert shared.of(date(2025, 7, 1)).gst.required == ZERO
    assert shared.of(date(2025, 10, 1)).status == "READY"


@dataclass(frozen=True)
class Line:
    date: date
    paygw_amount: Decimal
    gst_amount: Decimal


@given(st.lists(st.builds(Line, st.dates(date(2020, 1, 1), date(2030, 12, 31)), SIGNED, SIGNED), max_size=60))
def test_totals_by_quarter_adds_each_line_to_its_quarter(lines: list[Line]) -> None:
    totals = totals_by_quarter(lines)
    assert list(totals) == sorted(totals)
    assert sum(t.lines for t in totals.values()) == len(lines)
    for start, added in totals.items():
        mine = [line for line in lines if quarter_start(line.date) == start]
        assert start.day == 1 and start.month in (1, 4, 7, 10)
        assert start <= min(line.date for line in mine) and max(line.date for line in mine) < start + timedelta(93)
        assert added == QuarterTotals(
            len(mine),
            TaxAmounts(sum((line.paygw_amount for line in mine), ZERO), sum((line.gst_amount for line in mine), ZERO)),
        )


def test_awaiting_lodgement_is_the_ended_unlodged_quarters_with_lines_oldest_first() -> None:
    some = QuarterTotals(2, TaxAmounts(Decimal("1.00"), ZERO))
    ledger = [
        LedgerCycle(date(2025, 10, 1), some),  # current on 2025-11-15: not ended
        LedgerCycle(date(2025, 4, 1), some),
        LedgerCycle(date(2025, 1, 1), some, lodged_required=TaxAmounts(ZERO, ZERO)),  # lodged
        LedgerCycle(date(2024, 10, 1), QuarterTotals(0, TaxAmounts(ZERO, ZERO))),  # no lines
        LedgerCycle(date(2025, 7, 1), some),
    ]
    assert awaiting_lodgement(ledger, date(2025, 11, 15)) == [date(2025, 4, 1), date(2025, 7, 1)]
    assert awaiting_lodgement(ledger, date(2025, 9, 30)) == [date(2025, 4, 1)]  # Jul-Sep ends that day
    assert awaiting_lodgement(ledger, date(2026, 1, 1))[-1] == date(2025, 10, 1)
    # Lodged at 1.00 of PAYGW: the same lines need no amendment; another line does.
    lodged = LedgerCycle(date(2025, 1, 1), some, lodged_required=TaxAmounts(Decimal("1.00"), ZERO))
    assert amended([lodged]) == []
    more = LedgerCycle(date(2025, 1, 1), QuarterTotals(3, TaxAmounts(Decimal("2.00"), ZERO)), lodged.lodged_required)
    assert amended([*ledger, more]) == [ledger[2], more]
