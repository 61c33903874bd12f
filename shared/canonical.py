"""Canonical JSON: RFC 8785 (JCS) bytes, the input to every hash that must not depend on who serialised the value.

The audit chain, idempotency fingerprints and evidence packs hash these bytes, so one value has one encoding:
object keys sorted by UTF-16 code units, no whitespace, strings and numbers in JCS's one form. The `rfc8785`
package writes them; this module only maps our types onto JSON first:

    None, bool, int, str     as themselves (ints outside +/-(2**53 - 1) are refused by JCS)
    Decimal                  its money string, `"1234.50"`: a Decimal that is not money is `MoneyError`
    datetime                 `"2026-11-27T21:55:37.000000Z"`: UTC, always microseconds (`utc_text`); a naive one
                             is `ValueError`
    UUID                     `"7d7a...-..."`, the lower-case hyphenated form
    Mapping (str keys)       an object;  list, tuple: an array

Anything else, floats included, is a `TypeError` naming the type: money is never a float, and a float elsewhere
would hash the binary value a client's parser happened to produce.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import TypeAlias
from uuid import UUID

import rfc8785

from shared.money import format_money

__all__ = ["canonical_json", "utc_text"]

JsonValue: TypeAlias = "bool | int | str | list[JsonValue] | dict[str, JsonValue] | None"


def canonical_json(value: object) -> bytes:
    """The RFC 8785 bytes of `value` (see the module docstring for the types it takes); `TypeError` for any other
    type, `ValueError` for a value of a taken type that has no canonical form."""
    return rfc8785.dumps(_to_json(value))


def _to_json(value: object) -> JsonValue:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, Decimal):
        return format_money(value)
    if isinstance(value, datetime):
        return utc_text(value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Mapping):
        return {_key(key): _to_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(item) for item in value]
    if isinstance(value, float):
        raise TypeError("canonical JSON refuses float: send money as a Decimal, other numbers as int or str")
    raise TypeError(f"canonical JSON cannot encode {type(value).__qualname__}")


def utc_text(moment: datetime) -> str:
    """`moment` as canonical JSON writes it, without the quotes: `2026-11-27T21:55:37.000000Z`. Fixed width
    (microseconds even when zero, "Z" not "+00:00") so a timestamp read back from PostgreSQL, which keeps
    microseconds, is spelled exactly as it was before it was stored. `ValueError` for a naive datetime."""
    if moment.utcoffset() is None:
        raise ValueError(f"canonical JSON needs an aware datetime, got the naive {moment.isoformat()}")
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _key(key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(f"canonical JSON object keys must be str, not {type(key).__qualname__}")
    return key
