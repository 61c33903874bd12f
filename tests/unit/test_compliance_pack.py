"""The report and the evidence pack's payload, pure (services/compliance/pack.py): the report carries core's inputs
as they came, the tag rules, the audit head, the one canonical encoding, and audit rows written so that anyone
holding a pack recomputes their chain hashes from the pack alone."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
import pytest

from services.compliance.pack import (
    NewPack,
    PackPayload,
    PackSnapshot,
    audit_head,
    chain_time,
    pack_audit_record,
    payload_bytes,
    report_of,
)
from services.compliance.signing import PACK_FORMAT
from shared.audit import GENESIS_HASH, AuditRecord, next_record
from shared.canonical import canonical_json
from shared.contracts.compliance import BAS_HISTORY_CYCLES
from shared.contracts.core import ReportInputs
from shared.errors import ApiError
from shared.validation import validate

ORG = uuid.uuid4()
NOW = datetime(2026, 11, 28, 2, 0, 0, tzinfo=UTC)
TAX = {"required": "1000.00", "secured": "250.50", "shortfall": "749.50", "status": "BLOCKED"}


def cycle(index: int) -> dict[str, Any]:
    start = date(2026, 10, 1) - timedelta(days=92 * index)
    return {
        "id": str(uuid.uuid4()),
        "period": f"P{index}",
        "period_start": start.isoformat(),
        "period_end": (start + timedelta(days=89)).isoformat(),
        "due_date": (start + timedelta(days=118)).isoformat(),
        "status": "BLOCKED" if index == 0 else "LODGED",
        "current": index == 0,
        "lodged_at": None if index == 0 else NOW.isoformat(),
        "lodged_on_time": None if index == 0 else True,
        "lodgement_reference": None if index == 0 else f"REF-{index}",
    }


def inputs(cycles: int = 3) -> ReportInputs:
    return ReportInputs.model_validate(
        {
            "org_id": str(ORG),
            "generated_at": NOW.isoformat(),
            "cycles": [cycle(i) for i in range(cycles)],
            "payment_plans": [],
            "alerts": {
                "open_high_count": 0,
                "open_total": 1,
                "open_by_severity": {"HIGH": 0, "MEDIUM": 0, "LOW": 1},
                "open_high": [],
                "resolved_this_quarter": 2,
                "quarter_start": "2026-10-01",
            },
            "obligations": {
                "cycle_id": str(uuid.uuid4()),
                "period": "2026-Q4 (Oct-Dec)",
                "paygw": TAX,
                "gst": {**TAX, "required": "0.00", "shortfall": "0.00", "status": "READY"},
                "total_shortfall": "749.50",
                "status": "BLOCKED",
                "blockers": ["PAYGW short by $749.50"],
                "next_bas_due": "2027-02-28",
            },
            "designated_totals": {"paygw": "250.50", "gst": "0.00"},
        }
    )


def test_the_report_is_cores_inputs_as_they_came() -> None:
    given = inputs()
    report = report_of(given, NOW)
    assert (report.org_id, report.generated_at) == (ORG, NOW)
    assert report.bas_history == given.cycles
    assert report.obligations == given.obligations
    assert report.next_bas_due == date(2027, 2, 28)
    document = orjson.loads(report.model_dump_json())
    assert document["designated_totals"] == {"paygw": "250.50", "gst": "0.00"}  # money stays 2-place strings
    assert document["obligations"]["paygw"] == TAX
    assert len(report_of(inputs(BAS_HISTORY_CYCLES + 2), NOW).bas_history) == BAS_HISTORY_CYCLES


@pytest.mark.parametrize("tag", ["a", "x" * 100, "Q3 review — café ✓", "\U0001f469\u200d\U0001f4bb team"])
def test_good_tags(tag: str) -> None:
    assert validate(NewPack, {"tag": tag}).tag == tag


@pytest.mark.parametrize(
    "body",
    [
        {"tag": ""},
        {"tag": "x" * 101},
        {"tag": "a\nb"},
        {"tag": "a\tb"},
        {"tag": "\x1b[2J"},
        {"tag": "del\x7f"},
        {"tag": "nel\x85"},
        {"tag": "line\u2028separator"},
        {"tag": "evil\u202etxt.exe"},
        {"tag": "isolate\u2066x\u2069"},
        {"tag": "   "},
        {"tag": "\u00a0"},
        {"tag": "\u200b"},
        {"tag": " \u200b\u00a0\u3000\ufeff "},
        {"tag": 7},
        {"tag": True},
        {"tag": ["a"]},
        {"tag": "ok", "other": 1},
    ],
)
def test_bad_bodies_are_400_naming_the_field(body: dict[str, Any]) -> None:
    with pytest.raises(ApiError) as raised:
        validate(NewPack, body)
    assert raised.value.code == "invalid_body"
    assert [error.path for error in raised.value.errors] == ["other" if "other" in body else "tag"]


def chain(length: int) -> list[AuditRecord]:
    records: list[AuditRecord] = []
    for index in range(length):
        records.append(
            next_record(
                records[-1] if records else None,
                ORG,
                NOW + timedelta(seconds=index, microseconds=0 if index % 2 else 123),
                "user:" + str(uuid.uuid4()),
                "bank_line.create",
                f"bank_line:{index}",
                None,
                {"amount": "12.50", "n": index},
            )
        )
    return records


def test_the_audit_head_is_the_newest_record_or_genesis() -> None:
    assert audit_head([]).model_dump() == {"seq": 0, "hash": GENESIS_HASH}
    newest_first = list(reversed(chain(3)))
    assert audit_head(newest_first).model_dump() == {"seq": 3, "hash": newest_first[0].hash}


def test_audit_rows_in_a_pack_rehash_to_their_chain_hashes() -> None:
    for record in chain(4):
        row = pack_audit_record(record).model_dump(mode="json")
        hashed = {name: value for name, value in row.items() if name != "hash"}
        recomputed = hashlib.sha256(bytes.fromhex(row["prev_hash"]) + canonical_json(hashed)).hexdigest()
        assert recomputed == row["hash"] == record.hash
    assert chain_time(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05.000000Z"


def test_the_payload_is_one_canonical_document() -> None:
    records = list(reversed(chain(2)))
    payload = PackPayload(
        id=uuid.uuid4(),
        org_id=ORG,
        created_at=NOW,
        created_by="user:x",
        tag="Q4",
        audit_head=audit_head(records),
        report=report_of(inputs(), NOW),
        obligations=inputs().obligations,
        alerts=[],
        audit=[pack_audit_record(record) for record in records],
        snapshots=[PackSnapshot(id=uuid.uuid4(), taken_at=NOW, taken_by="user:x", body={"alerts": {"open": 1}})],
    )
    encoded = payload_bytes(payload)
    document = orjson.loads(encoded)
    assert encoded == canonical_json(document)  # already canonical: keys sorted, no whitespace
    assert encoded == payload_bytes(PackPayload.model_validate(document))  # and stable through a round trip
    assert (document["format"], document["id"], document["org_id"]) == (PACK_FORMAT, str(payload.id), str(ORG))
    assert document["audit_head"] == {"seq": 2, "hash": records[0].hash}
    assert document["report"]["obligations"]["total_shortfall"] == "749.50"
    assert b" " not in encoded.replace(b"PAYGW short by $749.50", b"").replace(b"2026-Q4 (Oct-Dec)", b"")
