"""The outbound seam of a BAS lodgement: what core would send to the ATO, and the receipt it keeps.

    LodgementGateway.lodge(LodgementRequest) -> LodgementReceipt     the port (a Protocol)
    RecordingGateway                                                 the only adapter: sends nothing, records

There is no call to the ATO. `POST /bas/lodge` builds a `LodgementRequest` (the org, the period, the frozen figures;
no PII), gives the adapter its canonical JSON, and writes the adapter's name, its receipt reference and those exact
bytes into the cycle row with the LODGED status, in one transaction. The recording adapter's reference is derived
from the payload's sha256, so a replay of the same figures names the same receipt. A real SBR client is a new class
with the same `lodge`; it must answer within LODGE_TIMEOUT_S (the handler holds the cycle's row lock meanwhile) and
raise on any refusal, which rolls the lodgement back.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import date
from typing import Protocol

from services.core.obligations import Obligations
from shared.canonical import canonical_json
from shared.money import format_total

__all__ = [
    "LODGE_TIMEOUT_S",
    "RECORDING_GATEWAY",
    "LodgementGateway",
    "LodgementReceipt",
    "LodgementRequest",
    "RecordingGateway",
]

LODGE_TIMEOUT_S = 10.0
RECORDING_GATEWAY = "recording"
REFERENCE_PREFIX = "recorded-"
REFERENCE_HEX_CHARS = 32


@dataclass(frozen=True)
class LodgementRequest:
    org_id: uuid.UUID
    cycle_id: uuid.UUID
    period_start: date
    period_end: date
    obligations: Obligations

    def document(self) -> dict[str, object]:
        """What is sent: dates and amounts as text (amounts as money text, sums allowed past twelve digits)."""
        return {
            "org_id": str(self.org_id),
            "cycle_id": str(self.cycle_id),
            "period_start": self.period_start.isoformat(),
            "period_end": self.period_end.isoformat(),
            "taxes": {
                t.tax: {"required": format_total(t.required), "secured": format_total(t.secured)}
                for t in self.obligations.taxes
            },
        }

    def payload(self) -> bytes:
        """The canonical JSON of `document()` (RFC 8785): one spelling for one lodgement."""
        return canonical_json(self.document())


@dataclass(frozen=True)
class LodgementReceipt:
    gateway: str  # the adapter's name, stored with the cycle
    reference: str  # the receiver's reference for the lodgement
    payload: bytes  # exactly what was sent


class LodgementGateway(Protocol):
    @property
    def name(self) -> str: ...

    async def lodge(self, request: LodgementRequest) -> LodgementReceipt: ...


class RecordingGateway:
    """Sends nothing: its receipt is the payload itself, which the lodgement stores in the cycle row."""

    @property
    def name(self) -> str:
        return RECORDING_GATEWAY

    async def lodge(self, request: LodgementRequest) -> LodgementReceipt:
        payload = request.payload()
        digest = hashlib.sha256(payload).hexdigest()[:REFERENCE_HEX_CHARS]
        return LodgementReceipt(gateway=self.name, reference=REFERENCE_PREFIX + digest, payload=payload)
