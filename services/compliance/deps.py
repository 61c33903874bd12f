"""What compliance's handlers share, built once at start-up by `create_app` (the pool exists only then): the
evidence keys and the service's settings, reached with `compliance_deps(request)`, typed."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from services.compliance.config import ComplianceSettings
from services.compliance.keys import EvidenceKeys

__all__ = ["ComplianceDeps", "compliance_deps"]


@dataclass(frozen=True)
class ComplianceDeps:
    settings: ComplianceSettings
    keys: EvidenceKeys


def compliance_deps(request: Request) -> ComplianceDeps:
    deps = request.app.state.compliance
    if not isinstance(deps, ComplianceDeps):
        raise RuntimeError("compliance's dependencies are built at start-up; the app has not started")
    return deps
