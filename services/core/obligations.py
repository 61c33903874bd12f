"""What an org owes for a BAS cycle and whether it has set it aside (pure).

    evaluate(sums, secured)        Obligations: per tax required / secured / shortfall, the status, the blockers
    shortfall(required, secured)   max(0, required - secured)

Required amounts are the sums of the cycle's bank lines' components (lines dated within the period):
- PAYGW: the sum of `paygw_amount`, never negative (a line's PAYG withheld is a sum owed to the ATO).
- GST: the NET sum of `gst_amount`, floored at zero. A line's GST component has the line's sign: on a sale (money
  in) it is GST collected, owed to the ATO; on a purchase (money out) it is a credit. The net is what the BAS asks
  for; when credits exceed collections the ATO owes a refund, and nothing needs to be set aside, so it is 0.00 (the
  refund is not modelled).
Secured amounts are the designated accounts' balances (all their transfers: money only comes in).

A cycle is READY when no tax is short and BLOCKED otherwise; each shortfall is a blocker in words with its amount
("PAYGW short by $1,234.50"). The total shortfall is what the SUSPICIOUS_TAX_GAP alert threshold is compared with.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

__all__ = [
    "TAXES",
    "Obligations",
    "Status",
    "TaxAmounts",
    "TaxObligation",
    "dollars",
    "evaluate",
    "shortfall",
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


def dollars(amount: Decimal) -> str:
    """`amount` as people read it in a sentence: `$1,234.50` (two places, thousands separated)."""
    return f"${amount:,.2f}"
