"""What core's handlers share, built once at start-up by `create_app` (the pool exists only then): the PII cipher,
the page-cursor key, and the BAS lodgement's outbound adapter (`services.core.lodgement`: the recording one unless
another is given). Handlers reach it with `core_deps(request)`, typed, never through loose `app.state` keys."""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg
from starlette.requests import Request

from services.core import store
from services.core.lodgement import LodgementGateway, RecordingGateway
from shared.pii import PiiCipher

__all__ = ["CoreDeps", "CursorKey", "core_deps"]


@dataclass
class CursorKey:
    """The cursor-signing key, read from the database on first use (not at start-up, so core starts and reports
    /ready while PostgreSQL is unreachable) and kept for the life of the process."""

    _key: bytes | None = field(default=None, repr=False)

    async def get(self, conn: asyncpg.Connection) -> bytes:
        if self._key is None:
            self._key = await store.cursor_key(conn)
        return self._key


@dataclass(frozen=True)
class CoreDeps:
    cipher: PiiCipher
    cursor_key: CursorKey
    lodgement: LodgementGateway = field(default_factory=RecordingGateway)


def core_deps(request: Request) -> CoreDeps:
    deps = request.app.state.core
    if not isinstance(deps, CoreDeps):
        raise RuntimeError("core's dependencies are built at start-up; the app has not started")
    return deps
