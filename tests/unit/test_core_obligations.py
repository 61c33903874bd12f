"""Obligations: required from the lines' sums (GST net, floored at zero), shortfall = max(0, required - secured),
READY/BLOCKED, blockers in words with amounts; and the lodgement payload."""

from __future__ import annotations

import uuid
from datetime import date
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from services.core.lodgement import LodgementRequest, RecordingGateway
from services.core.obligations import TaxAmounts, dollars, evaluate, shortfall

ZERO = Decimal("0.00")
CENTS = st.integers(min_value=-(10**14), max_value=10**14).map(lambda c: Decimal(c).scaleb(-2))
NON_NEGATIVE = st.integers(min_value=0, max_value=10**14).map(lambda c: Decimal(c).scaleb(-2))


@given(NON_NEGATIVE, CENTS, NON_NEGATIVE, NON_NEGATIVE)
def test_shortfall_is_max_of_zero_and_required_minus_secured(
    paygw: Decimal, gst: Decimal, s1: Decimal, s2: Decimal
) -> None:
    result = evaluate(TaxAmounts(paygw=paygw, gst=gst), TaxAmounts(paygw=s1, gst=s2))
    assert result.paygw.required == paygw
    assert result.gst.required == max(ZERO, gst)
    for tax in result.taxes:
        assert tax.shortfall == max(ZERO, tax.required - tax.secured) == shortfall(tax.required, tax.secured)
        assert tax.status == ("BLOCKED" if tax.shortfall > 0 else "READY")
    assert result.total_shortfall == result.paygw.shortfall + result.gst.shortfall
    assert result.status == ("READY" if result.total_shortfall == 0 else "BLOCKED")
    assert len(result.blockers) == sum(1 for t in result.taxes if t.shortfall > 0)


def test_gst_is_net_of_credits_and_floored_at_zero() -> None:
    # Sales collected 150.00 of GST, purchases gave 40.00 of credits: 110.00 owed.
    assert evaluate(TaxAmounts(paygw=ZERO, gst=Decimal("110.00")), TaxAmounts(ZERO, ZERO)).gst.required == Decimal(
        "110.00"
    )
    # More credits than collections: a refund, nothing to set aside.
    refund = evaluate(TaxAmounts(paygw=ZERO, gst=Decimal("-40.00")), TaxAmounts(ZERO, ZERO))
    assert refund.gst.required == ZERO and refund.gst.shortfall == ZERO and refund.status == "READY"


def test_blockers_name_the_tax_and_amount() -> None:
    result = evaluate(
        TaxAmounts(paygw=Decimal("2234.50"), gst=Decimal("100.00")),
        TaxAmounts(paygw=Decimal("1000.00"), gst=Decimal("100.00")),
    )
    assert result.status == "BLOCKED"
    assert result.blockers == ("PAYGW short by $1,234.50",)
    both = evaluate(TaxAmounts(paygw=Decimal("1.00"), gst=Decimal("1234567.89")), TaxAmounts(ZERO, ZERO))
    assert both.blockers == ("PAYGW short by $1.00", "GST short by $1,234,567.89")
    nothing = evaluate(TaxAmounts(ZERO, ZERO), TaxAmounts(ZERO, ZERO))
    assert nothing.status == "READY" and nothing.blockers == ()


def test_dollars() -> None:
    assert dollars(Decimal("0.00")) == "$0.00"
    assert dollars(Decimal("999.99")) == "$999.99"
    assert dollars(Decimal("1000000000000.00")) == "$1,000,000,000,000.00"


async def test_recording_gateway_receipt_is_the_canonical_payload() -> None:
    org = uuid.UUID("0b8f3c1a-2d4e-4f60-9a7b-8c9d0e1f2a3b")
    request = LodgementRequest(
        org_id=org,
        cycle_id=uuid.uuid5(org, "bas:2025-07-01"),
        period_start=date(2025, 7, 1),
        period_end=date(2025, 9, 30),
        obligations=evaluate(
            TaxAmounts(paygw=Decimal("300.00"), gst=Decimal("10.00")),
            TaxAmounts(paygw=Decimal("300.00"), gst=Decimal("12.50")),
        ),
    )
    receipt = await RecordingGateway().lodge(request)
    again = await RecordingGateway().lodge(request)
    assert receipt == again and receipt.gateway == "recording"
    assert receipt.reference.startswith("recorded-")
    assert receipt.payload == (
        b'{"cycle_id":"' + str(request.cycle_id).encode() + b'","org_id":"' + str(org).encode() + b'",'
        b'"period_end":"2025-09-30","period_start":"2025-07-01",'
        b'"taxes":{"GST":{"required":"10.00","secured":"12.50"},"PAYGW":{"required":"300.00","secured":"300.00"}}}'
    )
