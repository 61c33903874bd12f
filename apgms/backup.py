"""`apgms backup evidence-pack`: the runbook's `backup:evidence-pack`, taken through the API with a user's token.

One run makes five calls to one base URL (the API gateway, which routes /admin to core and /compliance to
compliance), each with a deadline:

    GET  /admin/export/{org}                              core's export of the org (admin, recent MFA step-up)
    GET  /compliance/report                               the compliance report
    POST /compliance/evidence {"tag": "backup"}           a new signed pack (with an Idempotency-Key)
    GET  /compliance/evidence/{id}                        its export envelope (payload, sha256, signature, key id)
    GET  /compliance/.well-known/evidence-keys.json       the published keys, so the file verifies by itself

and writes ONE file, `evidence-pack_<org>_<UTC timestamp>.json` (`apgms.evidence_files`), which
`apgms evidence verify` checks. The export can be large: it is streamed straight into the file, never held in
memory, and bounded by MAX_EXPORT_BYTES. Everything goes to a temporary file in the same directory, renamed into
place only once complete and flushed to disk; any failure removes it, so a file under that name is always whole.
Every failure (401, 403, 404, 5xx, a timeout, an unreachable URL, a cut-off answer, a full disk) is a sentence
saying what to do and exit code 1.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Annotated, Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import typer
from rich.progress import (
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from apgms.common import console, error_console, fail
from apgms.evidence_files import BACKUP_FORMAT, backup_file_name
from apgms.http_fetch import (
    MAX_DOCUMENT_BYTES,
    REQUEST_TIMEOUT_S,
    TRANSPORT_ERRORS,
    FetchError,
    client_session,
    deadline,
    iter_bounded,
    problem_detail,
    read_bounded,
    transport_failure,
)
from shared.context import REQUEST_ID_HEADER
from shared.contracts.compliance import Export

__all__ = ["BACKUP_TAG", "DEFAULT_OUT_DIR", "MAX_EXPORT_BYTES", "backup_app"]

backup_app = typer.Typer(no_args_is_help=True, help="Backups taken through the API.")

DEFAULT_OUT_DIR = Path("artifacts") / "backups"
BACKUP_TAG = "backup"
# An org's export: its bank lines dominate (about 300 bytes each), so this is millions of lines.
MAX_EXPORT_BYTES = 2 * 1024 * 1024 * 1024
# The whole export, however large; a stalled one is given up after READ_IDLE_TIMEOUT_S of silence anyway.
EXPORT_TIMEOUT_S = 30 * 60.0
TEMP_SUFFIX = ".partial"
EVIDENCE_ROLES = "admin, finance or auditor"


@dataclass(frozen=True)
class Target:
    base_url: str
    org: uuid.UUID
    token: str

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass(frozen=True)
class Call:
    """One of the run's calls: what it is (for the progress and the messages), and what its 403 means."""

    method: str
    path: str
    label: str
    forbidden: str
    # What a 404 means; None: the route itself is missing, so the URL is not the gateway's.
    not_found: str | None = None


def step_up_how(base_url: str) -> str:
    return (
        "get one with curl: TOKEN=$(curl -s -X POST -H 'content-type: application/json' "
        f'-d \'{{"email": "<admin email>", "password": "<password>"}}\' {base_url}/auth/login | jq -r .access_token)'
        f", then curl -s -X POST -H \"Authorization: Bearer $TOKEN\" -H 'content-type: application/json' "
        f'-d \'{{"code": "<TOTP code>"}}\' {base_url}/auth/mfa/step-up | jq -r .access_token, and pass that '
        "token as --token (a step-up counts for 10 minutes)"
    )


def status_failure(target: Target, call: Call, status: int, reason: str | None, body: bytes, request_id: str) -> str:
    """The user's sentence for a call answered with a non-2xx status."""
    code, detail = problem_detail(body)
    where = f"{call.method} {target.url(call.path)}"
    said = f": {detail}" if detail else ""
    if status == 401 and code == "mfa_required":
        return f"{call.label} needs a recent MFA step-up ({where} answered 401{said}); {step_up_how(target.base_url)}"
    if status == 401:
        return f"the token was refused: log in again ({where} answered 401{said})"
    if status == 403:
        return f"{call.forbidden} ({where} answered 403{said})"
    if status == 404:
        meaning = call.not_found or (
            f"{call.label} was not found: is --base-url the API gateway (e.g. http://localhost:3000), not one service?"
        )
        return f"{meaning} ({where} answered 404{said})"
    if status >= 500:
        return (
            f"the server failed at {call.label}: {where} answered {status} {reason or ''}{said}; try again later, "
            f"or look up request ID {request_id} in the services' logs"
        )
    return f"{where} answered {status} {reason or ''}{said}"


class Backup:
    """One run's calls over one HTTP session; each failure is a `FetchError` with the user's sentence."""

    def __init__(self, http: aiohttp.ClientSession, target: Target, progress: Progress) -> None:
        self.http = http
        self.target = target
        self.progress = progress

    @contextmanager
    def step(self, call: Call) -> Iterator[TaskID]:
        """A line of the progress display for `call`, ticked when the block ends without an error (the block sets
        the task's `completed` to the bytes it read)."""
        task = self.progress.add_task(call.label, total=None)
        yield task
        size = int(self.progress.tasks[task].completed)
        self.progress.update(task, total=size, description=f"[green]✓[/] {call.label}")
        self.progress.stop_task(task)
        if self.progress.disable:
            error_console.print(f"done: {call.label} ({human_size(size)})", soft_wrap=True)

    async def _json(self, call: Call, path: str, **kwargs: Any) -> Any:
        url = self.target.url(path)
        request_id = str(uuid.uuid4())
        headers = {**self.target.headers, REQUEST_ID_HEADER: request_id, **kwargs.pop("headers", {})}
        with self.step(call) as task:
            try:
                async with self.http.request(
                    call.method, url, headers=headers, timeout=deadline(REQUEST_TIMEOUT_S), **kwargs
                ) as response:
                    body = await read_bounded(response, MAX_DOCUMENT_BYTES, url)
                    status, reason = response.status, response.reason
                    answered_id = response.headers.get(REQUEST_ID_HEADER, request_id)
            except TRANSPORT_ERRORS as error:
                raise transport_failure(url, error) from None
            self.progress.update(task, completed=len(body))
            if not 200 <= status < 300:
                raise FetchError(status_failure(self.target, call, status, reason, body, answered_id))
            try:
                return orjson.loads(body)
            except orjson.JSONDecodeError:
                raise FetchError(f"the answer of {call.method} {url} is not JSON") from None

    async def stream_export(self, out: IO[bytes]) -> int:
        """Core's export of the org written to `out` as it arrives; its size in bytes."""
        path = f"/admin/export/{self.target.org}"
        call = Call(
            "GET",
            path,
            "core's admin export",
            "the admin export needs an admin token with a recent MFA step-up; " + step_up_how(self.target.base_url),
            f"org {self.target.org} was not found: --org must be the token's own org (another org's id is 404 too)",
        )
        url = self.target.url(path)
        request_id = str(uuid.uuid4())
        headers = {**self.target.headers, REQUEST_ID_HEADER: request_id, "Accept": "application/json"}
        with self.step(call) as task:
            try:
                async with self.http.get(url, headers=headers, timeout=deadline(EXPORT_TIMEOUT_S)) as response:
                    if not 200 <= response.status < 300:
                        body = await read_bounded(response, MAX_DOCUMENT_BYTES, url)
                        answered_id = response.headers.get(REQUEST_ID_HEADER, request_id)
                        raise FetchError(
                            status_failure(self.target, call, response.status, response.reason, body, answered_id)
                        )
                    self.progress.update(task, total=response.content_length)
                    size, first, last = 0, b"", b""
                    async for chunk in iter_bounded(response, MAX_EXPORT_BYTES, url):
                        out.write(chunk)
                        size += len(chunk)
                        first = first or chunk.lstrip()[:1]
                        last = chunk.rstrip()[-1:] or last
                        self.progress.update(task, completed=size)
            except TRANSPORT_ERRORS as error:
                raise transport_failure(url, error) from None
        # The export is one JSON object; a cut one (core fails mid-stream) ends without its closing brace.
        if (first, last) != (b"{", b"}"):
            raise FetchError(f"the export from {url} is not a complete JSON object (cut off mid-way?)")
        return size

    async def report(self) -> Any:
        path = "/compliance/report"
        return await self._json(Call("GET", path, "the compliance report", "the report needs a user token"), path)

    async def new_pack(self) -> uuid.UUID:
        path = "/compliance/evidence"
        call = Call("POST", path, "a new evidence pack", f"creating an evidence pack needs the {EVIDENCE_ROLES} role")
        created = await self._json(
            call, path, json={"tag": BACKUP_TAG}, headers={"Idempotency-Key": f"backup-{uuid.uuid4()}"}
        )
        try:
            return uuid.UUID(str(created["id"]))
        except (KeyError, TypeError, ValueError):
            raise FetchError(f"the answer of POST {self.target.url(path)} has no pack id") from None

    async def envelope(self, pack_id: uuid.UUID) -> Any:
        path = f"/compliance/evidence/{pack_id}"
        document = await self._json(Call("GET", path, "the signed pack", "reading the pack was refused"), path)
        try:
            export = Export.model_validate(document)
        except ValueError:
            raise FetchError(f"the answer of GET {self.target.url(path)} is not an evidence pack export") from None
        if export.org_id != self.target.org:
            raise FetchError(f"the pack is of org {export.org_id}, not --org {self.target.org}: use that org's token")
        return document

    async def keys(self) -> Any:
        path = "/compliance/.well-known/evidence-keys.json"
        return await self._json(Call("GET", path, "the published evidence keys", "the keys were refused"), path)


def _json_field(name: str, value: Any) -> bytes:
    return b"," + orjson.dumps(name) + b":" + orjson.dumps(value)


async def take(target: Target, out: IO[bytes], taken_at: datetime, progress: Progress) -> None:
    """Write the backup document to `out`: the header, the export as it streams in, then the rest."""
    header = {
        "format": BACKUP_FORMAT,
        "org_id": str(target.org),
        "taken_at": taken_at.isoformat(),
        "base_url": target.base_url,
    }
    out.write(orjson.dumps(header)[:-1] + b',"export":')
    async with client_session() as http:
        backup = Backup(http, target, progress)
        await backup.stream_export(out)
        out.write(_json_field("report", await backup.report()))
        pack_id = await backup.new_pack()
        out.write(_json_field("evidence", await backup.envelope(pack_id)))
        out.write(_json_field("evidence_keys", await backup.keys()))
    out.write(b"}")


def base_url_of(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        fail(f"--base-url must be an http(s) URL such as http://localhost:3000, not {text!r}")
    return text.rstrip("/")


def temp_file_in(directory: Path, name: str) -> tuple[IO[bytes], Path]:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        descriptor, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=TEMP_SUFFIX, dir=directory)
    except OSError as error:
        fail(f"cannot write to {directory}: {error.strerror or error}")
    return os.fdopen(descriptor, "wb"), Path(temp)


# How many `-2`, `-3`, ... names are tried when backups of one org are taken in the same second.
MAX_NAME_SUFFIX = 1000


def publish(temp: Path, final: Path) -> Path:
    """Give the finished `temp` file the name `final`, never replacing a file already there: a backup of the same
    org taken in the same second gets `<name>-2.json`, then `-3`, ... (a hard link is made only when the name is
    free, so two runs at once cannot take the same one); `temp` is removed. The name it got."""
    for number in range(1, MAX_NAME_SUFFIX + 1):
        name = final if number == 1 else final.with_name(f"{final.stem}-{number}{final.suffix}")
        try:
            os.link(temp, name)
        except FileExistsError:
            continue
        temp.unlink()
        return name
    raise FileExistsError(f"{final} and {MAX_NAME_SUFFIX - 1} numbered names after it are taken")


def progress_display() -> Progress:
    return Progress(
        SpinnerColumn(finished_text=""),
        TextColumn("{task.description}"),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=error_console,
        disable=not error_console.is_terminal,
    )


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KiB", "MiB"):
        if value < 1024 or unit == "MiB":
            return f"{size:,} bytes" if unit == "bytes" else f"{value:,.1f} {unit} ({size:,} bytes)"
        value /= 1024
    return f"{size:,} bytes"


@backup_app.command("evidence-pack")
def evidence_pack(
    base_url: Annotated[str, typer.Option("--base-url", help="The API gateway, e.g. http://localhost:3000.")],
    org: Annotated[uuid.UUID, typer.Option("--org", help="The org to back up (the token's own).")],
    token: Annotated[
        str,
        typer.Option(
            "--token",
            envvar="APGMS_TOKEN",
            help="An admin's access token with a recent MFA step-up (or set APGMS_TOKEN).",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="The directory to write the file to.")] = DEFAULT_OUT_DIR,
) -> None:
    """Back up an org through the API: core's admin export, the compliance report, a new signed evidence pack and
    the published keys, in ONE file that `apgms evidence verify` checks offline."""
    target = Target(base_url_of(base_url), org, token)
    taken_at = datetime.now(UTC).replace(microsecond=0)
    final = out / backup_file_name(org, taken_at)
    file, temp = temp_file_in(out, final.name)
    try:
        with file, progress_display() as progress:
            asyncio.run(take(target, file, taken_at, progress))
            file.flush()
            os.fsync(file.fileno())
        final = publish(temp, final)
    except FetchError as error:
        temp.unlink(missing_ok=True)
        fail(str(error))
    except OSError as error:
        temp.unlink(missing_ok=True)
        fail(f"cannot write the backup to {out}: {error.strerror or error}")
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    error_console.print(f"Evidence pack backup of org {org} taken through {target.base_url}.", soft_wrap=True)
    console.print(f"{final} ({human_size(final.stat().st_size)})", markup=False, soft_wrap=True)
