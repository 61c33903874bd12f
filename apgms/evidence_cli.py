"""`apgms evidence ...`: checking an exported evidence pack offline, and rotating the key that signs packs.

`verify FILE --keys URL_OR_FILE` needs nothing but the file and the published keys (no database, no login): it
re-hashes the payload, checks the key id is published, the Ed25519 signature over the digest, and that the payload
holds every field the envelope shows (format, id, org, creation time, author, tag: `signing.pack_fields`), so a
hand-edited envelope is caught (`services.compliance.signing.verify`). What it prints of the pack is read from the
payload, the signed document, not from the envelope beside it. Exit 0 when every check holds, 1 naming the first
that does not (and the others), or why the file or the keys could not be read.

A backup file also records the JWKS as it was when it was taken. Checking a file against keys it carries itself
proves only that the file is whole: anyone can sign a forgery with a key of their own and record that key beside
it. So the recorded keys are used only when asked for (`--recorded-keys`), and the verdict then says that this is
not proof of who signed it; without `--keys` or that flag, the command exits 1 naming both.
"""

from __future__ import annotations

import asyncio
import binascii
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.table import Table
from rich.text import Text

from apgms.backup import MAX_EXPORT_BYTES
from apgms.common import command_environ, console, fail, with_connection
from apgms.evidence_files import EvidenceFile, EvidenceFileError, parse_evidence_file, printable
from apgms.http_fetch import MAX_DOCUMENT_BYTES, FetchError, fetch_json
from services.compliance.config import SERVICE_NAME
from services.compliance.keys import rotate
from services.compliance.signing import (
    CHECK_PAYLOAD,
    Check,
    InvalidKey,
    Verification,
    jwks_keys,
    pack_fields,
    verify,
)
from shared.config import ConfigError, load_settings
from shared.crypto import SecretBox

__all__ = ["evidence_app"]

evidence_app = typer.Typer(no_args_is_help=True, help="Evidence packs: offline verification and the signing key.")

KEYS_PATH = "/compliance/.well-known/evidence-keys.json"
# A JWKS holds a few hundred bytes per key: this is thousands of keys.
MAX_JWKS_BYTES = 1024 * 1024
# An export is one pack (a few hundred kB); a backup file also holds core's export (at most MAX_EXPORT_BYTES as the
# backup command writes it) and three documents of at most MAX_DOCUMENT_BYTES each. A file past this is not one of
# ours; one within it is read whole (a backup of the largest org takes as much memory to verify).
MAX_EVIDENCE_FILE_BYTES = MAX_EXPORT_BYTES + 4 * MAX_DOCUMENT_BYTES
JWKS_FETCH_TIMEOUT_S = 15.0
RECORDED_KEYS_NOTE = (
    "recorded in the file at backup time (NOT the service's published keys: pass --keys to check who signed it)"
)


@dataclass(frozen=True)
class Keys:
    """The public keys to verify with, and where they came from (said in the output)."""

    keys: dict[str, Ed25519PublicKey]
    source: str


def read_file(path: Path, what: str, limit: int) -> bytes:
    """The file's bytes; exit 1 when it cannot be read or holds more than `limit` bytes (checked before reading,
    and while reading, in case it grows)."""
    try:
        if path.stat().st_size > limit:
            fail(f"{what} {printable(path)} is larger than the {limit:,} bytes allowed for it")
        with path.open("rb") as file:
            data = file.read(limit + 1)
    except OSError as error:
        fail(f"cannot read {what} {printable(path)}: {printable(error.strerror or error)}")
    if len(data) > limit:
        fail(f"{what} {printable(path)} is larger than the {limit:,} bytes allowed for it")
    return data


def keys_of(document: Any, source: str) -> Keys:
    try:
        return Keys(jwks_keys(document), source)
    except InvalidKey as error:
        fail(f"the keys from {printable(source)} are not usable: {printable(error)}")


def published_keys(location: str) -> Keys:
    """The JWKS at an http(s) URL (with a deadline and a size bound) or in a file."""
    if location.startswith(("http://", "https://")):
        try:
            document = asyncio.run(fetch_json(location, limit=MAX_JWKS_BYTES, timeout_s=JWKS_FETCH_TIMEOUT_S))
        except FetchError as error:
            fail(f"cannot fetch the evidence keys: {error}")
        return keys_of(document, location)
    data = read_file(Path(location), "the keys file", MAX_JWKS_BYTES)
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        fail(f"the keys file {location} is not JSON (expected a JWKS such as {KEYS_PATH} answers)")
    return keys_of(document, f"the file {location}")


KEYS_HINT = (
    f"the published keys, the URL <base URL>{KEYS_PATH} (e.g. http://localhost:3000{KEYS_PATH}) or a file holding "
    "that JWKS"
)


def keys_for(pack: EvidenceFile, location: str | None, recorded: bool) -> Keys:
    """The keys to verify with: the published ones (`--keys`), or a backup file's own (`--recorded-keys`)."""
    if location is not None and recorded:
        fail("give either --keys or --recorded-keys, not both")
    if location is not None:
        return published_keys(location)
    if pack.recorded_keys is None:
        fail(f"this is an export, which does not hold the keys: pass --keys with {KEYS_HINT}")
    if not recorded:
        fail(
            f"pass --keys with {KEYS_HINT} to check who signed this pack; or --recorded-keys to check it only "
            "against the keys recorded in the backup file itself, which proves the file is whole, not who signed it"
        )
    return keys_of(pack.recorded_keys, RECORDED_KEYS_NOTE)


def verification_of(pack: EvidenceFile, keys: Keys) -> Verification:
    export = pack.export
    try:
        payload = export.payload()
    except (binascii.Error, ValueError):
        return Verification((Check(CHECK_PAYLOAD, False, "payload_base64 is not standard base64"),))
    return verify(payload, export.sha256, export.signature, export.key_id, keys.keys, expect=pack_fields(export))


def signed_fields(pack: EvidenceFile) -> dict[str, Any]:
    """The pack's id, org, creation time, author and tag as its payload (the signed document) holds them; the
    envelope's where the payload does not parse (verification then fails anyway)."""
    export = pack.export
    shown: dict[str, Any] = {name: getattr(export, name) for name in ("id", "org_id", "created_by", "tag")}
    shown["created_at"] = export.created_at.isoformat()
    try:
        document = orjson.loads(export.payload())
    except (binascii.Error, ValueError):
        return shown
    if isinstance(document, dict):
        shown.update({name: document[name] for name in shown if name in document})
    return shown


def checks_table(verification: Verification) -> Table:
    table = Table(title="Checks")
    table.add_column("Check", no_wrap=True)
    table.add_column("Result", no_wrap=True)
    table.add_column("Reason")
    for check in verification.checks:
        reason = Text(printable(check.reason or ""))  # a value from the file: no markup, no control characters
        table.add_row(check.name, "[green]ok[/]" if check.ok else "[red]FAILED[/]", reason)
    return table


@evidence_app.command("verify")
def evidence_verify(
    file: Annotated[
        Path,
        typer.Argument(help="An export (GET /compliance/evidence/{id}) or a file of `apgms backup evidence-pack`."),
    ],
    keys: Annotated[
        str | None,
        typer.Option(
            "--keys",
            help=f"The published keys: a URL such as http://localhost:3000{KEYS_PATH}, or a file holding that JWKS.",
        ),
    ] = None,
    recorded_keys: Annotated[
        bool,
        typer.Option(
            "--recorded-keys",
            help="A backup file only: check against the keys recorded in the file itself. That proves the file is "
            "whole, NOT who signed it (a forger records their own key); use --keys for that.",
        ),
    ] = False,
) -> None:
    """Verify an evidence pack offline against the published keys: its sha256, key, Ed25519 signature and payload;
    exit 1 names what fails."""
    try:
        pack = parse_evidence_file(read_file(file, "the file", MAX_EVIDENCE_FILE_BYTES))
    except EvidenceFileError as error:
        fail(f"{printable(file)}: {printable(error)}")
    used = keys_for(pack, keys, recorded_keys)
    export = pack.export
    signed = signed_fields(pack)
    # Every value below comes from the file: printed escaped and without markup (`printable`).
    console.print(f"pack     {printable(signed['id'])}", markup=False)
    console.print(f"org      {printable(signed['org_id'])}", markup=False)
    console.print(f"created  {printable(signed['created_at'])} by {printable(signed['created_by'])}", markup=False)
    console.print(f"tag      {'(none)' if signed['tag'] is None else printable(signed['tag'])}", markup=False)
    console.print(f"sha256   {printable(export.sha256)}", markup=False)
    console.print(f"key id   {printable(export.key_id)}", markup=False)
    console.print(f"keys     {printable(used.source)}", markup=False, soft_wrap=True)
    verification = verification_of(pack, used)
    console.print(checks_table(verification))
    failed = verification.failed
    if failed is not None:
        others = [check.name for check in verification.checks if not check.ok and check is not failed]
        also = f" (also failed: {', '.join(others)})" if others else ""
        fail(f"the evidence pack does NOT verify: check {failed.name} failed: {printable(failed.reason)}{also}")
    if recorded_keys:
        console.print(
            "The file is whole: every check holds against the keys recorded in it. This does NOT prove who signed "
            "it (anyone can record a key of their own): run with --keys and the published keys for that.",
            soft_wrap=True,
        )
        return
    console.print("The evidence pack verifies: every check holds.")


@evidence_app.command("rotate-key")
def evidence_rotate_key() -> None:
    """Retire the active evidence signing key and sign with a new one from now on; retired keys stay published,
    so packs signed before keep verifying."""
    environ = command_environ(master_key=True)
    try:
        settings = load_settings(SERVICE_NAME, environ, master_key_required=True, service_client=False)
    except ConfigError as error:
        fail(str(error))
    box = SecretBox(settings.require_master_key())
    old, new = with_connection(settings, lambda conn: rotate(conn, box))
    retired = (
        f"Retired key {old}; it stays published, so packs it signed keep verifying."
        if old
        else ("There was no active key.")
    )
    console.print(f"{retired} New evidence signing key: {new}", soft_wrap=True)
    console.print(
        "The running compliance service signs with the new key within a few seconds (it re-reads its keys).",
        soft_wrap=True,
    )
