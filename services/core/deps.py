"""What core's handlers share, built once at start-up by `create_app` (the pool exists only then): the PII cipher,
the page-cursor key, the bulk imports' admission slots, the BAS lodgement's outbound adapter
(`services.core.lodgement`: the recording one unless another is given), and the deleted orgs this process knows
of. Handlers reach it with `core_deps(request)`, typed, never through loose `app.state` keys."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import asyncpg
from starlette.requests import Request

from services.core import store
from services.core.lodgement import LodgementGateway, RecordingGateway
from services.core.store import orgs
from shared.errors import ApiError
from shared.pii import PiiCipher

__all__ = ["DELETED_ORGS_MAX", "CoreDeps", "CursorKey", "DeletedOrgs", "ImportSlots", "core_deps"]

# Deleted orgs remembered per process (16 bytes and a dict slot each); past it the least recently asked is read
# again from the table when asked.
DELETED_ORGS_MAX = 10_000
# A tombstone lookup takes a pool connection of its own (before the handler takes one); waiting longer would only
# hide exhaustion.
TOMBSTONE_ACQUIRE_TIMEOUT_S = 5.0


@dataclass
class CursorKey:
    """The cursor-signing key, read from the database on first use (not at start-up, so core starts and reports
    /ready while PostgreSQL is unreachable) and kept for the life of the process."""

    _key: bytes | None = field(default=None, repr=False)

    async def get(self, conn: asyncpg.Connection) -> bytes:
        if self._key is None:
            self._key = await store.cursor_key(conn)
        return self._key


@dataclass
class ImportSlots:
    """At most `limit` bulk imports at once in this process: each holds its body, rows and sealed values (about
    25 MB for 10,000 rows) while it runs, so without a bound 32 at once took core past 900 MB. An import takes a
    slot before its body is read and keeps it until its answer is built; one that finds none free waits up to
    `wait_s`, then is refused with 503 `service_unavailable` and `Retry-After` (nothing of it was read or written)."""

    limit: int
    wait_s: float
    _free: asyncio.Semaphore = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.limit < 1 or self.wait_s < 0:
            raise ValueError("an import needs at least one slot and a wait of zero or more seconds")
        self._free = asyncio.Semaphore(self.limit)

    @property
    def retry_after_s(self) -> int:
        """What a refused import is told to wait: the time it waited, at least a second."""
        return max(1, math.ceil(self.wait_s))

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self.wait_s):
                await self._free.acquire()
        except TimeoutError:
            raise ApiError(
                "service_unavailable",
                f"Too many imports in progress (at most {self.limit} at once); retry in {self.retry_after_s} s",
                headers={"retry-after": str(self.retry_after_s)},
            ) from None
        try:
            yield
        finally:
            self._free.release()


@dataclass
class DeletedOrgs:
    """Whether an org was deleted, for core's check of every request (`services.core.app.refuse_deleted_org`).

    A deletion is forever, so "deleted" is remembered (the most recently asked `max_orgs`); "not deleted" never is,
    since another process may delete the org at any moment: it is one primary-key probe of `core.org_tombstones`
    per request, on a connection given back before the handler takes its own."""

    max_orgs: int = DELETED_ORGS_MAX
    _known: OrderedDict[uuid.UUID, None] = field(default_factory=OrderedDict, repr=False)

    async def is_deleted(self, pool: asyncpg.Pool, org_id: uuid.UUID) -> bool:
        if org_id in self._known:
            self._known.move_to_end(org_id)
            return True
        async with pool.acquire(timeout=TOMBSTONE_ACQUIRE_TIMEOUT_S) as conn:
            deleted = await orgs.is_deleted(conn, org_id)
        if deleted:
            self.remember(org_id)
        return deleted

    def remember(self, org_id: uuid.UUID) -> None:
        """The org is deleted (its deletion committed)."""
        self._known[org_id] = None
        self._known.move_to_end(org_id)
        while len(self._known) > self.max_orgs:
            self._known.popitem(last=False)

    def __len__(self) -> int:
        return len(self._known)


@dataclass(frozen=True)
class CoreDeps:
    cipher: PiiCipher
    cursor_key: CursorKey
    imports: ImportSlots
    lodgement: LodgementGateway = field(default_factory=RecordingGateway)
    deleted_orgs: DeletedOrgs = field(default_factory=DeletedOrgs)


def core_deps(request: Request) -> CoreDeps:
    deps = request.app.state.core
    if not isinstance(deps, CoreDeps):
        raise RuntimeError("core's dependencies are built at start-up; the app has not started")
    return deps
