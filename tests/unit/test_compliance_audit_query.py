"""GET /audit's query (services/compliance/audit_trail.AuditQuery): `from` and `to` are instants with an offset that
lie, in UTC, where an audit record can (shared.audit.EARLIEST_AT..LATEST_AT); one at either end of the calendar whose
offset would overflow it is 400 `invalid_query` naming the field, never a 500."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.compliance.audit_trail import AuditQuery
from shared.errors import ApiError
from shared.validation import parse_query


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("from", "0001-01-01T00:00:00+14:00"),
        ("to", "9999-12-31T23:59:59-14:00"),
        ("from", "0001-01-01T00:00:00Z"),
        ("to", "9999-12-31T00:00:01Z"),
        ("from", "1969-12-31T23:59:59Z"),
        ("to", "1970-01-01T10:00:00+11:00"),  # 1969-12-31T23:00Z
    ],
)
def test_an_instant_outside_the_chains_range_is_invalid_query_naming_the_field(field: str, value: str) -> None:
    with pytest.raises(ApiError) as raised:
        parse_query({field: value}, AuditQuery)
    assert raised.value.code == "invalid_query"
    assert [error.path for error in raised.value.errors] == [field]


def test_instants_in_range_are_read_in_utc() -> None:
    query = parse_query({"from": "1970-01-01T11:00:00+11:00", "to": "9999-12-31T00:00:00Z"}, AuditQuery)
    assert query.since == datetime(1970, 1, 1, tzinfo=UTC)
    assert query.until == datetime(9999, 12, 31, tzinfo=UTC)
    assert query.filters().since == datetime(1970, 1, 1, tzinfo=UTC)
