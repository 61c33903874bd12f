"""Designated accounts' rules, without I/O: which accounts an org has, what a source and a reference look like,
and whether a deposit may be made.

    account_id(org, "PAYGW")      uuid5(org, "designated:PAYGW"): every org has both accounts from the start, so
                                  a GET names them without writing; the first write that needs the row inserts it
    tax_of(org, account)          which of the org's accounts `account` is; None for any other id (another org's: 404)
    claimed_amount(body)          the amount a withdrawal's JSON body names, if it names one (for the alert only)
    refusal(attempt, listed)      None when the deposit may be made, else the Refusal that answers it with 422
                                  `designated_withdrawal_refused` and a HIGH DESIGNATED_WITHDRAWAL_ATTEMPT alert

The accounts are one-way: money only comes in, as a positive amount from a source on the account's whitelist.
Anything else that reaches a designated account's write routes counts as an attempt to move money out: a debit
(negative amount), a zero amount, a source that is not listed (an unlisted "source" is how money would be routed
elsewhere), a deposit marked `direction: "out"`, and any call of the withdrawals route, which exists only to refuse.
A body that is not a deposit at all (an amount that is not money, a malformed source) is a 400 like any invalid body.

Sources and references are identifiers of the org's own bank accounts and payments (`CBA 062-000 12345678`,
`PAYRUN-2025-07-14`), not personal information; their narrow alphabet keeps prose (and so names and notes) out of
them, which is what lets them appear in audit details and alerts.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Literal, get_args

from pydantic import StringConstraints

from shared.money import MoneyError, parse_money

__all__ = [
    "MAX_SOURCES",
    "NEWEST_TRANSFERS",
    "REFERENCE_MAX_CHARS",
    "REFERENCE_PATTERN",
    "SOURCE_MAX_CHARS",
    "SOURCE_PATTERN",
    "TAXES",
    "Attempt",
    "Direction",
    "Reference",
    "Refusal",
    "Source",
    "Tax",
    "account_id",
    "account_ids",
    "claimed_amount",
    "refusal",
    "refusal_message",
    "tax_of",
]

Tax = Literal["PAYGW", "GST"]
TAXES: tuple[Tax, ...] = get_args(Tax)
Direction = Literal["in", "out"]

# A bank's account name and BSB/number, or a clearing account's label, fits in 64; a payment reference (EFT
# lodgement references are 18, BPAY CRNs 20) in 64 as well. Letters, digits, space and `._-` (and `/:#` in a
# reference): an identifier's alphabet, not a sentence's. First and last characters are not spaces, so one source
# has one spelling on the whitelist.
SOURCE_MAX_CHARS = 64
REFERENCE_MAX_CHARS = 64
SOURCE_PATTERN = rf"^[A-Za-z0-9._-](?:[A-Za-z0-9 ._-]{{0,{SOURCE_MAX_CHARS - 2}}}[A-Za-z0-9._-])?$"
REFERENCE_PATTERN = rf"^[A-Za-z0-9._/:#-](?:[A-Za-z0-9 ._/:#-]{{0,{REFERENCE_MAX_CHARS - 2}}}[A-Za-z0-9._/:#-])?$"
Source = Annotated[str, StringConstraints(strict=True, pattern=SOURCE_PATTERN)]
Reference = Annotated[str, StringConstraints(strict=True, pattern=REFERENCE_PATTERN)]
# A whitelist names the few accounts an org pays tax money from; past this it is not a whitelist.
MAX_SOURCES = 20
# How many of each account's transfers GET /org/designated-accounts shows (issue #12: the 5 newest).
NEWEST_TRANSFERS = 5
ZERO = Decimal("0.00")


def account_id(org_id: uuid.UUID, tax: Tax) -> uuid.UUID:
    """The id of the org's designated account for `tax`, the same in every process and before any row exists."""
    return uuid.uuid5(org_id, f"designated:{tax}")


def account_ids(org_id: uuid.UUID) -> dict[Tax, uuid.UUID]:
    return {tax: account_id(org_id, tax) for tax in TAXES}


def tax_of(org_id: uuid.UUID, account: uuid.UUID) -> Tax | None:
    """Which of the org's accounts `account` is; None for any other id, another org's included."""
    for tax, candidate in account_ids(org_id).items():
        if candidate == account:
            return tax
    return None


class Refusal(StrEnum):
    """Why money may not move (the order is the order `refusal` checks in)."""

    WITHDRAWAL = "withdrawal"  # the withdrawals route, or a deposit marked `direction: "out"`
    DEBIT = "debit"
    ZERO = "zero"
    UNLISTED_SOURCE = "unlisted_source"


@dataclass(frozen=True)
class Attempt:
    """A request to move money on a designated account, as its rules see it."""

    amount: Decimal
    source: str
    direction: Direction = "in"


def refusal(attempt: Attempt, listed: Collection[str]) -> Refusal | None:
    """None when `attempt` is a deposit the account may take (positive, inward, from one of `listed`), else why not."""
    if attempt.direction != "in":
        return Refusal.WITHDRAWAL
    if attempt.amount < ZERO:
        return Refusal.DEBIT
    if attempt.amount == ZERO:
        return Refusal.ZERO
    if attempt.source not in listed:
        return Refusal.UNLISTED_SOURCE
    return None


_MESSAGES = {
    Refusal.WITHDRAWAL: "Money cannot be withdrawn from the {tax} designated account",
    Refusal.DEBIT: "A debit cannot be posted to the {tax} designated account: deposits only",
    Refusal.ZERO: "A deposit to the {tax} designated account must be more than 0.00",
    Refusal.UNLISTED_SOURCE: "The source is not on the {tax} designated account's whitelist",
}


def refusal_message(reason: Refusal, tax: Tax) -> str:
    """The sentence the 422 and the alert carry (no amounts or sources: those are in the alert's detail)."""
    return _MESSAGES[reason].format(tax=tax)


def claimed_amount(body: object) -> Decimal | None:
    """The money amount a withdrawal request's parsed JSON body asks for under `amount`, when it is one; the route
    refuses every body alike, so this is only what the alert reports."""
    amount = body.get("amount") if isinstance(body, dict) else None
    if not isinstance(amount, str):
        return None
    try:
        return parse_money(amount)
    except MoneyError:
        return None
