"""Money: a `Decimal` with exactly two places, written as a plain decimal string (SPEC section 4: `"1234.50"`).

One amount has one spelling, so `format_money(parse_money(text)) == text` for every text `parse_money` accepts,
and canonical JSON (and the audit hashes over it) never sees two spellings of one amount. The only text accepted
is `-?(0|[1-9][0-9]{0,11})\\.[0-9]{2}` in ASCII: no float or int (binary fractions and silent scale are how cents go
missing), no exponent, `NaN` or `Infinity`, no `+`, no spaces, no leading zeros, no `-0.00`.

`Money` is the same contract as a pydantic type for request and response models: validated from strings only,
dumped as the string.

`format_total` writes a sum of amounts (an import's totals, a summary's): the same spelling, but with as many
integer digits as the sum takes, since 10,000 lines each within the bound can add up to more than twelve digits.
It is an output format only; `parse_money` still refuses such text as an amount.
"""

from __future__ import annotations

import re
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, ROUND_HALF_EVEN, Context, Decimal
from typing import Annotated, Any

from pydantic import PlainSerializer, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

__all__ = [
    "MAX_INTEGER_DIGITS",
    "MONEY_PATTERN",
    "PLACES",
    "Money",
    "MoneyError",
    "format_money",
    "format_total",
    "is_money",
    "parse_money",
]

PLACES = 2
# Issue #10's limit: 999,999,999,999.99 is above any PAYGW or GST amount one organisation reports, and its 14
# significant digits stay exact in a double, for a reporting tool that reads amounts as numbers.
MAX_INTEGER_DIGITS = 12
MONEY_PATTERN = rf"-?(?:0|[1-9][0-9]{{0,{MAX_INTEGER_DIGITS - 1}}})\.[0-9]{{{PLACES}}}"
NEGATIVE_ZERO_TEXT = "-0." + "0" * PLACES

_MONEY_RE = re.compile(MONEY_PATTERN, re.ASCII)
_EXPONENT = -PLACES
_LIMIT = Decimal(10) ** MAX_INTEGER_DIGITS
_CENT = Decimal(1).scaleb(_EXPONENT)
# quantize() fails past the context's precision (28 digits by default); a total's precision is its own length.
_TOTAL_CONTEXT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN, rounding=ROUND_HALF_EVEN)


class MoneyError(ValueError):
    """A text or `Decimal` that is not a money amount; the message says which rule it broke."""


def parse_money(text: str) -> Decimal:
    """The amount `text` spells (`"1234.50"`, `"-3.00"`); `MoneyError` for any other spelling, `TypeError` for a
    value that is not a `str`."""
    if not isinstance(text, str):
        raise TypeError(f'money must be a string like "1234.50", not {type(text).__name__}')
    if _MONEY_RE.fullmatch(text) is None:
        raise MoneyError(_why_not(text))
    if text == NEGATIVE_ZERO_TEXT:
        raise MoneyError("write zero as 0.00, without a sign")
    return Decimal(text)


def format_money(amount: Decimal) -> str:
    """The one spelling of `amount`, the inverse of `parse_money`; `MoneyError` unless it has exactly two places and
    at most `MAX_INTEGER_DIGITS` integer digits. A negative zero (`Decimal("0.00") * -1`) is written `0.00`."""
    if not is_money(amount):
        raise MoneyError(
            f"{amount!r} is not a money amount: it needs exactly {PLACES} places and at most "
            f"{MAX_INTEGER_DIGITS} integer digits"
        )
    if amount.is_zero():
        amount = abs(amount)
    return f"{amount:f}"


def format_total(total: Decimal) -> str:
    """A sum of amounts as money text: exactly two places (rounded half-even when it has more), no exponent, never
    `-0.00`, as many integer digits as it takes. Equal to `format_money(total)` for every amount that accepts;
    `MoneyError` for NaN or an infinity."""
    if not isinstance(total, Decimal) or not total.is_finite():
        raise MoneyError(f"{total!r} is not a finite sum of money")
    cents = total.quantize(_CENT, context=_TOTAL_CONTEXT)
    if cents.is_zero():
        cents = abs(cents)
    return f"{cents:f}"


def is_money(value: object) -> bool:
    """Whether `value` is a `Decimal` that `format_money` accepts."""
    return (
        isinstance(value, Decimal)
        and value.is_finite()
        and value.as_tuple().exponent == _EXPONENT
        and abs(value) < _LIMIT
    )


def _why_not(text: str) -> str:
    if text != text.strip():
        return "money may not contain spaces"
    if text.startswith("+"):
        return "money may not start with '+'"
    if any(c in text for c in "eE"):
        return "money may not use an exponent"
    if text.lower().lstrip("-") in {"nan", "snan", "inf", "infinity"}:
        return "money must be a finite amount"
    unsigned = text.removeprefix("-")
    integer, dot, fraction = unsigned.partition(".")
    if dot and _is_ascii_digits(integer) and (fraction == "" or _is_ascii_digits(fraction)):
        if len(fraction) != PLACES:
            return f"money must have exactly {PLACES} decimal places"
        if len(integer) > MAX_INTEGER_DIGITS:
            return f"money may have at most {MAX_INTEGER_DIGITS} integer digits"
        return "money may not have leading zeros"
    if not dot and _is_ascii_digits(unsigned):
        return f"money must have exactly {PLACES} decimal places"
    return 'money must be a decimal string like "1234.50"'


def _is_ascii_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _validate(value: Any) -> Decimal:
    if not isinstance(value, str):
        raise PydanticCustomError("money_type", 'Money must be a string like "1234.50"')
    try:
        return parse_money(value)
    except MoneyError as exc:
        raise PydanticCustomError("money", str(exc)) from None


Money = Annotated[
    Decimal,
    PlainValidator(_validate),
    PlainSerializer(format_money, return_type=str),
    WithJsonSchema({"type": "string", "pattern": f"^{MONEY_PATTERN}$", "examples": ["1234.50", "-3.00"]}),
]
