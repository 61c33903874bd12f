"""`apgms evidence verify` on packs signed here (a generated Ed25519 key, a JWKS file or URL), and
`apgms evidence rotate-key` against a real database."""

from __future__ import annotations

import base64
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from cli_support import run_cli
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from apgms.cli import app
from apgms.devservers import free_port
from apgms.evidence_files import BACKUP_FORMAT
from services.compliance.signing import PACK_FORMAT, public_jwk, sign
from shared.canonical import canonical_json
from shared.config import new_master_key
from shared.contracts.compliance import EXPORT_FORMAT

pytestmark = pytest.mark.usefixtures("no_project_dotenv")

ORG = uuid.UUID("2f4d9c1a-8b3e-4f6a-9d2c-5e7b1a0c3f88")
PACK = uuid.UUID("9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d")
KID = "ev-20261128-test0001"
KEY = Ed25519PrivateKey.generate()


def jwks(*keys: tuple[Ed25519PrivateKey, str]) -> dict[str, Any]:
    return {"keys": [public_jwk(key.public_key(), kid) for key, kid in keys]}


def export(
    *, key: Ed25519PrivateKey = KEY, kid: str = KID, flip: bool = False, pack_id: uuid.UUID = PACK
) -> dict[str, Any]:
    """An export envelope of a pack signed with `key` as `kid`; `flip`: one byte of the report's date changed after
    signing (the payload stays JSON naming the pack, so only the hash and the signature can catch it)."""
    payload = canonical_json(
        {
            "format": PACK_FORMAT,
            "id": str(pack_id),
            "org_id": str(ORG),
            "created_at": "2026-11-28T03:15:00.000000Z",
            "created_by": "user:admin",
            "tag": None,
            "report": {"next_bas_due": "2026-12-28"},
        }
    )
    signed = sign(payload, key, kid)
    stored = bytearray(payload)
    if flip:
        stored[payload.index(b"2026-12-28")] ^= 0x01
    return {
        "format": EXPORT_FORMAT,
        "id": str(PACK),
        "org_id": str(ORG),
        "created_at": "2026-11-28T03:15:00+00:00",
        "created_by": "user:admin",
        "tag": None,
        "sha256": signed.sha256,
        "signature": signed.signature,
        "key_id": signed.key_id,
        "algorithm": "Ed25519",
        "payload_base64": base64.b64encode(bytes(stored)).decode(),
    }


def write(path: Path, document: Any) -> Path:
    path.write_bytes(orjson.dumps(document))
    return path


def verify(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["evidence", "verify", *args], env={"APGMS_ENV": "test"})
    assert "Traceback" not in result.stdout + result.stderr
    return result.exit_code, result.stdout, " ".join(result.stderr.split())


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    return write(tmp_path / "keys.json", jwks((KEY, KID)))


def test_a_valid_export_verifies_against_a_keys_file(tmp_path: Path, keys_file: Path) -> None:
    code, out, err = verify(str(write(tmp_path / "pack.json", export())), "--keys", str(keys_file))
    assert code == 0, err
    assert "The evidence pack verifies: every check holds." in out
    for text in (str(PACK), str(ORG), KID, f"the file {keys_file}"):
        assert text in out
    assert out.count(" ok ") == 4  # sha256, key, signature, payload


def test_each_kind_of_tampering_fails_with_exit_1_naming_the_check(tmp_path: Path, keys_file: Path) -> None:
    other = Ed25519PrivateKey.generate()
    cases = {
        "flipped": (export(flip=True), "check sha256 failed: the payload does not hash to the recorded sha256"),
        "other key": (export(key=other), "check signature failed: the signature does not verify"),
        "unknown kid": (export(kid="ev-unknown"), "check key failed: key 'ev-unknown' is not among the published"),
        "moved": (export(pack_id=uuid.uuid4()), f"check payload failed: the payload's id is not {PACK}"),
    }
    for name, (document, reason) in cases.items():
        code, out, err = verify(str(write(tmp_path / f"{name}.json", document)), "--keys", str(keys_file))
        assert code == 1, name
        assert "FAILED" in out, name
        assert "verifies: every check holds" not in out, name
        assert err.startswith("error: the evidence pack does NOT verify:"), (name, err)
        assert reason in err, (name, err)
    # A flipped byte breaks the hash and with it the signature over it: both are named, the hash first.
    _, _, err = verify(str(tmp_path / "flipped.json"), "--keys", str(keys_file))
    assert err.endswith("(also failed: signature)")


def test_an_envelope_field_edited_after_signing_fails_the_payload_check_naming_it(
    tmp_path: Path, keys_file: Path
) -> None:
    """Only the payload is signed: a tag, author or time edited in the envelope beside it is caught, and what is
    printed of the pack is the payload's (the signed values), never the edited envelope's."""
    edits = {
        "tag": ({"tag": "EDITED"}, "the payload's tag is not EDITED"),
        "created_by": ({"created_by": "user:evil"}, "the payload's created_by is not user:evil"),
        "created_at": ({"created_at": "2001-01-01T00:00:00+00:00"}, "the payload's created_at is not 2001-01-01"),
        "id": ({"id": str(uuid.uuid4())}, "the payload's id is not"),
    }
    for name, (edit, reason) in edits.items():
        code, out, err = verify(str(write(tmp_path / f"{name}.json", {**export(), **edit})), "--keys", str(keys_file))
        assert code == 1, name
        assert f"check payload failed: {reason}" in err, (name, err)
        assert "created  2026-11-28T03:15:00.000000Z by user:admin" in out, name
        assert "tag      (none)" in out, name
        assert f"pack     {PACK}" in out, name
    # The same time in another spelling is the same instant: it verifies.
    code, out, err = verify(
        str(write(tmp_path / "z.json", {**export(), "created_at": "2026-11-28T14:15:00+11:00"})),
        "--keys",
        str(keys_file),
    )
    assert code == 0, err
    assert "tag      (none)" in out


def test_files_that_are_not_packs_fail_with_a_clear_message(tmp_path: Path, keys_file: Path) -> None:
    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(b"\x00\x01 not json")
    not_base64 = {**export(), "payload_base64": "***"}
    cases = {
        garbage: "is not JSON",
        write(tmp_path / "list.json", [1, 2]): "is not a JSON object",
        write(tmp_path / "other.json", {"format": "something"}): "is not an evidence pack: its format is 'something'",
        write(tmp_path / "short.json", {"format": EXPORT_FORMAT, "id": str(PACK)}): "is not a valid",
        tmp_path / "missing.json": "cannot read the file",
    }
    for path, message in cases.items():
        code, out, err = verify(str(path), "--keys", str(keys_file))
        assert (code, out) == (1, ""), path
        assert err.startswith("error: "), err
        assert message in err, (path, err)
    code, out, err = verify(str(write(tmp_path / "b64.json", not_base64)), "--keys", str(keys_file))
    assert code == 1
    assert "check payload failed: payload_base64 is not standard base64" in err
    forger = Ed25519PrivateKey.generate()
    doubled = write(tmp_path / "doubled.json", {"keys": [*jwks((KEY, KID))["keys"], *jwks((forger, KID))["keys"]]})
    code, out, err = verify(str(write(tmp_path / "forged.json", export(key=forger))), "--keys", str(doubled))
    assert (code, out) == (1, "")
    assert f"the keys from the file {doubled} are not usable: duplicate kid '{KID}'" in err
    bad_keys = write(tmp_path / "bad-keys.json", {"not": "a jwks"})
    code, _, err = verify(str(write(tmp_path / "pack.json", export())), "--keys", str(bad_keys))
    assert code == 1
    assert "not a JWKS" in err


def test_an_export_needs_keys_and_a_backup_file_uses_its_recorded_ones(tmp_path: Path, keys_file: Path) -> None:
    code, out, err = verify(str(write(tmp_path / "pack.json", export())))
    assert (code, out) == (1, "")
    assert "pass --keys with the published keys" in err
    backup = {
        "format": BACKUP_FORMAT,
        "org_id": str(ORG),
        "taken_at": datetime.now(UTC).isoformat(),
        "base_url": "http://localhost:3000",
        "export": {"org_id": str(ORG)},
        "report": {},
        "evidence": export(),
        "evidence_keys": jwks((KEY, KID)),
    }
    path = write(tmp_path / "backup.json", backup)
    # Keys recorded in the file prove only that it is whole: never used unless asked for, and never "verifies".
    code, out, err = verify(str(path))
    assert (code, out) == (1, "")
    assert "pass --keys with the published keys" in err and "or --recorded-keys" in err
    assert "proves the file is whole, not who signed it" in err
    code, out, err = verify(str(path), "--recorded-keys")
    assert code == 0, err
    flat = " ".join(out.split())
    assert "recorded in the file at backup time (NOT the service's published keys: pass --keys" in flat
    assert "The file is whole: every check holds against the keys recorded in it. This does NOT prove who" in flat
    assert "The evidence pack verifies" not in flat
    code, _, err = verify(str(path), "--recorded-keys", "--keys", str(keys_file))
    assert code == 1 and "either --keys or --recorded-keys, not both" in err
    code, _, err = verify(str(write(tmp_path / "export.json", export())), "--recorded-keys")
    assert code == 1 and "this is an export, which does not hold the keys" in err
    # A forgery signed with a key of its own, recorded beside it: exit 1 without the flag, fails the published keys.
    forger = Ed25519PrivateKey.generate()
    forged = write(
        tmp_path / "forged.json",
        {**backup, "evidence": export(key=forger, kid="ev-self"), "evidence_keys": jwks((forger, "ev-self"))},
    )
    assert verify(str(forged))[0] == 1
    code, _, err = verify(str(forged), "--keys", str(keys_file))
    assert code == 1 and "check key failed: key 'ev-self' is not among the published" in err
    # --keys wins over the recorded keys: keys that do not hold the pack's kid fail it.
    other = write(tmp_path / "other-keys.json", jwks((Ed25519PrivateKey.generate(), "ev-other")))
    code, _, err = verify(str(path), "--keys", str(other))
    assert code == 1
    assert "check key failed" in err
    # A backup whose pack is of another org than the backup says is refused.
    code, _, err = verify(
        str(write(tmp_path / "mixed.json", {**backup, "org_id": str(uuid.uuid4())})), "--recorded-keys"
    )
    assert code == 1
    assert "but its pack is of org" in err


@pytest.fixture
def jwks_server() -> Iterator[str]:
    """A local http server answering the JWKS at /keys.json and 404 elsewhere; yields its base URL."""
    body = orjson.dumps(jwks((KEY, KID)))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path == "/keys.json"
            self.send_response(200 if found else 404)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body) if found else 2))
            self.end_headers()
            self.wfile.write(body if found else b"{}")

        def log_message(self, *_: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_keys_from_a_url_verify_and_an_unreachable_or_missing_url_fails_clearly(
    tmp_path: Path, jwks_server: str
) -> None:
    pack = str(write(tmp_path / "pack.json", export()))
    code, out, err = verify(pack, "--keys", f"{jwks_server}/keys.json")
    assert code == 0, err
    assert f"{jwks_server}/keys.json" in out
    assert "The evidence pack verifies" in out
    unreachable = f"http://127.0.0.1:{free_port()}/keys.json"
    code, out, err = verify(pack, "--keys", unreachable)
    assert (code, out) == (1, "")
    assert err.startswith(f"error: cannot fetch the evidence keys: cannot reach {unreachable}")
    code, out, err = verify(pack, "--keys", f"{jwks_server}/nothing.json")
    assert (code, out) == (1, "")
    assert "answered 404" in err


async def evidence_keys(database_url: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(database_url)
    try:
        return await connection.fetch(
            "SELECT kid, status, retired_at, public_jwk::text AS jwk FROM compliance.evidence_keys ORDER BY created_at"
        )
    finally:
        await connection.close()


async def test_rotate_key_retires_the_active_key_and_both_stay_published(database_url: str) -> None:
    master_key = new_master_key()
    code, out, err = await run_cli(database_url, "evidence", "rotate-key", APGMS_MASTER_KEY=master_key)
    assert code == 0, err
    assert "There was no active key." in out
    (first,) = await evidence_keys(database_url)
    assert (first["status"], first["retired_at"]) == ("active", None)
    code, out, err = await run_cli(database_url, "evidence", "rotate-key", APGMS_MASTER_KEY=master_key)
    assert code == 0, err
    rows = await evidence_keys(database_url)
    assert rows[0]["kid"] == first["kid"]
    assert [row["status"] for row in rows] == ["retired", "active"]
    assert rows[0]["retired_at"] is not None
    flat = " ".join(out.split())
    assert f"Retired key {first['kid']}; it stays published" in flat
    assert f"New evidence signing key: {rows[1]['kid']}" in flat
    assert {orjson.loads(row["jwk"])["kid"] for row in rows} == {rows[0]["kid"], rows[1]["kid"]}
    assert all(orjson.loads(row["jwk"])["crv"] == "Ed25519" for row in rows)


async def test_rotate_key_without_a_database_is_one_clean_error(database_url: str) -> None:
    code, out, err = await run_cli(
        "postgresql://nobody@127.0.0.1:1/apgms", "evidence", "rotate-key", APGMS_MASTER_KEY=new_master_key()
    )
    assert code == 1
    assert err.startswith("error: cannot use the database at postgresql://nobody@127.0.0.1:1/apgms")
    assert "Traceback" not in out + err
