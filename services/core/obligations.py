"""What an org owes for a BAS cycle and whether it has set it aside (pure).

    evaluate(sums, secured)        Obligations: per tax required / secured / shortfall, the status, the blockers
    shortfall(required, secured)   max(0, required - secured)
    totals_by_quarter(lines)       what written lines add to each quarter's running totals (`core.cycle_totals`)
    allocate(balances, ledger)     the designated balances shared out over the org's cycles, oldest first
    awaiting_lodgement(ledger, d)  the unlodged quarters with lines whose period ended before day d, oldest first
    amended(ledger)                the lodged quarters whose lines no longer sum to what was lodged

Required amounts are the sums of the cycle's bank lines' components (lines dated within the period):
- PAYGW: the sum of `paygw_amount`, never negative (a line's PAYG withheld is a sum owed to the ATO).
- GST: the NET sum of `gst_amount`, floored at zero. A line's GST component has the line's sign: on a sale (money
  in) it is GST collected, owed to the ATO; on a purchase (money out) it is a credit. The net is what the BAS asks
  for; when credits exceed collections the ATO owes a refund, and nothing needs to be set aside, so it is 0.00 (the
  refund is not modelled).
Secured amounts come from the designated accounts' balances (all their transfers: money only comes in), shared
out per tax by `allocate`: first the LODGED cycles' frozen required amounts (money set aside for a lodged BAS is
spoken for), each in period order, then the unlodged cycles oldest first; a cycle's secured is what is left for it,
never more than its required. So one deposit of X secures one cycle requiring X, not every later one, and a deposit
never lowers any cycle's secured (the order is fixed; a larger balance leaves each cycle at least as much).

A cycle is READY when no tax is short and BLOCKED otherwise; each shortfall is a blocker in words with its amount
("PAYGW short by $1,234.50"). The total shortfall is what the SUSPICIOUS_TAX_GAP alert threshold is compared with.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Literal, Protocol

from services.core.bas import cycle_for, quarter_start

__all__ = [
    "TAXES",
    "Allocation",
    "LedgerCycle",
    "Obligations",
    "QuarterTotals",
    "Status",
    "TaxAmounts",
    "TaxObligation",
    "allocate",
    "amended",
    "awaiting_lodgement",
    "dollars",
    "evaluate",
    "required_of",
    "shortfall",
    "totals_by_quarter",
]

Tax = Literal["PAYGW", "GST"]
TAXES: tuple[Tax, ...] = ("PAYGW", "GST")
Status = Literal["READY", "BLOCKED"]
ZERO = Decimal("0.00")


@dataclass(frozen=True)
class TaxAmounts:
    """An amount per tax: a cycle's bank lines' sums (`store.cycles.line_sums`), or the designated accounts'
    balances (`store.cycles.designated_balances`)."""

    paygw: Decimal
    gst: Decimal


@dataclass(frozen=True)
class TaxObligation:
    tax: Tax
    required: Decimal
    secured: Decimal
    shortfall: Decimal

    @property
    def status(self) -> Status:
        return "BLOCKED" if self.shortfall > ZERO else "READY"


@dataclass(frozen=True)
class Obligations:
    paygw: TaxObligation
    gst: TaxObligation

    @property
    def taxes(self) -> tuple[TaxObligation, TaxObligation]:
        return (self.paygw, self.gst)

    @property
    def total_shortfall(self) -> Decimal:
        return self.paygw.shortfall + self.gst.shortfall

    @property
    def status(self) -> Status:
        return "BLOCKED" if self.total_shortfall > ZERO else "READY"

    @property
    def blockers(self) -> tuple[str, ...]:
        return tuple(f"{t.tax} short by {dollars(t.shortfall)}" for t in self.taxes if t.shortfall > ZERO)


def shortfall(required: Decimal, secured: Decimal) -> Decimal:
    return max(ZERO, required - secured)


def _tax(tax: Tax, required: Decimal, secured: Decimal) -> TaxObligation:
    return TaxObligation(tax=tax, required=required, secured=secured, shortfall=shortfall(required, secured))


def evaluate(sums: TaxAmounts, secured: TaxAmounts) -> Obligations:
    """The obligations of a cycle whose lines sum to `sums`, with `secured` set aside per tax."""
    return Obligations(
        paygw=_tax("PAYGW", max(ZERO, sums.paygw), secured.paygw),
        gst=_tax("GST", max(ZERO, sums.gst), secured.gst),
    )


def required_of(sums: TaxAmounts) -> TaxAmounts:
    """What a cycle whose lines sum to `sums` requires per tax: PAYGW's sum and GST's net, floored at zero."""
    return TaxAmounts(paygw=max(ZERO, sums.paygw), gst=max(ZERO, sums.gst))


NO_OBLIGATIONS = evaluate(TaxAmounts(ZERO, ZERO), TaxAmounts(ZERO, ZERO))


class _TaxedLine(Protocol):
    @property
    def date(self) -> date: ...
    @property
    def paygw_amount(self) -> Decimal: ...
    @property
    def gst_amount(self) -> Decimal: ...


@dataclass(frozen=True)
class QuarterTotals:
    """A quarter's running totals (a `core.cycle_totals` row), or what a write adds to them."""

    lines: int
    sums: TaxAmounts

    def __add__(self, other: QuarterTotals) -> QuarterTotals:
        return QuarterTotals(
            lines=self.lines + other.lines,
            sums=TaxAmounts(paygw=self.sums.paygw + other.sums.paygw, gst=self.sums.gst + other.sums.gst),
        )


def totals_by_quarter(lines: Iterable[_TaxedLine]) -> dict[date, QuarterTotals]:
    """What `lines` add to the running totals of each quarter they are dated in, keyed by quarter start."""
    counts: dict[date, int] = {}
    paygw: dict[date, Decimal] = {}
    gst: dict[date, Decimal] = {}
    for line in lines:
        start = quarter_start(line.date)
        counts[start] = counts.get(start, 0) + 1
        paygw[start] = paygw.get(start, ZERO) + line.paygw_amount
        gst[start] = gst.get(start, ZERO) + line.gst_amount
    return {start: QuarterTotals(counts[start], TaxAmounts(paygw[start], gst[start])) for start in sorted(counts)}


@dataclass(frozen=True)
class LedgerCycle:
    """One quarter of an org as the allocation sees it: its lines' running totals, and, once it is lodged, the
    required amounts frozen into its row (what the lodged BAS claimed; lines written later do not change it)."""

    period_start: date
    totals: QuarterTotals
    lodged_required: TaxAmounts | None = None

    @property
    def lodged(self) -> bool:
        return self.lodged_required is not None

    @property
    def required(self) -> TaxAmounts:
        return self.lodged_required if self.lodged_required is not None else required_of(self.totals.sums)


@dataclass(frozen=True)
class Allocation:
    """The obligations of each quarter of the ledger, with the balances shared out oldest first."""

    cycles: Mapping[date, Obligations]
    lodged: frozenset[date] = field(default_factory=frozenset)

    def of(self, period_start: date) -> Obligations:
        """A quarter's obligations; one with no lines and no row requires nothing."""
        return self.cycles.get(period_start, NO_OBLIGATIONS)

    @property
    def unlodged(self) -> dict[date, Obligations]:
        return {start: o for start, o in self.cycles.items() if start not in self.lodged}

    @property
    def unlodged_shortfall(self) -> Decimal:
        """The total shortfall (PAYGW's and GST's) of every unlodged cycle: what the SUSPICIOUS_TAX_GAP threshold
        is compared with."""
        return sum((o.total_shortfall for o in self.unlodged.values()), ZERO)


def allocate(balances: TaxAmounts, ledger: Iterable[LedgerCycle]) -> Allocation:
    """Share `balances` out per tax: lodged cycles first, then unlodged ones, each group oldest first; a cycle
    gets min(its required, what is left)."""
    order = sorted(ledger, key=lambda c: (not c.lodged, c.period_start))
    left_paygw, left_gst = max(ZERO, balances.paygw), max(ZERO, balances.gst)
    cycles: dict[date, Obligations] = {}
    for cycle in order:
        required = cycle.required
        paygw, gst = min(required.paygw, left_paygw), min(required.gst, left_gst)
        left_paygw, left_gst = left_paygw - paygw, left_gst - gst
        cycles[cycle.period_start] = evaluate(required, TaxAmounts(paygw=paygw, gst=gst))
    return Allocation(cycles=cycles, lodged=frozenset(c.period_start for c in order if c.lodged))


def awaiting_lodgement(ledger: Iterable[LedgerCycle], today: date) -> list[date]:
    """The starts of the unlodged quarters that have lines and ended before `today`, oldest first: the next BAS to
    lodge is the first (a quarter is lodged only once it has ended, and in order)."""
    return sorted(
        c.period_start
        for c in ledger
        if not c.lodged and c.totals.lines > 0 and cycle_for(c.period_start).period_end < today
    )


def amended(ledger: Iterable[LedgerCycle]) -> list[LedgerCycle]:
    """The lodged quarters whose lines now require other amounts than were lodged (lines written after the
    lodgement), oldest first: an amended BAS is needed for each."""
    return sorted(
        (c for c in ledger if c.lodged_required is not None and required_of(c.totals.sums) != c.lodged_required),
        key=lambda c: c.period_start,
    )


def dollars(amount: Decimal) -> str:
    """`amount` as people read it in a sentence: `$1,234.50` (two places, thousands separated)."""
    return f"${amount:,.2f}"
