"""`apgms smoke ...`: end-to-end checks of a running stack through its public URL, as the runbook's smoke steps.

    apgms smoke regulator --base-url URL --access-code CODE --org ID

checks `GET /regulator/health` (no login), logs in (`POST /regulator/login`), reads every regulator view (report,
alerts, snapshots, bank-line summary, evidence packs and the newest pack with its verification), logs out and
checks the session is refused afterwards. Each step prints one `[ok] <step>: <figure>` line; the first failure
prints `[fail] <step>: <reason>` and exits 1 (after ending the session if one was opened). Every call has a
deadline (SMOKE_CALL_TIMEOUT_S) and a size bound; an unreachable URL is a `[fail]` line, never a traceback. The
access code may come from APGMS_REGULATOR_ACCESS_CODE instead of the command line (which other users of the host
can see in the process list).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Mapping
from typing import Annotated, Any, NoReturn, TypeVar

import orjson
import typer
from pydantic import BaseModel, ValidationError

from apgms.common import console
from apgms.http_fetch import (
    MAX_DOCUMENT_BYTES,
    TRANSPORT_ERRORS,
    FetchError,
    client_session,
    deadline,
    problem_detail,
    read_bounded,
    transport_failure,
)
from apgms.load import load
from services.compliance.evidence import PackPage
from services.regulator.sessions import LoginResponse
from shared.contracts.compliance import PackItem, Report, SnapshotPage
from shared.contracts.core import AlertPage

__all__ = [
    "SMOKE_CALL_TIMEOUT_S",
    "SmokeFailure",
    "alerts_line",
    "evidence_line",
    "report_line",
    "run_regulator_smoke",
    "smoke_app",
    "snapshots_line",
    "summary_line",
]

# A read through the proxy answers in well under a second; fifteen is a stack in trouble, not a slow one.
SMOKE_CALL_TIMEOUT_S = 15.0
# The alerts line counts open ones from one page of this many (a busier org shows "200+").
ALERT_PAGE = 200
DEFAULT_BASE_URL = "http://localhost:3000"

M = TypeVar("M", bound=BaseModel)

smoke_app = typer.Typer(help="End-to-end checks of a running stack (the runbook's smoke steps).", no_args_is_help=True)


class SmokeFailure(Exception):
    """A step that did not give the expected answer; `step` and `reason` make the `[fail]` line."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason


class SummaryFigures(BaseModel):
    """What the smoke line shows of `GET /regulator/bank-lines/summary`."""

    count: int
    months: list[dict[str, Any]] | None


def report_line(report: Report) -> str:
    period = report.obligations.period.split(" ")[0]
    high = report.alerts.open_high_count
    return f"BAS {period} {report.obligations.status}, {high} open HIGH alert{'' if high == 1 else 's'}"


def alerts_line(page: AlertPage) -> str:
    more = "+" if page.next_cursor else ""
    high = sum(1 for alert in page.items if alert.severity == "HIGH")
    return f"{len(page.items)}{more} open, {high}{more} HIGH"


def snapshots_line(page: SnapshotPage) -> str:
    if not page.items:
        return "none taken yet"
    more = "+" if page.next_cursor else ""
    return f"{len(page.items)}{more}, newest taken {page.items[0].taken_at:%Y-%m-%d %H:%M}Z"


def summary_line(summary: SummaryFigures) -> str:
    months = len(summary.months or [])
    return f"{months} month{'' if months == 1 else 's'}, {summary.count} line{'' if summary.count == 1 else 's'}"


def evidence_line(page: PackPage, newest: PackItem | None) -> str:
    more = "+" if page.next_cursor else ""
    count = f"{len(page.items)}{more} pack{'' if len(page.items) == 1 and not more else 's'}"
    if newest is None:
        return count
    return f"{count}, newest verified"


class Api:
    """Calls of one smoke run: JSON in and out, a deadline and a size bound each, failures as SmokeFailure."""

    def __init__(self, http: Any, base_url: str) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.token: str | None = None

    async def raw(
        self,
        step: str,
        method: str,
        path: str,
        *,
        expect: int = 200,
        json: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> bytes:
        """The body of one call answered `expect`; SmokeFailure naming the step otherwise."""
        url = f"{self.base_url}{path}"
        headers = {"accept": "application/json"}
        if self.token is not None:
            headers["authorization"] = f"Bearer {self.token}"
        try:
            async with self.http.request(
                method, url, headers=headers, json=json, params=params, timeout=deadline(SMOKE_CALL_TIMEOUT_S)
            ) as response:
                body: bytes = await read_bounded(response, MAX_DOCUMENT_BYTES, url)
                status = response.status
        except FetchError as error:
            raise SmokeFailure(step, str(error)) from None
        except TRANSPORT_ERRORS as error:
            raise SmokeFailure(step, str(transport_failure(url, error))) from None
        if status != expect:
            code, detail = problem_detail(body)
            said = ": ".join(part for part in (code, detail) if part)
            raise SmokeFailure(step, f"{method} {path} answered {status}" + (f" ({said})" if said else ""))
        return body

    async def call(
        self,
        step: str,
        method: str,
        path: str,
        *,
        expect: int = 200,
        json: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """`raw`, its body parsed as JSON (None for an empty one)."""
        body = await self.raw(step, method, path, expect=expect, json=json, params=params)
        if not body:
            return None
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise SmokeFailure(step, f"the answer of {method} {path} is not JSON") from None

    async def read(self, step: str, path: str, model: type[M], params: Mapping[str, str] | None = None) -> M:
        return parsed(step, model, await self.call(step, "GET", path, params=params))


def parsed(step: str, model: type[M], document: Any) -> M:
    try:
        return model.model_validate(document)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "$"
        raise SmokeFailure(step, f"the answer is not a {model.__name__} ({where}: {first['msg']})") from None


async def _reads(api: Api, say: Callable[[str, str], None]) -> None:
    say("report", report_line(await api.read("report", "/regulator/compliance/report", Report)))
    alerts = await api.read("alerts", "/regulator/alerts", AlertPage, {"status": "open", "limit": str(ALERT_PAGE)})
    say("alerts", alerts_line(alerts))
    say("snapshots", snapshots_line(await api.read("snapshots", "/regulator/monitoring/snapshots", SnapshotPage)))
    summary = await api.read("bank-lines summary", "/regulator/bank-lines/summary", SummaryFigures)
    say("bank-lines summary", summary_line(summary))
    packs = await api.read("evidence", "/regulator/evidence", PackPage)
    newest = None
    if packs.items:
        newest = await api.read("evidence", f"/regulator/evidence/{packs.items[0].id}", PackItem)
        if not newest.verification.valid:
            failed = newest.verification.failed or "a check"
            raise SmokeFailure("evidence", f"the newest pack {newest.export.id} fails verification ({failed})")
    say("evidence", evidence_line(packs, newest))


async def run_regulator_smoke(
    base_url: str, access_code: str, org_id: uuid.UUID, say: Callable[[str, str], None]
) -> None:
    """The regulator smoke run; `say(step, figure)` for each step that passed, SmokeFailure at the first that did
    not (the session, once opened, is ended either way)."""
    async with client_session() as http:
        api = Api(http, base_url)
        await api.call("health", "GET", "/regulator/health")
        say("health", "session guard and login throttle pass")
        login = parsed(
            "login",
            LoginResponse,
            await api.call(
                "login", "POST", "/regulator/login", json={"access_code": access_code, "org_id": str(org_id)}
            ),
        )
        api.token = login.token
        say("login", f"{login.session.credential} for org {login.session.org_id}")
        try:
            await _reads(api, say)
        except SmokeFailure:
            # The first failure is the one to report; a session that cannot be ended expires by itself.
            with contextlib.suppress(SmokeFailure):
                await api.call("logout", "POST", "/regulator/logout", expect=204)
            raise
        await api.call("logout", "POST", "/regulator/logout", expect=204)
        await api.call("logout", "GET", "/regulator/compliance/report", expect=401)
        say("logout", "the session is refused afterwards")


def _failed(failure: SmokeFailure) -> NoReturn:
    console.print(f"[fail] {failure.step}: {failure.reason}", markup=False, soft_wrap=True)
    raise typer.Exit(1)


@smoke_app.command("regulator")
def regulator(
    access_code: Annotated[
        str, typer.Option(envvar="APGMS_REGULATOR_ACCESS_CODE", help="A regulator access code (rgc.<lookup>.<secret>)")
    ],
    org: Annotated[uuid.UUID, typer.Option(help="The org to log in for (one of the credential's)")],
    base_url: Annotated[str, typer.Option(help="The stack's public URL (the proxy)")] = DEFAULT_BASE_URL,
) -> None:
    """Log in as a regulator, read every regulator view and log out: one "ok" line a step, exit 1 at the first
    failure."""

    def say(step: str, figure: str) -> None:
        console.print(f"[ok] {step}: {figure}", markup=False, soft_wrap=True)

    try:
        asyncio.run(run_regulator_smoke(base_url, access_code, org, say))
    except SmokeFailure as failure:
        _failed(failure)


smoke_app.command("load")(load)
import apgms.checklist  # noqa: E402,F401  (registers `apgms smoke checklist` on smoke_app; it uses this module)
