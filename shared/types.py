"""ASGI type aliases, imported from here only."""

from typing import Any, Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ASGIApp", "Message", "Receive", "Scope", "Send", "ServiceApp"]


class ServiceApp(Protocol):
    """What the runner serves: an ASGI app whose `state.runtime` holds the process's resources (a Starlette app,
    or the proxy's dispatcher in front of one)."""

    state: Any

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None: ...
