"""Realistic bank lines for `apgms seed --bank-lines N`: the pure generator (no I/O; `apgms.seed` writes them).

A small business's feed over the last two years: mostly card purchases of tens of dollars, bills and supplier
invoices of hundreds to thousands, fortnightly wages, and credits from customers and card settlements; amounts
drawn per kind from a log-normal (median and spread per kind, clipped), so a few lines are large. Signs: a debit is
negative, a credit positive. Components:

    gst_amount     1/11 of the amount, with its sign, on lines of a GST-bearing kind (GST-inclusive prices: the
                   GST in $110.00 is $10.00), else 0.00; a sum over a period is GST collected less GST paid
    paygw_amount   on wage lines only: the PAYG withheld from the gross pay (annualised 2024-25 resident rates plus
                   the 2% Medicare levy, an approximation of the ATO's schedule), >= 0.00; the line's amount is the
                   net pay, -(gross - withheld)

Payees come from fixed lists of real-looking Australian businesses and from a `Catalogue` drawn per org: generated
"X Pty Ltd" suppliers and customers, a landlord and a roster of employees (wage lines name the employee: payee
and description are PII, which is why the seed encrypts them). Dates lie in the two years up to `today`;
invoices and receipts fall on weekdays, wages on fortnightly Thursday paydays.

Deterministic: `LineGenerator(seed, org_id, start, today)` draws everything, ids included, from one
`random.Random` seeded with those four, a row at a time, so the lines do not depend on how they are batched.
`start` is how many lines the org already has, so an `--add` run draws a new stream rather than repeating ids.
Amounts are whole cents drawn as floats (a random draw, not arithmetic on money) and become 2-place `Decimal`s
exactly; the GST and PAYGW arithmetic is on integer cents.
"""

from __future__ import annotations

import itertools
import math
import random
import uuid
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

__all__ = [
    "FIXED_PAYEES",
    "MAX_LINE_CENTS",
    "WINDOW_YEARS",
    "Catalogue",
    "LineBatch",
    "LineGenerator",
    "gst_cents",
    "paygw_cents",
    "window_start",
]

WINDOW_YEARS = 2
THURSDAY, SATURDAY = 3, 5  # date.weekday()
PAY_PERIOD_DAYS = 14
PAY_PERIODS_PER_YEAR = 26
GST_DIVISOR = 11  # GST is 10% of the price before GST: 1/11 of a GST-inclusive amount
MIN_LINE_CENTS = 50
# The largest amount any kind draws ($2M, an ATO payment at the far tail): far inside numeric(14,2).
MAX_LINE_CENTS = 200_000_000
ZERO = Decimal("0.00")
CENTS_EXPONENT = -2

# Resident tax rates 2024-25 on annual income in cents: (threshold, rate in percent above it).
TAX_BRACKETS = ((18_200_00, 16), (45_000_00, 30), (135_000_00, 37), (190_000_00, 45))
MEDICARE_LEVY_PERCENT = 2
MEDICARE_LEVY_FROM_CENTS = 26_000_00

RETAIL = (
    "Woolworths", "Coles", "Aldi Stores", "IGA", "Bunnings Warehouse", "Officeworks", "JB Hi-Fi", "Harvey Norman",
    "Kmart", "Big W", "Ampol", "BP Australia", "Shell Reddy Express", "7-Eleven", "Caltex Woolworths",
    "Dan Murphy's", "Chemist Warehouse", "Uber Australia", "DiDi Rides", "Qantas Airways", "Virgin Australia",
    "Jetstar", "Hertz Australia", "Gloria Jean's", "Muffin Break", "Bakers Delight", "Australia Post",
    "Total Tools", "Repco", "Supercheap Auto", "The Good Guys", "Mitre 10", "Reece Plumbing", "Dick Smith",
)  # fmt: skip
UTILITIES = (
    "Telstra", "Optus", "Vodafone Australia", "TPG Telecom", "Aussie Broadband", "AGL Energy", "Origin Energy",
    "EnergyAustralia", "Red Energy", "Alinta Energy", "Xero Australia", "MYOB Australia", "Atlassian", "Canva",
    "Microsoft Australia", "Google Australia", "Adobe Systems Australia", "Dropbox", "NRMA Insurance",
    "Allianz Australia", "QBE Insurance",
)  # fmt: skip
GST_FREE_BILLS = (
    "Sydney Water", "Yarra Valley Water", "SA Water", "Urban Utilities", "City of Sydney Council",
    "Brisbane City Council", "City of Melbourne", "Medibank Private", "Bupa HI",
)  # fmt: skip
SUPER_FUNDS = ("AustralianSuper", "Hostplus", "REST Super", "UniSuper", "Australian Retirement Trust", "Cbus Super")
SETTLEMENTS = ("Square Australia", "Stripe Payments Australia", "Tyro Payments", "Zeller")
BANKS = ("Commonwealth Bank", "Westpac", "ANZ", "NAB", "Bendigo Bank")
ATO = ("Australian Taxation Office",)
FIXED_PAYEES = frozenset(RETAIL + UTILITIES + GST_FREE_BILLS + SUPER_FUNDS + SETTLEMENTS + BANKS + ATO)

NAME_WORDS = (
    "Harbour", "Southern Cross", "Wattle", "Banksia", "Koala", "Outback", "Coastal", "Eucalypt", "Red Gum",
    "Blue Mountains", "Coral", "Kookaburra", "Bondi", "Parramatta", "Fremantle", "Hobart", "Darwin", "Cairns",
    "Murray", "Barossa", "Hunter", "Illawarra", "Sunshine", "Golden Wattle", "Jacaranda", "Brolga", "Waratah",
)  # fmt: skip
NAME_TRADES = (
    "Plumbing", "Electrical", "Logistics", "Consulting", "Catering", "Joinery", "Landscaping", "Printing",
    "Cleaning Services", "Accounting", "Freight", "Building", "Engineering", "Design", "Hospitality", "Traders",
    "Imports", "Wholesale", "IT Solutions", "Marketing", "Security", "Hire", "Transport", "Fabrication",
)  # fmt: skip
NAME_SUFFIXES = ("Pty Ltd", "Pty Ltd", "Pty Ltd", "Pty. Ltd.", "Group Pty Ltd", "Trust")
FIRST_NAMES = (
    "Olivia", "Jack", "Charlotte", "Noah", "Amelia", "William", "Isla", "Oliver", "Mia", "Thomas", "Ava", "James",
    "Grace", "Lachlan", "Chloe", "Liam", "Zoe", "Ethan", "Ruby", "Cooper", "Priya", "Wei", "Minh", "Aisha",
    "Mohammed", "Sofia", "Luca", "Hannah", "Kai", "Matilda",
)  # fmt: skip
SURNAMES = (
    "Smith", "Jones", "Williams", "Brown", "Wilson", "Taylor", "Nguyen", "Johnson", "Martin", "White", "Anderson",
    "Walker", "Thompson", "Harris", "Lee", "Ryan", "Robinson", "Kelly", "King", "Chen", "Singh", "Patel", "Murphy",
    "O'Brien", "Papadopoulos", "Rossi", "Tran", "Campbell", "Clarke", "Mitchell",
)  # fmt: skip
SUPPLIERS_PER_ORG = 120
CUSTOMERS_PER_ORG = 240
EMPLOYEES_PER_ORG = 18
MONTHS = ("", "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
REF_LOW, REF_HIGH = 100_000, 9_999_999


@dataclass(frozen=True)
class Catalogue:
    """One org's generated counterparties (fixed per seed and org)."""

    suppliers: tuple[str, ...]
    customers: tuple[str, ...]
    landlord: str
    employees: tuple[str, ...]
    bank: str

    @classmethod
    def draw(cls, rng: random.Random) -> Catalogue:
        def businesses(count: int) -> tuple[str, ...]:
            names = {
                f"{rng.choice(NAME_WORDS)} {rng.choice(NAME_TRADES)} {rng.choice(NAME_SUFFIXES)}" for _ in range(count)
            }
            return tuple(sorted(names))

        people = {f"{rng.choice(FIRST_NAMES)} {rng.choice(SURNAMES)}" for _ in range(EMPLOYEES_PER_ORG)}
        return cls(
            suppliers=businesses(SUPPLIERS_PER_ORG),
            customers=businesses(CUSTOMERS_PER_ORG),
            landlord=f"{rng.choice(NAME_WORDS)} Property Holdings Pty Ltd",
            employees=tuple(sorted(people)),
            bank=rng.choice(BANKS),
        )

    def payees(self) -> frozenset[str]:
        """Every payee a line of this org can name."""
        return FIXED_PAYEES | {*self.suppliers, *self.customers, self.landlord, *self.employees}


PayeesOf = Callable[[Catalogue], tuple[str, ...]]


@dataclass(frozen=True)
class Kind:
    """One kind of line: how often it occurs, whom it pays, how much, and which components it carries."""

    name: str
    weight: int
    credit: bool
    median_cents: int
    sigma: float
    max_cents: int
    payees: PayeesOf
    descriptions: tuple[str, ...]  # str.format templates over ref, month, year
    gst: bool = False
    wages: bool = False
    weekdays: bool = False


def _fixed(names: tuple[str, ...]) -> PayeesOf:
    return lambda _: names


KINDS = (
    Kind("card", 50, False, 38_00, 0.9, 4_000_00, _fixed(RETAIL),
         ("EFTPOS purchase {ref}", "Visa debit purchase {ref}", "Tap and pay {ref}"), gst=True),
    Kind("bill", 10, False, 120_00, 0.6, 5_000_00, _fixed(UTILITIES),
         ("Direct debit {ref}", "Monthly plan {month} {year}", "BPAY {ref}"), gst=True),
    Kind("gst_free_bill", 2, False, 300_00, 0.5, 8_000_00, _fixed(GST_FREE_BILLS),
         ("BPAY {ref}", "Account {ref} quarterly")),
    Kind("supplier", 12, False, 1_100_00, 1.0, 250_000_00, lambda c: c.suppliers,
         ("Payment INV-{ref}", "BPAY invoice {ref}", "EFT to supplier {ref}"), gst=True, weekdays=True),
    Kind("rent", 1, False, 4_500_00, 0.3, 60_000_00, lambda c: (c.landlord,),
         ("Rent {month} {year}",), gst=True, weekdays=True),
    Kind("wages", 8, False, 2_600_00, 0.35, 20_000_00, lambda c: c.employees,
         ("Wages pay {ref}", "Salary fortnight pay {ref}"), wages=True),
    Kind("super", 1, False, 2_500_00, 0.5, 40_000_00, _fixed(SUPER_FUNDS),
         ("SuperStream contribution {ref}",), weekdays=True),
    Kind("ato", 1, False, 9_000_00, 0.8, MAX_LINE_CENTS, _fixed(ATO),
         ("BPAY ATO BAS payment PRN {ref}", "ATO PAYGW payment {ref}"), weekdays=True),
    Kind("bank_fee", 2, False, 10_00, 0.5, 500_00, lambda c: (c.bank,),
         ("Monthly account fee", "Merchant service fee {month}")),
    Kind("receipt", 11, True, 2_200_00, 1.1, 900_000_00, lambda c: c.customers,
         ("Payment received INV-{ref}", "Osko payment {ref}", "Direct credit {ref}"), gst=True, weekdays=True),
    Kind("settlement", 4, True, 1_800_00, 0.8, 100_000_00, _fixed(SETTLEMENTS),
         ("Card settlement {ref}", "Payout {ref}"), gst=True),
    Kind("interest", 1, True, 15_00, 1.0, 50_000_00, lambda c: (c.bank,),
         ("Interest earned {month} {year}",)),
    Kind("refund", 1, True, 40_00, 0.9, 2_000_00, _fixed(RETAIL),
         ("Refund {ref}", "Return credit {ref}"), gst=True),
)  # fmt: skip


@dataclass(frozen=True)
class LineBatch:
    """Lines in columns (the shape sealing and COPY want): row i is (ids[i], dates[i], ...)."""

    ids: tuple[uuid.UUID, ...]
    dates: tuple[date, ...]
    amounts: tuple[Decimal, ...]
    gst_amounts: tuple[Decimal, ...]
    paygw_amounts: tuple[Decimal, ...]
    payees: tuple[str, ...]
    descriptions: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.ids)


def window_start(today: date) -> date:
    """The first date of the window: the same day WINDOW_YEARS years before `today` (Feb 29 → Feb 28)."""
    try:
        return today.replace(year=today.year - WINDOW_YEARS)
    except ValueError:
        return today.replace(year=today.year - WINDOW_YEARS, day=28)


def gst_cents(cents: int) -> int:
    """The GST in a GST-inclusive amount of `cents` >= 0, to the nearest cent (cents/11 never ends in exactly .5)."""
    return (2 * cents + GST_DIVISOR) // (2 * GST_DIVISOR)


def paygw_cents(gross_cents: int) -> int:
    """PAYG withheld from one fortnight's gross pay: the annual tax on 26 such pays, plus Medicare, over 26."""
    annual = gross_cents * PAY_PERIODS_PER_YEAR
    tax_times_100 = 0
    for index, (threshold, rate) in enumerate(TAX_BRACKETS):
        upper = TAX_BRACKETS[index + 1][0] if index + 1 < len(TAX_BRACKETS) else annual
        if annual > threshold:
            tax_times_100 += (min(annual, upper) - threshold) * rate
    if annual > MEDICARE_LEVY_FROM_CENTS:
        tax_times_100 += annual * MEDICARE_LEVY_PERCENT
    return (tax_times_100 + 50 * PAY_PERIODS_PER_YEAR) // (100 * PAY_PERIODS_PER_YEAR)


def _cents(value: int) -> Decimal:
    return Decimal(value).scaleb(CENTS_EXPONENT)


@dataclass(frozen=True)
class _Draw:
    """A kind resolved for one org: its payees, dates and log-normal parameters."""

    kind: Kind
    payees: tuple[str, ...]
    dates: tuple[date, ...]
    mu: float


class LineGenerator:
    """The lines of one org for one seed: `batch(n)` returns the next n (module docstring: what is drawn, how)."""

    def __init__(self, seed: int, org_id: uuid.UUID, start: int, today: date) -> None:
        self._rng = random.Random(f"apgms-bank-lines:{seed}:{org_id}:{start}")
        self.catalogue = Catalogue.draw(self._rng)
        first = window_start(today)
        every_day = tuple(first + timedelta(days=n) for n in range((today - first).days + 1))
        weekdays = tuple(day for day in every_day if day.weekday() < SATURDAY)
        last_payday = today - timedelta(days=(today.weekday() - THURSDAY) % 7)
        paydays = tuple(day for day in every_day if (last_payday - day).days % PAY_PERIOD_DAYS == 0)
        draws = []
        for kind in KINDS:
            dates = paydays if kind.wages else weekdays if kind.weekdays else every_day
            draws.append(_Draw(kind, kind.payees(self.catalogue), dates, math.log(kind.median_cents)))
        self._draws = tuple(draws)
        self._cumulative = tuple(itertools.accumulate(kind.weight for kind in KINDS))

    def batch(self, count: int) -> LineBatch:
        """The next `count` lines of the stream."""
        rng = self._rng
        rand, gauss, getrandbits, randrange = rng.random, rng.gauss, rng.getrandbits, rng.randrange
        draws, cumulative = self._draws, self._cumulative
        total = cumulative[-1]
        ids, dates, amounts, gsts, paygws, payees, descriptions = [], [], [], [], [], [], []
        for _ in range(count):
            draw = draws[bisect_right(cumulative, rand() * total)]
            kind = draw.kind
            day = draw.dates[int(rand() * len(draw.dates))]
            cents = min(max(int(math.exp(draw.mu + kind.sigma * gauss())), MIN_LINE_CENTS), kind.max_cents)
            template = kind.descriptions[int(rand() * len(kind.descriptions))]
            ids.append(uuid.UUID(int=getrandbits(128), version=4))
            dates.append(day)
            payees.append(draw.payees[int(rand() * len(draw.payees))])
            descriptions.append(
                template.format(ref=randrange(REF_LOW, REF_HIGH), month=MONTHS[day.month], year=day.year)
            )
            if kind.wages:
                withheld = paygw_cents(cents)
                amounts.append(_cents(withheld - cents))
                gsts.append(ZERO)
                paygws.append(_cents(withheld))
                continue
            sign = 1 if kind.credit else -1
            amounts.append(_cents(sign * cents))
            gsts.append(_cents(sign * gst_cents(cents)) if kind.gst else ZERO)
            paygws.append(ZERO)
        return LineBatch(
            tuple(ids), tuple(dates), tuple(amounts), tuple(gsts), tuple(paygws), tuple(payees), tuple(descriptions)
        )
