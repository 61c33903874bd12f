"""`guard` runs the service's own principal checks (`Runtime.principal_checks`) after authorization, in order, and
a check's ApiError is the answer; a principal refused by authorization never reaches them."""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from shared.authz import PrincipalCheck, guard
from shared.errors import EXCEPTION_HANDLERS, ApiError
from shared.tokens import USER_AUDIENCE, Principal

ROLE_BY_TOKEN = {"finance-token": "finance", "analyst-token": "analyst", "gone-token": "finance"}


def user(token: str) -> Principal:
    return Principal(
        subject=f"user-{token}",
        kind="user",
        org_id="org-gone" if token == "gone-token" else "org-1",
        role=ROLE_BY_TOKEN[token],
        scopes=frozenset(),
        amr=("pwd",),
        auth_time=None,
        token_id=f"jti-{token}",
        audience=USER_AUDIENCE,
    )


class Verifier:
    async def principal(self, token: str) -> Principal:
        return user(token)


@dataclass
class FakeRuntime:
    principal_checks: list[PrincipalCheck] = field(default_factory=list)

    def verifier_for(self, audience: str) -> Verifier:
        assert audience == USER_AUDIENCE
        return Verifier()


@guard(roles=("finance",))
async def endpoint(request: Request, principal: Principal) -> Response:
    return PlainTextResponse(principal.org_id)


def client(checks: list[PrincipalCheck]) -> TestClient:
    app = Starlette(routes=[Route("/x", endpoint)], exception_handlers=EXCEPTION_HANDLERS)  # type: ignore[arg-type]
    app.state.runtime = FakeRuntime(checks)
    return TestClient(app)


def test_checks_run_in_order_after_authorization_and_a_refusal_is_the_answer() -> None:
    seen: list[tuple[str, str]] = []

    async def record(request: Request, principal: Principal) -> None:
        seen.append(("record", principal.org_id))

    async def refuse_gone(request: Request, principal: Principal) -> None:
        seen.append(("gone?", principal.org_id))
        if principal.org_id == "org-gone":
            raise ApiError("gone", "This organisation has been deleted")

    with client([record, refuse_gone]) as http:
        ok = http.get("/x", headers={"authorization": "Bearer finance-token"})
        assert (ok.status_code, ok.text) == (200, "org-1")
        gone = http.get("/x", headers={"authorization": "Bearer gone-token"})
        assert (gone.status_code, gone.json()["code"]) == (410, "gone")
        forbidden = http.get("/x", headers={"authorization": "Bearer analyst-token"})
        assert forbidden.status_code == 403
    assert seen == [("record", "org-1"), ("gone?", "org-1"), ("record", "org-gone"), ("gone?", "org-gone")]


def test_no_checks_leaves_the_guard_as_it_was() -> None:
    with client([]) as http:
        assert http.get("/x", headers={"authorization": "Bearer finance-token"}).text == "org-1"
        assert http.get("/x").status_code == 401
