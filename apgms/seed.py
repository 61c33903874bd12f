"""The demo org (`apgms seed`, and `apgms dev` on every start): "Demo Pty Ltd" with an admin (TOTP enrolled),
a finance user and an auditor. Idempotent: a second run creates nothing and shows the same logins, re-reading the
admin's TOTP secret by opening the sealed copy.

Bank lines (`apgms seed --bank-lines N [--orgs M]`): N generated lines (`apgms.bank_line_seed`) in each of M orgs,
the demo org first, then "Seed Org 1" .. "Seed Org M-1" (orgs in auth without users, their ids fixed by
`seed_org_id`). Each org's lines are written in one transaction: COPY in batches of SEED_BATCH_ROWS, payee and
description sealed with `PiiCipher` exactly as the API seals them (table "bank_lines", the line's id as row id),
then the running totals of the quarters they are dated in (`core.cycle_totals`, one upsert per quarter), then one
audit record `bank_lines.seed` by `system` with the count as the last statement. So an org has all of a run's lines,
their totals and its record, or none. Idempotent per org: an org that already has bank lines (any, the API's too)
is skipped, counted under a per-org advisory lock so two runs cannot both see none; `add` writes N more anyway.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

import asyncpg
import pyotp
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from apgms.bank_line_seed import LineGenerator
from services.auth import store
from services.auth.passwords import MIN_PASSWORD_CHARS, hash_password, verify_password
from services.core.designated import TAXES, account_id
from services.core.obligations import QuarterTotals, totals_by_quarter
from services.core.store import BANK_LINES_TABLE, SealedLine, accounts, copy_lines, count_lines, cycles
from shared import audit
from shared.config import DEV_ONLY_MARKER
from shared.crypto import SealError, SecretBox
from shared.kek import KekProvider
from shared.pii import PiiCipher

DEMO_ORG_NAME = "Demo Pty Ltd"
# The bank account the demo org's deposits come from (a made-up BSB and number).
DEMO_DEPOSIT_SOURCE = "DEMO-OPERATING 062-000 00000000"
DEMO_USERS = (
    ("admin", "admin@demo.apgms.example"),
    ("finance", "finance@demo.apgms.example"),
    ("auditor", "auditor@demo.apgms.example"),
)
DEV_DEMO_PASSWORD = "demo-password-dev-only"  # noqa: S105 (refused in production, see demo_password)
TOTP_ISSUER = "APGMS"
# Any fixed number; serialises two seeds started together (`apgms dev` and `apgms seed`).
SEED_LOCK = 0x41_50_47_53_45_45_44


class SeedError(Exception):
    """The demo data cannot be seeded as configured; the message says why."""


@dataclass(frozen=True)
class DemoLogin:
    role: str
    email: str
    created: bool


@dataclass(frozen=True)
class DemoSeed:
    org_id: uuid.UUID
    logins: tuple[DemoLogin, ...]
    password: str
    # False when the admin already existed with another password (APGMS_DEMO_PASSWORD changed since).
    password_matches: bool
    totp_secret: str | None
    totp_uri: str | None
    # `make run`'s demo regulator credential's access code (apgms.regulator_demo); None outside make run.
    regulator_code: str | None = None


def demo_password(environ: Mapping[str, str]) -> str:
    """APGMS_DEMO_PASSWORD, or the dev-only default outside production."""
    production = environ.get("APGMS_ENV") == "production"
    password = environ.get("APGMS_DEMO_PASSWORD") or ""
    if not password:
        if production:
            raise SeedError("APGMS_DEMO_PASSWORD is required when APGMS_ENV=production")
        return DEV_DEMO_PASSWORD
    if production and DEV_ONLY_MARKER in password:
        raise SeedError("APGMS_DEMO_PASSWORD is a dev-only password, refused when APGMS_ENV=production")
    if len(password) < MIN_PASSWORD_CHARS:
        raise SeedError(f"APGMS_DEMO_PASSWORD must be at least {MIN_PASSWORD_CHARS} characters")
    return password


async def _admin_totp(conn: asyncpg.Connection, box: SecretBox, admin: store.User) -> str | None:
    """The admin's confirmed TOTP secret, enrolling one when there is none; None when the stored one cannot be
    opened (sealed under another master key)."""
    credential = await store.totp_credential(conn, admin.id)
    if credential is not None and credential.confirmed:
        try:
            return box.open(credential.secret_sealed, associated=admin.id.bytes).decode()
        except SealError:
            return None
    secret = pyotp.random_base32()
    sealed = box.seal(secret.encode(), associated=admin.id.bytes)
    await store.begin_totp(conn, admin.id, sealed)
    # Step 0 confirms without using up a real step: the admin's first code is accepted.
    if not await store.confirm_totp(conn, admin.id, sealed, 0):
        raise SeedError(f"could not confirm the TOTP enrolment of {admin.email}")
    return secret


async def _demo_admin(conn: asyncpg.Connection) -> store.User | None:
    """The oldest demo admin in an org of the demo org's name: an address is unique per org only, so another org
    may have a user with the same address."""
    admins = await store.users_by_email(conn, DEMO_USERS[0][1])
    names = await store.org_names(conn, [admin.org_id for admin in admins])
    return next((admin for admin in admins if names[admin.org_id] == DEMO_ORG_NAME), None)


async def seed_demo(conn: asyncpg.Connection, box: SecretBox, password: str) -> DemoSeed:
    """Create what is missing of the demo org, in one transaction; return its logins."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", SEED_LOCK)
        existing_admin = await _demo_admin(conn)
        org_id = existing_admin.org_id if existing_admin else await store.create_org(conn, DEMO_ORG_NAME)
        logins = []
        users: dict[str, store.User] = {}
        for role, email in DEMO_USERS:
            found = await store.users_by_email(conn, email, org_id=org_id)
            user = found[0] if found else None
            created = user is None
            if user is None:
                user = await store.create_user(
                    conn, org_id, email, await asyncio.to_thread(hash_password, password), role
                )
            if user is None:
                raise SeedError(f"{email} exists but is disabled; enable or delete it to seed the demo org")
            users[role] = user
            logins.append(DemoLogin(role, email, created))
        admin = users["admin"]
        matches = existing_admin is None or await asyncio.to_thread(verify_password, admin.password_hash, password)
        secret = await _admin_totp(conn, box, admin)
        await _demo_sources(conn, org_id)
    uri = pyotp.TOTP(secret).provisioning_uri(name=admin.email, issuer_name=TOTP_ISSUER) if secret else None
    return DemoSeed(org_id, tuple(logins), password, matches, secret, uri)


async def _demo_sources(conn: asyncpg.Connection, org_id: uuid.UUID) -> None:
    """Whitelist DEMO_DEPOSIT_SOURCE on both designated accounts, so the demo org can take deposits (an account
    refuses every source until an admin adds one). Only adds: an admin's later changes survive the next start.
    Audited, last in the seed's transaction, when it added anything."""
    for tax in TAXES:
        account = account_id(org_id, tax)
        await accounts.ensure_account(conn, org_id, account, tax)
        added = await accounts.add_sources(conn, org_id, account, [DEMO_DEPOSIT_SOURCE], SEED_ACTOR)
        if added:
            await audit.append(
                conn,
                org_id=org_id,
                actor=SEED_ACTOR,
                action="designated.sources.add",
                target=f"designated_account:{account}",
                detail={"account_id": str(account), "tax": tax, "added": list(added)},
            )


def logins_table(seed: DemoSeed, *, title: str = "Demo logins") -> Table:
    """Role and email of each demo user; the password and TOTP secret are printed beside it, unwrapped."""
    table = Table(title=title, caption=f"org {DEMO_ORG_NAME} ({seed.org_id})")
    for column in ("Role", "Email", "MFA"):
        table.add_column(column, no_wrap=True)
    for login in seed.logins:
        table.add_row(login.role, login.email, "TOTP" if login.role == "admin" and seed.totp_secret else "-")
    return table


def password_line(seed: DemoSeed) -> str:
    if seed.password_matches:
        return f"Password (all demo users): {seed.password}"
    return "Password: as set at an earlier seed (APGMS_DEMO_PASSWORD has changed since)"


# --- bank lines ---------------------------------------------------------------------------------------------------

SEED_ACTOR = "system"
SEED_ACTION = "bank_lines.seed"
SEED_ORG_NAME = "Seed Org {}"
# The namespace of the seed orgs' uuid5 ids: "Seed Org k" has the same id in every database, so a second run finds
# it without a lookup by name, and a benchmark can name it.
SEED_ORG_NAMESPACE = uuid.UUID("6f1e9c52-3b8d-4c1a-9f0e-5a7d2c4b8e31")
# 'SEED': the class of the two-key advisory lock on one org's bank-line seed (audit's chain lock is 'AUDT').
BANK_LINE_SEED_LOCK_CLASS = 0x53_45_45_44
# Rows per COPY: large enough that per-batch costs vanish, small enough for a smooth progress bar and bounded
# memory (about 25 MB of sealed rows in flight); 10k-50k measured the same, see docs/benchmarks.md.
SEED_BATCH_ROWS = 20_000
# Lines generated and sealed between two turns of the event loop (about 10 ms of work), so that a COPY in flight
# keeps the server fed.
SEAL_SLICE_ROWS = 1_000
DEFAULT_RANDOM_SEED = 1
CONNECT_TIMEOUT_S = 10.0
# Every statement's deadline. The longest wait is for the org's seed lock while another run seeds the same org (a
# million lines hold it for about 20 s); a batch's COPY takes under a second.
STATEMENT_TIMEOUT_S = 300.0
PAYEE_COLUMN, DESCRIPTION_COLUMN = "payee", "description"
# The largest --bank-lines and --orgs the command takes: beyond any benchmark, short of a typo's extra zeros.
MAX_SEED_LINES_PER_ORG = 10_000_000
MAX_SEED_ORGS = 1_000


@dataclass(frozen=True)
class SeedOrgRef:
    """An org bank lines are seeded into."""

    org_id: uuid.UUID
    name: str


@dataclass(frozen=True)
class LinesSeeded:
    """What one org's seed did: `existing` lines found, `added` written (0 when it was skipped)."""

    org: SeedOrgRef
    existing: int
    added: int


# (org, lines written so far, lines to write): before an org's first batch, then after each.
SeedProgress = Callable[["SeedOrgRef", int, int], None]


def seed_org_id(number: int) -> uuid.UUID:
    """The id of "Seed Org `number`" (1 for the first after the demo org)."""
    return uuid.uuid5(SEED_ORG_NAMESPACE, SEED_ORG_NAME.format(number))


async def ensure_seed_orgs(conn: asyncpg.Connection, count: int) -> list[SeedOrgRef]:
    """The orgs "Seed Org 1" .. "Seed Org `count`", creating those missing, in one transaction."""
    orgs = [SeedOrgRef(seed_org_id(number), SEED_ORG_NAME.format(number)) for number in range(1, count + 1)]
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", SEED_LOCK)
        for org in orgs:
            if not await store.org_exists(conn, org.org_id):
                await store.create_org(conn, org.name, org.org_id)
    return orgs


async def _sealed_lines(
    cipher: PiiCipher, generator: LineGenerator, org_id: uuid.UUID, rows: int, created_at: datetime
) -> list[SealedLine]:
    """The generator's next `rows` lines, sealed, made SEAL_SLICE_ROWS at a time with a yield to the event loop
    after each slice."""
    lines: list[SealedLine] = []
    for start in range(0, rows, SEAL_SLICE_ROWS):
        batch = generator.batch(min(SEAL_SLICE_ROWS, rows - start))
        row_ids = [str(line_id) for line_id in batch.ids]
        payees = await cipher.encrypt_many(org_id, BANK_LINES_TABLE, PAYEE_COLUMN, batch.payees, row_ids=row_ids)
        descriptions = await cipher.encrypt_many(
            org_id, BANK_LINES_TABLE, DESCRIPTION_COLUMN, batch.descriptions, row_ids=row_ids
        )
        lines.extend(
            SealedLine(line_id, org_id, day, amount, gst, paygw, payee, description, SEED_ACTOR, created_at)
            for line_id, day, amount, gst, paygw, payee, description in zip(
                batch.ids,
                batch.dates,
                batch.amounts,
                batch.gst_amounts,
                batch.paygw_amounts,
                payees,
                descriptions,
                strict=True,
            )
        )
        await asyncio.sleep(0)
    return lines


async def seed_org_lines(
    conn: asyncpg.Connection,
    cipher: PiiCipher,
    org: SeedOrgRef,
    count: int,
    *,
    random_seed: int = DEFAULT_RANDOM_SEED,
    today: date | None = None,
    add: bool = False,
    batch_rows: int = SEED_BATCH_ROWS,
    progress: SeedProgress = lambda org, written, total: None,
) -> LinesSeeded:
    """Write `count` generated lines for `org` in one transaction with their audit record, unless the org already
    has lines and not `add`; `progress(org, written, count)` is called before the first batch and after each."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", BANK_LINE_SEED_LOCK_CLASS, str(org.org_id))
        existing = await count_lines(conn, org.org_id)
        if count <= 0 or (existing and not add):
            return LinesSeeded(org, existing, 0)
        generator = LineGenerator(random_seed, org.org_id, existing, today or date.today())
        created_at = datetime.now(UTC)
        written = queued = 0
        # What the lines add to their quarters' running totals (core.cycle_totals), written after the last COPY.
        totals: dict[date, QuarterTotals] = {}
        progress(org, written, count)
        # While the server takes in one batch, the next is generated and sealed: `copying` runs in a task that
        # feeds the socket whenever `_sealed_lines` yields, so the two cores work at once.
        copying: asyncio.Task[int] | None = None
        try:
            while queued < count:
                rows = min(batch_rows, count - queued)
                lines = await _sealed_lines(cipher, generator, org.org_id, rows, created_at)
                queued += rows
                for start, added in totals_by_quarter(lines).items():
                    totals[start] = totals[start] + added if start in totals else added
                if copying is not None:
                    written += await copying
                    progress(org, written, count)
                copying = asyncio.create_task(copy_lines(conn, lines))
            if copying is not None:
                written += await copying
                progress(org, written, count)
        finally:
            if copying is not None and not copying.done():
                copying.cancel()
                await asyncio.gather(copying, return_exceptions=True)
        await cycles.add_to_totals(conn, org.org_id, totals)
        await audit.append(
            conn,
            org_id=org.org_id,
            actor=SEED_ACTOR,
            action=SEED_ACTION,
            target=f"org:{org.org_id}",
            detail={"count": written, "random_seed": random_seed},
        )
    return LinesSeeded(org, existing, written)


async def seed_bank_lines(
    dsn: str,
    provider: KekProvider,
    orgs: Sequence[SeedOrgRef],
    count: int,
    *,
    random_seed: int = DEFAULT_RANDOM_SEED,
    today: date | None = None,
    add: bool = False,
    progress: SeedProgress = lambda org, written, total: None,
) -> list[LinesSeeded]:
    """`seed_org_lines` for each org in turn, over a connection of its own and a one-connection pool for the
    cipher's key lookups."""
    conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S, command_timeout=STATEMENT_TIMEOUT_S)
    try:
        async with asyncpg.create_pool(
            dsn, min_size=1, max_size=1, timeout=CONNECT_TIMEOUT_S, command_timeout=STATEMENT_TIMEOUT_S
        ) as pool:
            cipher = PiiCipher(pool, provider)
            return [
                await seed_org_lines(
                    conn, cipher, org, count, random_seed=random_seed, today=today, add=add, progress=progress
                )
                for org in orgs
            ]
    finally:
        await conn.close()


class RowsPerSecondColumn(ProgressColumn):
    """A task's mean rate since it started, in rows per second (rich's own speed columns count bytes, and its
    windowed speed needs two updates, which a one-batch org never has)."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed
        return Text(f"{task.completed / elapsed:,.0f} rows/s" if elapsed and task.completed else "")


def seed_progress_bar(console: Console, *, disable: bool) -> Progress:
    """One bar per org being seeded: rows written of its total, and the rate."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RowsPerSecondColumn())
    return Progress(*columns, TimeElapsedColumn(), console=console, disable=disable)


def seeded_table(results: Sequence[LinesSeeded]) -> Table:
    table = Table(title="Bank lines", caption="An org that had lines is skipped; --add writes more.")
    for column in ("Org", "Id", "Before", "Added"):
        table.add_column(column, no_wrap=True)
    for result in results:
        table.add_row(result.org.name, str(result.org.org_id), f"{result.existing:,}", f"{result.added:,}")
    return table
