"""Composition root of the compliance service: the routes, and at start-up (when the pool exists) the evidence
keys its handlers share (`services.compliance.deps.ComplianceDeps`) and its background work: scheduled audit
checkpoints and the readings of the services' request counters that snapshots compute rates from."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Route

from services.compliance import audit_trail, checkpoints, evidence, internal, report, snapshots
from services.compliance.config import ComplianceSettings
from services.compliance.deps import ComplianceDeps
from services.compliance.keys import EvidenceKeys
from shared.app import Runtime, build_runtime, build_service_app
from shared.crypto import SecretBox


def create_app(settings: ComplianceSettings) -> Starlette:
    runtime = build_runtime(settings)
    assert runtime.db is not None
    routes = [
        Route("/compliance/report", report.get_report, methods=["GET"]),
        Route("/compliance/evidence", evidence.create_pack, methods=["POST"]),
        Route("/compliance/evidence", evidence.list_packs, methods=["GET"]),
        Route("/compliance/evidence/{pack_id}", evidence.get_pack, methods=["GET"]),
        Route("/compliance/evidence/{pack_id}/verify", evidence.verify_pack, methods=["GET"]),
        Route("/compliance/.well-known/evidence-keys.json", evidence.evidence_keys, methods=["GET"]),
        Route("/monitoring/snapshots", snapshots.create_snapshot, methods=["POST"]),
        Route("/monitoring/snapshots", snapshots.list_snapshots, methods=["GET"]),
        Route("/audit", audit_trail.list_records, methods=["GET"]),
        Route("/audit/verify", audit_trail.verify_chain, methods=["GET"]),
        Route("/audit/checkpoints", checkpoints.create_checkpoint, methods=["POST"]),
        Route("/audit/checkpoints", checkpoints.list_checkpoints, methods=["GET"]),
        Route("/internal/orgs/{org_id}/report", internal.org_report, methods=["GET"]),
        Route("/internal/orgs/{org_id}/snapshots", internal.org_snapshots, methods=["GET"]),
        Route("/internal/orgs/{org_id}/evidence", internal.org_evidence, methods=["GET"]),
        Route("/internal/orgs/{org_id}/evidence/{pack_id}", internal.org_pack_item, methods=["GET"]),
    ]
    app = build_service_app(settings, routes, title="APGMS compliance service", runtime=runtime)

    async def start(rt: Runtime) -> None:
        assert rt.db is not None
        app.state.compliance = ComplianceDeps(
            settings=settings, keys=EvidenceKeys(rt.db.pool, SecretBox(settings.require_master_key()))
        )

    runtime.on_startup.append(start)
    checkpoints.schedule(runtime, settings)
    snapshots.schedule_sampling(runtime, settings)
    return app
