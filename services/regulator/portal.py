"""The regulator's HTML portal under /regulator/portal: server-rendered pages (Jinja2) that work without JavaScript.

    GET  /                         to the dashboard with a live session, else to the sign-in page (303)
    GET  /login, POST /login       the sign-in form (access code, org id); success sets the session cookie
    POST /logout                   ends the session, clears the cookie, back to the sign-in page
    GET  /dashboard                obligations, BAS status and blockers, next BAS due, open HIGH alerts
    GET  /alerts                   the org's alerts, paged ("next" links), filter links by status and severity
    GET  /bank-lines               bank-line count and totals by month
    GET  /evidence                 the evidence library: each pack's hash and its signature status
    GET  /evidence/{id}            one pack: its fields, every verification check, the download links
    GET  /evidence/{id}/payload    the pack's exact payload bytes (its sha256 is the pack's), as a download
    GET  /evidence/{id}/export     the export envelope (payload in base64, signature, key id), as a download
    GET  /static/...               the stylesheet and icon, cached for a year (their URLs carry a content hash)

Data comes only from `services.regulator.reads` (so every page view is audited like the JSON API's reads) and the
session from `services.regulator.sessions` (the guard's own check). A page without a live session redirects to the
sign-in page (303) instead of answering 401; any other refusal (a pack of another org, an upstream failure) is an
HTML page with the problem's status.

Every POST (login and logout) carries a CSRF token (`services.regulator.csrf`); without a matching one it is a 403
`csrf_failed` page and nothing happens. Every response from here carries a strict CSP (no script at all, styles only
from our own file, so no inline style anywhere), `nosniff`, `Referrer-Policy: same-origin` (see PAGE_HEADERS), and
`no-store` on all but the static files. The session cookie is HttpOnly, SameSite=Strict, Path=/, and Secure with the
`__Host-` prefix outside dev and test (RegulatorSettings.secure_cookies); it lives as long as the session.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import Message

from services.regulator import codes, csrf, reads, sessions
from services.regulator.deps import regulator_deps
from services.regulator.models import RegulatorSession
from shared.context import current_request_id
from shared.contracts.core import AlertQuery
from shared.errors import ERRORS, ApiError, ErrorBoundaryMiddleware
from shared.pagination import PageQuery
from shared.types import ASGIApp, Receive, Scope, Send
from shared.validation import parse_query, path_uuid, read_body

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "EVIDENCE_PAGE_SIZE",
    "PORTAL_PATH",
    "PortalHeaders",
    "routes",
]

PORTAL_PATH = "/regulator/portal"
HERE = Path(__file__).parent
TEMPLATES_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    # Not no-referrer: under it the browser sends `Origin: null` with a form's POST (Fetch, "serializing a request
    # origin"), which the proxy rightly refuses as cross-origin (403 cors_forbidden). same-origin sends no referrer
    # to any other site, and our own origin to ourselves.
    (b"referrer-policy", b"same-origin"),
)
# Static files are named by a hash of their content in their URL (`?v=`), so a year's caching is safe.
STATIC_CACHE_CONTROL = "public, max-age=31536000, immutable"
# The sign-in and sign-out forms are a few short fields; anything larger is not ours.
MAX_FORM_BYTES = 4 * 1024
MAX_FORM_FIELDS = 8
FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"
ALERTS_PAGE_SIZE = 25
# Each pack on a page of the library is verified by compliance in the listing's one read: a page stays small.
EVIDENCE_PAGE_SIZE = 10
SIGN_IN_REFUSED = "The access code or organisation id was not accepted. Check both and try again."
NAV = (
    ("dashboard", "Dashboard", f"{PORTAL_PATH}/dashboard"),
    ("alerts", "Alerts", f"{PORTAL_PATH}/alerts"),
    ("bank-lines", "Bank lines", f"{PORTAL_PATH}/bank-lines"),
    ("evidence", "Evidence", f"{PORTAL_PATH}/evidence"),
)


def _static_versions() -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()[:16] for path in STATIC_DIR.iterdir() if path.is_file()
    }


STATIC_VERSIONS = _static_versions()


def static_url(name: str) -> str:
    return f"{PORTAL_PATH}/static/{name}?v={STATIC_VERSIONS[name]}"


def when(value: datetime | date | None) -> str:
    """A time as a reader wants it: UTC, to the minute; a date as ISO."""
    if value is None:
        return "—"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return value.isoformat()


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(static=static_url, portal=PORTAL_PATH, nav=NAV)
    env.filters["when"] = when
    return env


templates = Jinja2Templates(env=_environment())


# --- cookies and CSRF -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Browser:
    """This browser's CSRF id (from its cookie, or new when it had none or a malformed one) and its form token."""

    id: str
    token: str
    fresh: bool


def _secure(request: Request) -> bool:
    return regulator_deps(request).settings.secure_cookies


def _csrf_key(request: Request) -> bytes:
    return csrf.derive_key(regulator_deps(request).settings.service_client_secret)


def browser_of(request: Request, *, renew: bool = False) -> Browser:
    cookie = request.cookies.get(csrf.csrf_cookie_name(_secure(request)))
    fresh = renew or not csrf.browser_id_is_valid(cookie)
    browser_id = csrf.new_browser_id() if fresh or cookie is None else cookie
    return Browser(browser_id, csrf.token_for(_csrf_key(request), browser_id), fresh)


def _set_cookie(request: Request, response: Response, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path="/", secure=_secure(request), httponly=True, samesite="strict"
    )


def _remember_browser(request: Request, response: Response, browser: Browser) -> None:
    if browser.fresh:
        # No Max-Age: the id lives as long as the browser session, like the forms it protects.
        _set_cookie(request, response, csrf.csrf_cookie_name(_secure(request)), browser.id, None)


def _forget_session(request: Request, response: Response) -> None:
    name = regulator_deps(request).session_cookie
    if name in request.cookies:
        response.delete_cookie(name, path="/", secure=_secure(request), httponly=True, samesite="strict")


# --- rendering --------------------------------------------------------------------------------------------------


def render(
    request: Request,
    template: str,
    *,
    title: str,
    session: RegulatorSession | None = None,
    active: str | None = None,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
    browser: Browser | None = None,
    **context: Any,
) -> Response:
    """A page: the template with the layout's context (session, CSRF token for its forms); sets the CSRF cookie
    when this browser has none yet."""
    browser = browser or browser_of(request)
    response = templates.TemplateResponse(
        request,
        template,
        {"title": title, "session": session, "active": active, "csrf_token": browser.token, **context},
        status_code=status_code,
        headers=headers,
    )
    _remember_browser(request, response, browser)
    return response


def error_page(request: Request, error: ApiError, session: RegulatorSession | None) -> Response:
    headers = {name: value for name, value in error.headers.items() if name.lower() == "retry-after"}
    return render(
        request,
        "error.html",
        title=error.kind.title,
        session=session,
        status_code=error.kind.status,
        headers=headers,
        detail=error.detail,
        request_id=current_request_id.get(),
    )


def to_login(request: Request) -> Response:
    response = RedirectResponse(f"{PORTAL_PATH}/login", status_code=303)
    _forget_session(request, response)
    return response


PageHandler = Callable[[Request, RegulatorSession], Awaitable[Response]]


def page(handler: PageHandler) -> Callable[[Request], Awaitable[Response]]:
    """`handler` for a live session only (the regulator guard's check): without one, to the sign-in page (303);
    a refusal raised by the handler (or the reads) becomes an HTML page with its status."""

    async def endpoint(request: Request) -> Response:
        try:
            session = await sessions.current_session(request, cookie=True)
        except ApiError as error:
            if error.kind.status == 401:
                return to_login(request)
            return error_page(request, error, None)
        try:
            return await handler(request, session)
        except ApiError as error:
            return error_page(request, error, session)

    return endpoint


# --- forms ------------------------------------------------------------------------------------------------------


def parse_form(body: bytes) -> dict[str, str]:
    """An urlencoded form body: each field once; 400 `bad_request` for non-UTF-8, too many or repeated fields."""
    try:
        text = body.decode("utf-8")
        fields = parse_qs(text, keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_FORM_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise ApiError("bad_request", "The form could not be read") from None
    if any(len(values) != 1 for values in fields.values()):
        raise ApiError("bad_request", "A form field was sent more than once")
    return {name: values[0] for name, values in fields.items()}


async def read_form(request: Request) -> dict[str, str]:
    """The posted form, after its CSRF token was checked against this browser's cookie (403 `csrf_failed`)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != FORM_MEDIA_TYPE:
        raise ApiError("unsupported_media_type", "Send the form as application/x-www-form-urlencoded")
    form = parse_form(await read_body(request, MAX_FORM_BYTES))
    cookie = request.cookies.get(csrf.csrf_cookie_name(_secure(request)))
    if not csrf.token_matches(_csrf_key(request), cookie, form.get(csrf.CSRF_FIELD)):
        raise ApiError("csrf_failed")
    return form


def _org_id(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text.strip())
    except ValueError:
        return None


# --- sign in and out --------------------------------------------------------------------------------------------


async def index(request: Request) -> Response:
    try:
        await sessions.current_session(request, cookie=True)
    except ApiError:
        return to_login(request)
    return RedirectResponse(f"{PORTAL_PATH}/dashboard", status_code=303)


def login_page(
    request: Request,
    *,
    error: str | None = None,
    org_id: str = "",
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    notice = "You have signed out." if request.query_params.get("signed_out") == "1" and not error else None
    return render(
        request,
        "login.html",
        title="Sign in",
        status_code=status_code,
        headers=headers,
        error=error,
        notice=notice,
        org_id=org_id,
    )


async def show_login(request: Request) -> Response:
    return login_page(request)


async def submit_login(request: Request) -> Response:
    try:
        form = await read_form(request)
    except ApiError as error:
        return error_page(request, error, None)
    access_code = form.get("access_code", "").strip()
    org_text = form.get("org_id", "")[:64]
    org_id = _org_id(org_text)
    if not access_code or len(access_code) > codes.MAX_ACCESS_CODE_CHARS or org_id is None:
        return login_page(request, error=SIGN_IN_REFUSED, org_id=org_text, status_code=400)
    try:
        token, session = await sessions.open_session(request, access_code, org_id)
    except ApiError as error:
        if error.code == "rate_limited":
            return login_page(
                request, error=error.detail, org_id=org_text, status_code=error.kind.status, headers=error.headers
            )
        if error.code == "access_denied":
            return login_page(request, error=SIGN_IN_REFUSED, org_id=org_text, status_code=error.kind.status)
        return error_page(request, error, None)
    response = RedirectResponse(f"{PORTAL_PATH}/dashboard", status_code=303)
    remaining_s = int((session.expires_at - datetime.now(UTC)).total_seconds())
    _set_cookie(request, response, regulator_deps(request).session_cookie, token, max(remaining_s, 0))
    # A new CSRF id at sign-in: a token anyone saw before it is worth nothing afterwards.
    _remember_browser(request, response, browser_of(request, renew=True))
    return response


async def logout(request: Request) -> Response:
    try:
        await read_form(request)
    except ApiError as error:
        return error_page(request, error, None)
    try:
        session = await sessions.current_session(request, cookie=True)
    except ApiError as error:
        if error.kind.status != 401:
            return error_page(request, error, None)
    else:
        try:
            await sessions.end_session(request, session)
        except ApiError as error:
            if error.kind.status != 401:  # ended meanwhile: signed out all the same
                return error_page(request, error, session)
    response = to_login(request)
    response.headers["location"] = f"{PORTAL_PATH}/login?signed_out=1"
    return response


# --- pages ------------------------------------------------------------------------------------------------------


def _next_link(path: str, query: Mapping[str, str | None], cursor: str | None) -> str | None:
    if cursor is None:
        return None
    kept = {name: value for name, value in query.items() if value is not None and name != "cursor"}
    return f"{path}?{urlencode({**kept, 'cursor': cursor})}"


@page
async def dashboard(request: Request, session: RegulatorSession) -> Response:
    report = await reads.report(request, session)
    return render(
        request, "dashboard.html", title="Compliance dashboard", session=session, active="dashboard", report=report
    )


@page
async def alerts(request: Request, session: RegulatorSession) -> Response:
    query = parse_query(request.query_params, AlertQuery)
    query = query.model_copy(update={"limit": min(query.limit, ALERTS_PAGE_SIZE)})
    result = await reads.alerts(request, session, query)
    filters = {"status": query.status, "severity": query.severity}
    return render(
        request,
        "alerts.html",
        title="Alerts",
        session=session,
        active="alerts",
        page=result,
        filters=filters,
        next_link=_next_link(f"{PORTAL_PATH}/alerts", filters, result.next_cursor),
        first_page=query.cursor is None,
    )


@page
async def bank_lines(request: Request, session: RegulatorSession) -> Response:
    query = parse_query(request.query_params, reads.SummaryRange)
    summary = await reads.bank_line_summary(request, session, query)
    return render(
        request, "bank_lines.html", title="Bank lines by month", session=session, active="bank-lines", summary=summary
    )


@page
async def evidence(request: Request, session: RegulatorSession) -> Response:
    query = parse_query(request.query_params, PageQuery)
    query = query.model_copy(update={"limit": min(query.limit, EVIDENCE_PAGE_SIZE)})
    listing = await reads.evidence_list(request, session, query)
    return render(
        request,
        "evidence.html",
        title="Evidence library",
        session=session,
        active="evidence",
        packs=listing.items,
        next_link=_next_link(f"{PORTAL_PATH}/evidence", {}, listing.next_cursor),
        first_page=query.cursor is None,
    )


@page
async def evidence_pack(request: Request, session: RegulatorSession) -> Response:
    item = await reads.evidence_item(request, session, path_uuid(request, "pack_id"))
    return render(
        request,
        "evidence_pack.html",
        title=f"Evidence pack {item.export.tag or item.export.id}",
        session=session,
        active="evidence",
        pack=item.export,
        verdict=item.verification,
    )


def _download(content: bytes, filename: str) -> Response:
    return Response(
        content,
        media_type="application/json",
        headers={"content-disposition": f'attachment; filename="{filename}"'},
    )


@page
async def evidence_payload(request: Request, session: RegulatorSession) -> Response:
    item = await reads.evidence_item(request, session, path_uuid(request, "pack_id"))
    payload = base64.b64decode(item.export.payload_base64)
    return _download(payload, f"evidence-pack_{item.export.id}.json")


@page
async def evidence_export(request: Request, session: RegulatorSession) -> Response:
    item = await reads.evidence_item(request, session, path_uuid(request, "pack_id"))
    return _download(item.export.model_dump_json().encode(), f"evidence-pack_{item.export.id}.export.json")


# --- headers and the route table ----------------------------------------------------------------------------------


def boundary_page(scope: Scope, code: str, detail: str | None, headers: Mapping[str, str]) -> Response:
    """The error boundary's answer inside the portal (an unexpected error, a dependency past its deadline): the
    same HTML error page as any other refusal, not a JSON problem."""
    return error_page(Request(scope), ApiError(code, detail, headers=headers), None)


class PortalHeaders:
    """Adds the portal's security headers to every response from inside it (and `no-store` unless the response
    says how it may be cached), and answers an HTTP error raised by routing (404, 405) with an HTML page. Any
    other exception is answered inside it by an error boundary of its own (logged as everywhere, see
    `shared.errors.ErrorBoundaryMiddleware`) with an HTML page, so a 500 or 503 carries these headers too."""

    def __init__(self, app: ASGIApp) -> None:
        self.inner = app
        self.app = ErrorBoundaryMiddleware(self._refusals, respond=boundary_page)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _OURS]
                headers.extend(PAGE_HEADERS)
                if not any(name.lower() == b"cache-control" for name, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _refusals(self, scope: Scope, receive: Receive, send: Send) -> None:
        """An HTTP error raised by routing (404, 405), or a refusal raised outside a page handler: its HTML page."""
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.inner(scope, receive, watch)
        except (HTTPException, ApiError) as exc:
            if started:
                raise
            error = exc if isinstance(exc, ApiError) else ApiError(_code_for(exc.status_code))
            await error_page(Request(scope, receive), error, None)(scope, receive, send)


_OURS = frozenset(name for name, _ in PAGE_HEADERS)


def _code_for(status: int) -> str:
    return next((code for code, kind in ERRORS.items() if kind.status == status), "not_found")


class CachedStaticFiles(StaticFiles):
    """Static files with a year's caching (see STATIC_CACHE_CONTROL)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code == 200:
            response.headers["cache-control"] = STATIC_CACHE_CONTROL
        return response


async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
    raise HTTPException(404)


_pages: list[BaseRoute] = [
    Route("/", index, methods=["GET"]),
    Route("/login", show_login, methods=["GET"]),
    Route("/login", submit_login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/dashboard", dashboard, methods=["GET"]),
    Route("/alerts", alerts, methods=["GET"]),
    Route("/bank-lines", bank_lines, methods=["GET"]),
    Route("/evidence", evidence, methods=["GET"]),
    Route("/evidence/{pack_id}", evidence_pack, methods=["GET"]),
    Route("/evidence/{pack_id}/payload", evidence_payload, methods=["GET"]),
    Route("/evidence/{pack_id}/export", evidence_export, methods=["GET"]),
    Mount("/static", app=CachedStaticFiles(directory=STATIC_DIR), name="static"),
]

routes: list[BaseRoute] = [Mount("", app=PortalHeaders(Router(routes=_pages, default=not_found)))]
