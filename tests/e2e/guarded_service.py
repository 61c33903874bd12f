"""A service built exactly like the real ones (shared app, middleware, runner, token verifier) with one guarded
route, standing for every other service that verifies access tokens from the auth service's JWKS.

    GET /whoami    any user token → {"sub": ..., "role": ...}

Run as `python -m tests.e2e.guarded_service` with the project root on PYTHONPATH and AUTH_URL set.
"""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared.app import build_service_app
from shared.authz import guard
from shared.config import Settings
from shared.runner import run_service
from shared.tokens import Principal


@guard()
async def whoami(_: Request, principal: Principal) -> Response:
    return JSONResponse({"sub": principal.subject, "role": principal.role})


def create_app(settings: Settings) -> Starlette:
    return build_service_app(settings, [Route("/whoami", whoami)], title="guarded test service")


if __name__ == "__main__":
    run_service("guarded", create_app)
