"""What an alert keeps to itself when core hands it to another service (compliance, the regulator)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from services.core.internal import shared_alert_view
from services.core.store.alerts import DESIGNATED_WITHDRAWAL_ATTEMPT, Alert

AT = datetime(2026, 11, 27, 23, 0, tzinfo=UTC)


def test_a_refused_deposits_source_text_and_the_resolution_note_stay_in_core() -> None:
    alert = Alert(
        id=uuid.uuid4(),
        org_id=uuid.uuid4(),
        type=DESIGNATED_WITHDRAWAL_ATTEMPT,
        severity="HIGH",
        message="A deposit from a source not on the PAYGW account's list was refused",
        detail={"reason": "unlisted_source", "source": "Jane Citizen 062-000 12345678", "source_tag": "ab" * 16},
        created_at=AT,
        created_by="user:3f2c1b0a-9e8d-4c7b-8a69-5f4e3d2c1b0a",
        resolved_at=AT,
        resolved_by="user:3f2c1b0a-9e8d-4c7b-8a69-5f4e3d2c1b0a",
        resolution_note="Called Jane, it was a typo",
    )
    view = shared_alert_view(alert)
    assert view.detail == {"reason": "unlisted_source", "source_tag": "ab" * 16}
    assert view.resolution_note is None
    assert alert.detail["source"] == "Jane Citizen 062-000 12345678", "the stored alert is not changed"
    assert (view.id, view.type, view.message) == (alert.id, alert.type, alert.message)
