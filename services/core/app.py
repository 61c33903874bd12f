"""Composition root of the core service: its settings' KEK provider, the routes, and at start-up (when the pool
exists) the dependencies its handlers share (`services.core.deps.CoreDeps`).

A write that races its org's deletion finds migration 0008's triggers refusing the org's rows (SQLSTATE AP410,
`store.orgs.ORG_DELETED_SQLSTATE`) after its transaction rolled back: that is 410 `gone`, not a server fault. Any
other database error is left to the error boundary (500 `internal_error`).
"""

from __future__ import annotations

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.core import accounts, admin, alerts, bank_lines, bulk, cycles, internal, plans
from services.core.config import CoreSettings
from services.core.deps import CoreDeps, CursorKey, ImportSlots
from services.core.store.orgs import ORG_DELETED_SQLSTATE
from shared.app import Runtime, build_runtime, build_service_app
from shared.errors import problem_response
from shared.pii import PiiCipher


async def org_deleted(_: Request, exc: Exception) -> Response:
    """410 `gone` for a row refused because its org was deleted; any other database error goes on to the boundary."""
    if getattr(exc, "sqlstate", None) != ORG_DELETED_SQLSTATE:
        raise exc
    return problem_response("gone", "This organisation has been deleted")


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

    async def start(rt: Runtime) -> None:
        assert rt.db is not None
        app.state.core = CoreDeps(
            cipher=PiiCipher(rt.db.pool, settings.kek_provider),
            cursor_key=CursorKey(),
            imports=ImportSlots(settings.max_concurrent_imports, settings.import_wait_s),
        )

    runtime.on_startup.append(start)
    return app
