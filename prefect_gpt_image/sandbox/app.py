"""The sandbox's Starlette app: the gpt-image-2 routes of the contract, media and control routes.

Requests are validated with the project's own request models, so the sandbox refuses exactly
what the client refuses. Image routes are raw ASGI handlers so faults can misbehave at the
transport level (a dropped connection, a truncated stream), which a framework response cannot.

Where things live: this module builds the app; :mod:`.state` holds what the routes share;
:mod:`.middleware` the ``/v1`` request ids and request log; :mod:`.errors` the error envelopes
and answers; :mod:`.exchange` the raw ASGI I/O of an image request; :mod:`.parsing` the auth
check and the JSON and multipart bodies; :mod:`.images` the image routes, answered by
:mod:`.answers` (JSON, billing, result URLs) or :mod:`.streaming` (SSE); :mod:`.routes` the
models, media and control routes; :mod:`.hold` the answer hold (result downloads kept waiting).
"""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route
from starlette.types import ASGIApp

from .errors import _http_error
from .exchange import _DROP_FILTER
from .images import ImagesEndpoint
from .middleware import REQUEST_ID_KEY, _ApiMiddleware, new_request_id
from .routes import _control, _media, _models
from .state import SandboxState

__all__ = ["REQUEST_ID_KEY", "SandboxState", "create_app", "new_request_id"]


def create_app(state: SandboxState) -> ASGIApp:
    """The sandbox's ASGI app for ``state``: the Starlette routes behind the ``/v1`` middleware."""
    logging.getLogger("uvicorn.error").addFilter(_DROP_FILTER)
    routes = [
        Route("/v1/images/generations", ImagesEndpoint(state, "generations"), methods=["POST"]),
        Route("/v1/images/edits", ImagesEndpoint(state, "edits"), methods=["POST"]),
        Route("/v1/models", _models(state), methods=["GET"]),
        Route("/v1/models/{model}", _models(state), methods=["GET"]),
        Route("/media/{name}", _media(state), methods=["GET"]),
        *_control(state),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    return _ApiMiddleware(app, state)
