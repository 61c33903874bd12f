"""Request and response bodies of the bank-lines API, and the field rules a line obeys however it arrives (the
single-line POST here, the bulk import in services/core/imports.py): import them, never restate them.

    LineDate        "YYYY-MM-DD" only, a real day, 1900-01-01 .. Dec 31 of next year (UTC): shared.contracts.core,
                    since other services send such dates to core's internal routes
    Payee           1..PAYEE_MAX_CHARS characters, not all whitespace
The building blocks of those rules serve core's other bodies too (payment plans, alerts), so that a date or a text
field means the same everywhere:

    IsoDate                 a date written "YYYY-MM-DD" in a response
    non_blank(max_chars)    the constraint of a text of 1..max_chars characters, not all whitespace
    Description     0..DESCRIPTION_MAX_CHARS characters
    component_errors(amount, gst_amount, paygw_amount)    the components' rules, as field errors (pure)

Amounts are `shared.money.Money` (strings with exactly two places; no float, exponent, NaN or Infinity). The
components: `gst_amount` is the GST inside the line's amount, so it is zero or has the amount's sign and is at
most its size (a refund is a negative line with a negative GST component); `paygw_amount` is PAYG withheld, a sum
owed to the ATO, so it is never negative, and at most the size of the line it was withheld from.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from services.core.store import PageFilters, SealedLine
from shared.canonical import canonical_json
from shared.contracts.core import LineDate
from shared.money import Money, format_money
from shared.pagination import PageQuery
from shared.views import view_of

__all__ = [
    "DESCRIPTION_MAX_CHARS",
    "PAYEE_MAX_CHARS",
    "BankLine",
    "BankLinePage",
    "BankLineQuery",
    "Description",
    "IsoDate",
    "NewBankLine",
    "Payee",
    "component_errors",
    "non_blank",
]

# A payee is a name as a bank feed shows it (rarely past 100 characters); a description a memo line. Past these a
# value is not a bank line's, and a 10 KB payee is refused before anything is encrypted or stored.
PAYEE_MAX_CHARS = 200
DESCRIPTION_MAX_CHARS = 500
ZERO = Decimal("0.00")


IsoDate = Annotated[date, PlainSerializer(date.isoformat, return_type=str)]


def non_blank(max_chars: int) -> StringConstraints:
    """A string of 1..`max_chars` characters with at least one that is not whitespace."""
    # `pattern` is a search: it finds one character that is not whitespace anywhere in the value.
    return StringConstraints(strict=True, min_length=1, max_length=max_chars, pattern=r"\S")


Payee = Annotated[str, non_blank(PAYEE_MAX_CHARS)]
Description = Annotated[str, StringConstraints(strict=True, max_length=DESCRIPTION_MAX_CHARS)]


def component_errors(amount: Decimal, gst_amount: Decimal, paygw_amount: Decimal) -> list[tuple[str, str]]:
    """(field, message) for each component that breaks its rule (module docstring); empty when both hold."""
    errors = []
    if gst_amount != ZERO and (gst_amount < ZERO) != (amount < ZERO):
        errors.append(("gst_amount", "the GST component must be zero or have the sign of the amount"))
    elif abs(gst_amount) > abs(amount):
        errors.append(("gst_amount", "the GST component cannot be larger than the amount"))
    if paygw_amount < ZERO:
        errors.append(("paygw_amount", "PAYG withheld cannot be negative"))
    elif paygw_amount > abs(amount):
        errors.append(("paygw_amount", "PAYG withheld cannot be larger than the amount"))
    return errors


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NewBankLine(Strict):
    """`POST /bank-lines`."""

    date: LineDate
    amount: Money
    payee: Payee
    description: Description
    gst_amount: Money = ZERO
    paygw_amount: Money = ZERO

    @field_validator("gst_amount", "paygw_amount")
    @classmethod
    def _component(cls, value: Decimal, info: ValidationInfo) -> Decimal:
        amount = info.data.get("amount")
        if amount is None:  # the amount itself was refused: that error is the one to read
            return value
        gst, paygw = (value, ZERO) if info.field_name == "gst_amount" else (ZERO, value)
        for field, message in component_errors(amount, gst, paygw):
            if field == info.field_name:
                raise PydanticCustomError("component", message)
        return value


class BankLineQuery(PageQuery):
    """`GET /bank-lines?from=&to=&min_amount=&max_amount=&cursor=&limit=`; unknown parameters are refused."""

    model_config = ConfigDict(extra="forbid", populate_by_name=False)

    start: LineDate | None = Field(default=None, alias="from")
    end: LineDate | None = Field(default=None, alias="to")
    min_amount: Money | None = None
    max_amount: Money | None = None

    @field_validator("end")
    @classmethod
    def _dates_in_order(cls, value: date | None, info: ValidationInfo) -> date | None:
        start = info.data.get("start")
        if value is not None and start is not None and value < start:
            raise PydanticCustomError("range", "to must not be before from")
        return value

    @field_validator("max_amount")
    @classmethod
    def _amounts_in_order(cls, value: Decimal | None, info: ValidationInfo) -> Decimal | None:
        low = info.data.get("min_amount")
        if value is not None and low is not None and value < low:
            raise PydanticCustomError("range", "max_amount must not be below min_amount")
        return value

    def filters(self) -> PageFilters:
        return PageFilters(self.start, self.end, self.min_amount, self.max_amount)


@dataclass(frozen=True)
class FilterText:
    """The filters of a page as the client gave them: canonical bytes (what a cursor is bound to) and the audit
    detail (bounds only, never PII)."""

    detail: dict[str, str]

    @classmethod
    def of(cls, filters: PageFilters) -> FilterText:
        named = {
            "from": filters.start.isoformat() if filters.start else None,
            "to": filters.end.isoformat() if filters.end else None,
            "min_amount": format_money(filters.min_amount) if filters.min_amount is not None else None,
            "max_amount": format_money(filters.max_amount) if filters.max_amount is not None else None,
        }
        return cls({name: value for name, value in named.items() if value is not None})

    @property
    def canonical(self) -> bytes:
        return canonical_json(self.detail)


class BankLine(BaseModel):
    """One line as the API shows it. `payee` and `description` are null only when the org's data key was destroyed
    (the page says `pii_destroyed`)."""

    id: uuid.UUID
    date: IsoDate
    amount: Money
    gst_amount: Money
    paygw_amount: Money
    payee: str | None
    description: str | None
    created_at: datetime
    created_by: str

    @classmethod
    def of(cls, line: SealedLine, payee: str | None, description: str | None) -> BankLine:
        return view_of(cls, line, payee=payee, description=description)


class BankLinePage(BaseModel):
    items: list[BankLine]
    next_cursor: str | None
    pii_destroyed: bool = Field(
        default=False, description="The org's PII data key was destroyed: payee and description are null"
    )
