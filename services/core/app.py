"""Composition root of the core service: its settings' KEK provider, the routes, and at start-up (when the pool
exists) the dependencies its handlers share (`services.core.deps.CoreDeps`).

A deleted org is gone for every route: `refuse_deleted_org`, registered as a principal check (`shared.authz.guard`
runs it after authorization), answers 410 `gone` when the token's org (a service token: the org in the path) has a
tombstone, before the handler reads or audits anything, so no record follows `admin.org.delete` in the org's chain
from a request that began after the deletion committed (its token may live on: auth's part failed, or within the
second that revocation takes). The one exception is `DELETE /admin/delete/{org}`, whose repetition on a deleted org
retries auth's part. A write already past that check when the deletion commits is refused by `store.orgs.hold_org`
(`OrgGone`), or, for a writer without it, by migration 0008's triggers (SQLSTATE AP410,
`store.orgs.ORG_DELETED_SQLSTATE`): both are 410 `gone` too, not a server fault. Any other database error is left to
the error boundary (500 `internal_error`; a deadlock or serialization failure 503 with Retry-After).
"""

from __future__ import annotations

import uuid

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.core import accounts, admin, alerts, bank_lines, bulk, cycles, internal, plans
from services.core.config import CoreSettings
from services.core.deps import CoreDeps, CursorKey, ImportSlots, core_deps
from services.core.store.orgs import ORG_DELETED_SQLSTATE, OrgGone
from shared.app import Runtime, build_runtime, build_service_app
from shared.errors import ApiError, problem_response
from shared.pii import PiiCipher
from shared.tokens import Principal

GONE = "This organisation has been deleted"


async def org_deleted(_: Request, exc: Exception) -> Response:
    """410 `gone` for a row refused because its org was deleted; any other database error goes on to the boundary."""
    if not isinstance(exc, OrgGone) and getattr(exc, "sqlstate", None) != ORG_DELETED_SQLSTATE:
        raise exc
    return problem_response("gone", GONE)


def org_of(request: Request, principal: Principal) -> uuid.UUID | None:
    """The org a request acts for: the token's, or for a service token the org its path names (None when the path
    names none or a malformed one: the handler answers that)."""
    text = principal.org_id if principal.kind != "service" else request.path_params.get("org_id")
    try:
        return uuid.UUID(text) if text else None
    except ValueError:
        return None


async def refuse_deleted_org(request: Request, principal: Principal) -> None:
    """410 `gone` for any route of a deleted org but the deletion's own retry (the module docstring)."""
    if request.scope.get("endpoint") is admin.delete_org:
        return
    org_id = org_of(request, principal)
    runtime: Runtime = request.app.state.runtime
    if runtime.db is None or org_id is None:
        return
    if await core_deps(request).deleted_orgs.is_deleted(runtime.db.pool, org_id):
        raise ApiError("gone", GONE)


def create_app(settings: CoreSettings) -> Starlette:
    runtime = build_runtime(settings)
    assert runtime.db is not None
    routes = [
        Route("/bank-lines", bank_lines.list_lines, methods=["GET"]),
        Route("/bank-lines", bank_lines.create_line, methods=["POST"]),
        Route("/bank-lines/import", bulk.import_lines, methods=["POST"]),
        Route("/bank-lines/{line_id}", bank_lines.get_line, methods=["GET"]),
        Route("/alerts", alerts.list_alerts, methods=["GET"]),
        Route("/alerts/{id}/resolve", alerts.resolve_alert, methods=["POST"]),
        Route("/org/designated-accounts", accounts.list_accounts, methods=["GET"]),
        Route("/org/designated-accounts/{account_id}/deposits", accounts.deposit, methods=["POST"]),
        Route("/org/designated-accounts/{account_id}/withdrawals", accounts.withdraw, methods=["POST"]),
        Route("/org/designated-accounts/{account_id}/sources", accounts.list_sources, methods=["GET"]),
        Route("/org/designated-accounts/{account_id}/sources", accounts.replace_sources, methods=["PUT"]),
        Route("/admin/export/{org}", admin.export_org, methods=["GET"]),
        Route("/admin/delete/{org}", admin.delete_org, methods=["DELETE"]),
        Route("/org/obligations/current", cycles.current_obligations, methods=["GET"]),
        Route("/bas/preview", cycles.preview, methods=["GET"]),
        Route("/bas/lodge", cycles.lodge, methods=["POST"]),
        Route("/bas/payment-plans", plans.list_plans, methods=["GET"]),
        Route("/bas/payment-plans", plans.create_plan, methods=["POST"]),
        Route("/bas/payment-plans/{id}/approve", plans.approve_plan, methods=["POST"]),
        Route("/bas/payment-plans/{id}/reject", plans.reject_plan, methods=["POST"]),
        Route("/internal/orgs/{org_id}/bank-lines/summary", internal.bank_line_summary, methods=["GET"]),
        Route("/internal/orgs/{org_id}/alerts", internal.org_alerts, methods=["GET"]),
        Route("/internal/orgs/{org_id}/report-inputs", internal.report_inputs, methods=["GET"]),
    ]
    app = build_service_app(settings, routes, title="APGMS core service", runtime=runtime)
    app.add_exception_handler(asyncpg.PostgresError, org_deleted)
    app.add_exception_handler(OrgGone, org_deleted)
    runtime.principal_checks.append(refuse_deleted_org)

    async def start(rt: Runtime) -> None:
        assert rt.db is not None
        app.state.core = CoreDeps(
            cipher=PiiCipher(rt.db.pool, settings.kek_provider),
            cursor_key=CursorKey(),
            imports=ImportSlots(settings.max_concurrent_imports, settings.import_wait_s),
        )

    runtime.on_startup.append(start)
    return app
