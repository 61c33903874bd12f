"""Compliance's internal answers, as the regulator reads them (services/compliance/internal.py serves them).

    GET /internal/orgs/{org_id}/report                  Report
    GET /internal/orgs/{org_id}/evidence                VerifiedPackPage (each pack with what /verify says now)
    GET /internal/orgs/{org_id}/evidence/{pack_id}      PackItem (the export envelope and its verdict)
    GET /internal/orgs/{org_id}/snapshots               SnapshotPage

Compliance's own routes answer the same Report, PackView, Verdict, Export and SnapshotView. An `Export` is also
the file `apgms evidence verify` reads: services/compliance/signing.py says how it is signed and verified.
"""

from __future__ import annotations

import base64
import uuid
from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.contracts.core import (
    AlertSummary,
    DesignatedTotals,
    OpenAlertCounts,
    ReportCycle,
    ReportObligations,
    ReportPlan,
)

__all__ = [
    "BAS_HISTORY_CYCLES",
    "EXPORT_FORMAT",
    "SIGNATURE_ALGORITHM",
    "CheckView",
    "Export",
    "PackItem",
    "PackView",
    "Report",
    "ServiceStatus",
    "ServiceTraffic",
    "SnapshotAlerts",
    "SnapshotBas",
    "SnapshotBody",
    "SnapshotPage",
    "SnapshotView",
    "Traffic",
    "TrafficTotal",
    "Verdict",
    "VerifiedPackPage",
    "VerifiedPackView",
]

BAS_HISTORY_CYCLES = 8
EXPORT_FORMAT = "apgms.evidence-export/1"
SIGNATURE_ALGORITHM = "Ed25519"


# --- the report -----------------------------------------------------------------------------------------------


class Report(BaseModel):
    """An org's compliance report: where its BAS cycles stand, its payment plans, alerts, obligations and the
    balances of its designated accounts, as core reported them at `generated_at`. Money is 2-place strings."""

    org_id: uuid.UUID
    generated_at: datetime
    bas_history: list[ReportCycle] = Field(
        description=f"The current BAS cycle and earlier ones, newest first, at most {BAS_HISTORY_CYCLES}"
    )
    payment_plans: list[ReportPlan]
    alerts: AlertSummary
    obligations: ReportObligations
    next_bas_due: date
    designated_totals: DesignatedTotals


# --- evidence packs -------------------------------------------------------------------------------------------


class Export(BaseModel):
    """A signed pack as it leaves the service: everything needed to verify it offline."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    format: str = EXPORT_FORMAT
    id: uuid.UUID
    org_id: uuid.UUID
    created_at: datetime
    created_by: str
    tag: str | None
    sha256: str
    signature: str
    key_id: str
    algorithm: str = SIGNATURE_ALGORITHM
    payload_base64: str

    def payload(self) -> bytes:
        """The payload bytes; `binascii.Error` when payload_base64 is not base64."""
        return base64.b64decode(self.payload_base64, validate=True)


class PackView(BaseModel):
    """A pack without its payload: the answer to its creation and an item of the listing."""

    id: uuid.UUID
    org_id: uuid.UUID
    created_at: datetime
    created_by: str
    tag: str | None
    sha256: str
    key_id: str


class VerifiedPackView(PackView):
    """A listed pack with what `/verify` says of it now: `verified` when every check holds, else `failed_check`
    names the first that did not (the listing of compliance's internal API, which the regulator shows)."""

    verified: bool
    failed_check: str | None


class VerifiedPackPage(BaseModel):
    items: list[VerifiedPackView]
    next_cursor: str | None


class CheckView(BaseModel):
    name: str
    ok: bool
    reason: str | None


class Verdict(BaseModel):
    """`/verify`: `valid` when every check holds; else `failed` names the first that did not, `reason` says why."""

    id: uuid.UUID
    valid: bool
    failed: str | None
    reason: str | None
    sha256: str
    key_id: str
    checks: list[CheckView]


class PackItem(BaseModel):
    """One pack for another service: the export envelope and what `/verify` says of it."""

    export: Export
    verification: Verdict


# --- monitoring snapshots -------------------------------------------------------------------------------------

ServiceStatus = Literal["ok", "unreachable", "no_baseline"]


class ServiceTraffic(BaseModel):
    """One service over its own window (now against its baseline sample). `ok`: every figure is set;
    `unreachable`: its /metrics could not be read now; `no_baseline`: read now, but there is no earlier sample to
    compare with yet. The figures are null unless `ok`."""

    service: str
    status: ServiceStatus
    window_seconds: int | None
    requests: int | None
    errors_5xx: int | None
    requests_per_second: str | None
    error_ratio_5xx: str | None


class TrafficTotal(BaseModel):
    """The sum over the `ok` services: requests per second is the sum of their rates."""

    services_ok: int
    requests: int
    errors_5xx: int
    requests_per_second: str
    error_ratio_5xx: str


class Traffic(BaseModel):
    """`window_seconds`: the longest window of an `ok` service (each service's own is in its entry), else 0."""

    window_seconds: int
    services: list[ServiceTraffic]
    total: TrafficTotal


class SnapshotAlerts(BaseModel):
    open_total: int
    open_by_severity: OpenAlertCounts
    open_high: int


class SnapshotBas(BaseModel):
    """The current BAS period as core sees it now."""

    cycle_id: uuid.UUID
    period: str
    status: str
    blockers: list[str]
    total_shortfall: str
    next_bas_due: date


class SnapshotBody(BaseModel):
    alerts: SnapshotAlerts
    designated_totals: DesignatedTotals
    bas: SnapshotBas
    traffic: Traffic


class SnapshotView(BaseModel):
    id: uuid.UUID
    taken_at: datetime
    taken_by: str
    body: SnapshotBody


class SnapshotPage(BaseModel):
    items: list[SnapshotView]
    next_cursor: str | None
