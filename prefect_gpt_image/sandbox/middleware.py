"""The ``/v1`` middleware: a new-api style request id for each request (scope key and
``x-oneapi-request-id`` header), and the ledger's request log."""

from __future__ import annotations

import secrets
import string
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .state import SandboxState

__all__ = ["REQUEST_ID_KEY", "new_request_id"]

REQUEST_ID_KEY = "gpt_image_sandbox.request_id"
"""ASGI scope key holding the request id of a ``/v1`` request."""
_ALNUM = string.ascii_letters + string.digits


def new_request_id() -> str:
    """A new-api style request id: 31 alphanumerics (UTC timestamp + random)."""
    return time.strftime("%Y%m%d%H%M%S", time.gmtime()) + "".join(secrets.choice(_ALNUM) for _ in range(17))


class _ApiMiddleware:
    """For ``/v1`` requests: assign the request id, add the header, keep the request log."""

    def __init__(self, app: ASGIApp, state: SandboxState) -> None:
        """Wrap ``app``, logging into ``state.ledger``."""
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request; non-``/v1`` paths pass straight through."""
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not (path == "/v1" or path.startswith("/v1/")):
            await self.app(scope, receive, send)
            return
        ledger = self.state.ledger
        rid = new_request_id()
        scope[REQUEST_ID_KEY] = rid
        ledger.begin_request(rid, path[3:] or "/", scope["method"])
        status: int | None = None
        finished = False

        async def send_with_id(message: Message) -> None:
            """Add the request id header and keep status and finish time in the log."""
            nonlocal status, finished
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-oneapi-request-id", rid.encode()),
                ]
                ledger.update_request(rid, status=status)
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                finished = True
                ledger.finish_request(rid, status)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if not finished:
                ledger.finish_request(rid, status)
