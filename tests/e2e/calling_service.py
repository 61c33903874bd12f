"""A service built exactly like the real ones that calls another service with `runtime.service_client`: the
client-credentials token comes from a real auth process, with this process's SERVICE_CLIENT_SECRET.

    GET /internal/whoami   service tokens only (guard(audience=SERVICE_AUDIENCE)) → the principal
    GET /call-whoami       calls its own /internal/whoami through the service client and answers what it got

Run as `python -m tests.e2e.calling_service` (as `core`: its client is `service-core`) with AUTH_URL set.
"""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared.app import build_service_app
from shared.authz import guard
from shared.config import Settings
from shared.runner import run_service
from shared.tokens import SERVICE_AUDIENCE, Principal


@guard(audience=SERVICE_AUDIENCE)
async def whoami(_: Request, principal: Principal) -> Response:
    return JSONResponse(
        {
            "sub": principal.subject,
            "kind": principal.kind,
            "audience": principal.audience,
            "org_id": principal.org_id,
            "scopes": sorted(principal.scopes),
        }
    )


async def call_whoami(request: Request) -> Response:
    client = request.app.state.runtime.require_service_client()
    return JSONResponse(await client.get_json(f"http://{request.url.netloc}/internal/whoami"))


def create_app(settings: Settings) -> Starlette:
    routes = [Route("/internal/whoami", whoami), Route("/call-whoami", call_whoami)]
    return build_service_app(settings, routes, title="calling test service")


if __name__ == "__main__":
    run_service("core", create_app)
