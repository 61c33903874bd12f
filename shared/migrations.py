"""SQL migrations: numbered `.sql` files, owned by `shared` (`shared/sql/`, the schemas every service writes to,
such as the audit chain) or by one service (`services/<name>/migrations/`).

`migrate` applies every pending file of every service in one transaction under an advisory lock (so two
processes migrating at once serialise), recording each file's SHA-256. A file changed or removed after it was
applied makes `migrate` refuse and `status` report it: history is fixed; a change is a new numbered file.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

__all__ = [
    "ADVISORY_LOCK_KEY",
    "MIGRATIONS_ROOT",
    "OWNERS",
    "SERVICES",
    "SHARED",
    "AppliedMigration",
    "MigrationError",
    "MigrationFile",
    "ServiceStatus",
    "discover",
    "migrate",
    "migrations_folder",
    "plan",
    "status",
    "summarise",
]

SERVICES = ("auth", "core", "compliance", "regulator")
SHARED = "shared"
# Apply order: shared first, since services' tables may refer to its schemas.
OWNERS = (SHARED, *SERVICES)
MIGRATIONS_ROOT = Path(__file__).resolve().parent.parent
FILE_PATTERN = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
# Any fixed 64-bit number; every migrating process takes the same transaction-level lock.
ADVISORY_LOCK_KEY = 0x41_50_47_4D_53_4D_49_47
CONNECT_TIMEOUT_S = 5.0

META_DDL = """
CREATE SCHEMA IF NOT EXISTS apgms_meta;
CREATE TABLE IF NOT EXISTS apgms_meta.schema_migrations (
    service    text        NOT NULL,
    version    integer     NOT NULL,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (service, version)
);
"""


class MigrationError(Exception):
    """Migrations cannot be applied as they are; the message says which file and what to do."""


@dataclass(frozen=True)
class MigrationFile:
    service: str
    version: int
    name: str
    sql: str = field(repr=False)

    @property
    def label(self) -> str:
        return f"{self.service}/{self.version:04d}_{self.name}.sql"

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True)
class AppliedMigration:
    service: str
    version: int
    name: str
    checksum: str


@dataclass(frozen=True)
class ServiceStatus:
    service: str
    applied: list[str]
    pending: list[str]
    changed: list[str]

    @property
    def up_to_date(self) -> bool:
        return not self.pending and not self.changed


def migrations_folder(owner: str, root: Path = MIGRATIONS_ROOT) -> Path:
    """Where `owner`'s files live under the project root `root`."""
    return root / "shared" / "sql" if owner == SHARED else root / "services" / owner / "migrations"


def discover(services: Iterable[str] = OWNERS, root: Path = MIGRATIONS_ROOT) -> list[MigrationFile]:
    """Every migration file, in apply order (owner order, then version)."""
    found: list[MigrationFile] = []
    for service in services:
        folder = migrations_folder(service, root)
        versions: set[int] = set()
        for path in sorted(folder.glob("*.sql")):
            match = FILE_PATTERN.fullmatch(path.name)
            if match is None:
                raise MigrationError(f"{service}/{path.name}: migration files are named NNNN_name.sql")
            version = int(match.group(1))
            if version in versions:
                raise MigrationError(f"{service}/{path.name}: version {version:04d} is used twice")
            versions.add(version)
            found.append(MigrationFile(service, version, match.group(2), path.read_text()))
    return found


def plan(files: Sequence[MigrationFile], applied: Sequence[AppliedMigration]) -> list[MigrationFile]:
    """The files still to apply; raises `MigrationError` when the applied history no longer matches the files."""
    by_key = {(f.service, f.version): f for f in files}
    for row in applied:
        current = by_key.get((row.service, row.version))
        label = f"{row.service}/{row.version:04d}_{row.name}.sql"
        if current is None:
            raise MigrationError(f"{label} was applied but the file is gone; restore it")
        if current.checksum != row.checksum:
            raise MigrationError(
                f"{label} was changed after it was applied (checksum {row.checksum[:12]} recorded, "
                f"{current.checksum[:12]} on disk); restore the file and put the change in a new migration"
            )
    done = {(row.service, row.version) for row in applied}
    return [f for f in files if (f.service, f.version) not in done]


def summarise(
    files: Sequence[MigrationFile], applied: Sequence[AppliedMigration], services: Iterable[str] = OWNERS
) -> list[ServiceStatus]:
    by_key = {(f.service, f.version): f for f in files}
    done = {(row.service, row.version): row for row in applied}
    result = []
    for service in services:
        rows = [row for row in applied if row.service == service]
        changed = [
            f"{row.version:04d}_{row.name}.sql"
            for row in rows
            if (current := by_key.get((service, row.version))) is None or current.checksum != row.checksum
        ]
        result.append(
            ServiceStatus(
                service=service,
                applied=[f"{row.version:04d}_{row.name}.sql" for row in rows],
                pending=[
                    f.label.split("/", 1)[1] for f in files if f.service == service and (service, f.version) not in done
                ],
                changed=changed,
            )
        )
    return result


async def _applied(connection: asyncpg.Connection) -> list[AppliedMigration]:
    exists = await connection.fetchval("SELECT to_regclass('apgms_meta.schema_migrations') IS NOT NULL")
    if not exists:
        return []
    rows = await connection.fetch(
        "SELECT service, version, name, checksum FROM apgms_meta.schema_migrations ORDER BY service, version"
    )
    return [AppliedMigration(r["service"], r["version"], r["name"], r["checksum"]) for r in rows]


async def migrate(dsn: str, services: Iterable[str] = OWNERS, root: Path = MIGRATIONS_ROOT) -> list[MigrationFile]:
    """Apply every pending migration in one transaction; returns what was applied (empty when up to date)."""
    files = discover(services, root)
    connection = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    try:
        async with connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", ADVISORY_LOCK_KEY)
            await connection.execute(META_DDL)
            pending = plan(files, await _applied(connection))
            for migration in pending:
                await connection.execute(migration.sql)
                await connection.execute(
                    "INSERT INTO apgms_meta.schema_migrations (service, version, name, checksum) "
                    "VALUES ($1, $2, $3, $4)",
                    migration.service,
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
        return pending
    finally:
        await connection.close()


async def status(dsn: str, services: Iterable[str] = OWNERS, root: Path = MIGRATIONS_ROOT) -> list[ServiceStatus]:
    """Applied, pending and changed files per service; raises when the database cannot be reached."""
    service_list = list(services)
    files = discover(service_list, root)
    connection = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    try:
        return summarise(files, await _applied(connection), service_list)
    finally:
        await connection.close()
