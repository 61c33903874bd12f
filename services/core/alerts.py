"""`GET /alerts` (any role; newest first, `status=open|resolved`, `severity`, keyset cursor) and
`POST /alerts/{id}/resolve` (admin, finance; a recent step-up for every user, enrolled or not; idempotent).

Alerts are raised by writes elsewhere (bank lines, imports, deposits); nothing here raises one, and the GET writes
only its audit record (`alerts.read`: count, filters, first page or not). A cursor is bound to the org and the
filters (`services/core/cursor.py`), so another org's cursor is 400 like garbage, and another org's alert is 404
like one that does not exist.

Resolving is a conditional UPDATE (`store.alerts.resolve_alert`): of two racing resolutions one wins and the other
is 409 `already_resolved`, as is any later one. The note is kept on the alert (the org's users read it back), but
the audit record `alert.resolve` carries only the note's length: a note is free text that may name a person, and
the audit chain outlives the org's deletion, when everything the note could identify must be gone.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from pydantic import BaseModel, ConfigDict
from starlette.requests import Request
from starlette.responses import Response

from services.core.cursor import InvalidCursor, decode_alert_cursor, encode_alert_cursor
from services.core.deps import core_deps
from services.core.models import non_blank
from services.core.store import alerts as store
from services.core.store.orgs import hold_org
from shared import audit
from shared.authz import guard
from shared.canonical import canonical_json
from shared.contracts.core import AlertPage, AlertQuery, AlertView
from shared.errors import ApiError
from shared.idempotency import idempotent
from shared.negotiation import JSON_MEDIA_TYPE
from shared.openapi import documented
from shared.pagination import bad_cursor
from shared.roles import ROLES, Role
from shared.tokens import Principal
from shared.validation import parse_body, parse_query, path_uuid
from shared.views import view_of

__all__ = ["NOTE_MAX_CHARS", "READERS", "RESOLVERS", "alert_filters", "alert_view", "list_alerts", "resolve_alert"]

READERS: tuple[Role, ...] = ROLES
RESOLVERS: tuple[Role, ...] = ("admin", "finance")
NOTE_MAX_CHARS = 1000


def alert_filters(query: AlertQuery) -> store.AlertFilters:
    """The store's filters for the listing's query."""
    resolved = None if query.status is None else query.status == "resolved"
    return store.AlertFilters(resolved=resolved, severity=query.severity)


def alert_view(alert: store.Alert) -> AlertView:
    # The table's CHECK holds severity to Severity.
    return view_of(AlertView, alert, status="open" if alert.resolved_at is None else "resolved")


Note = Annotated[str, non_blank(NOTE_MAX_CHARS)]


class ResolveAlert(BaseModel):
    """`POST /alerts/{id}/resolve`."""

    model_config = ConfigDict(extra="forbid")

    note: Note


@documented("List the org's alerts, newest first", response=AlertPage, tags=["alerts"])
@guard(roles=READERS)
async def list_alerts(request: Request, principal: Principal) -> Response:
    query = parse_query(request.query_params, AlertQuery)
    org_id = uuid.UUID(principal.org_id)
    detail = query.filter_detail()
    bound_to = canonical_json(detail)
    async with request.app.state.runtime.db.pool.acquire() as conn, conn.transaction():
        key = await core_deps(request).cursor_key.get(conn)
        try:
            after = decode_alert_cursor(key, org_id, bound_to, query.cursor) if query.cursor is not None else None
        except InvalidCursor:
            raise bad_cursor() from None
        rows = await store.page_alerts(conn, org_id, alert_filters(query), after, query.limit + 1)
        page, more = rows[: query.limit], len(rows) > query.limit
        await audit.append(
            conn,
            org_id=org_id,
            actor=audit.actor_of(principal),
            action="alerts.read",
            target="alerts",
            detail={"count": len(page), "filters": detail, "first_page": after is None},
        )
    last = page[-1] if more else None
    body = AlertPage(
        items=[alert_view(alert) for alert in page],
        next_cursor=encode_alert_cursor(key, org_id, bound_to, store.AlertKey(last.created_at, last.id))
        if last
        else None,
    )
    return Response(body.model_dump_json(), media_type=JSON_MEDIA_TYPE)


@documented(
    "Resolve one of the org's alerts (needs a recent step-up; idempotent with Idempotency-Key)",
    request=ResolveAlert,
    response=AlertView,
    tags=["alerts"],
)
@guard(roles=RESOLVERS, step_up=True)
async def resolve_alert(request: Request, principal: Principal) -> Response:
    alert_id = path_uuid(request, "id")
    body = await parse_body(request, ResolveAlert)
    org_id = uuid.UUID(principal.org_id)
    actor = audit.actor_of(principal)
    async with request.app.state.runtime.db.pool.acquire() as conn, conn.transaction():
        await hold_org(conn, org_id)

        async def resolve() -> Response:
            outcome, alert = await store.resolve_alert(conn, org_id, alert_id, actor=actor, note=body.note)
            if outcome is store.Resolution.NOT_FOUND:
                raise ApiError("not_found")
            if outcome is store.Resolution.ALREADY_RESOLVED:
                raise ApiError("already_resolved")
            assert alert is not None
            await audit.append(
                conn,
                org_id=org_id,
                actor=actor,
                action="alert.resolve",
                target=f"alert:{alert_id}",
                detail={
                    "id": str(alert_id),
                    "type": alert.type,
                    "severity": alert.severity,
                    "note_chars": len(body.note),
                },
            )
            return Response(alert_view(alert).model_dump_json(), media_type=JSON_MEDIA_TYPE)

        return await idempotent(request, conn, resolve, org_id=org_id, actor=actor, body=body)
