"""The sandbox's plain routes: ``/v1/models`` (list and card), ``/media/{name}`` (result images,
with their expiry and media faults) and the ``/sandbox/...`` control routes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from ..api.models import DEFAULT_MODEL
from .answers import OFFHOST_URL
from .config import FaultConfig
from .errors import error_envelope
from .middleware import REQUEST_ID_KEY
from .parsing import _auth_ok
from .state import SandboxState

__all__ = ["MODEL_CARD"]

MODEL_CARD = {"id": DEFAULT_MODEL, "object": "model", "created": 1776643200, "owned_by": "openai"}


def _models(state: SandboxState) -> Callable[[Request], Awaitable[Response]]:
    """``GET /v1/models`` and ``/v1/models/{model}`` (OpenAI's list and card shapes)."""

    async def models(request: Request) -> Response:
        """List the models, or describe one."""
        rid: str = request.scope[REQUEST_ID_KEY]
        auth_ok = _auth_ok(request.headers, state.config.keys)
        state.ledger.update_request(rid, auth_ok=auth_ok)
        if not auth_ok:
            body = error_envelope(
                "invalid or missing API key: send Authorization: Bearer <key>",
                "invalid_request_error",
                "invalid_api_key",
                request_id=rid,
            )
            return JSONResponse(body, status_code=401)
        model = request.path_params.get("model")
        if model is None:
            return JSONResponse({"object": "list", "data": [MODEL_CARD]})
        if model != DEFAULT_MODEL:
            body = error_envelope(
                f"model {model!r} not found",
                "invalid_request_error",
                "model_not_found",
                "model",
                rid,
            )
            return JSONResponse(body, status_code=404)
        return JSONResponse(MODEL_CARD)

    return models


def _media(state: SandboxState) -> Callable[[Request], Awaitable[Response]]:
    """``GET /media/{name}``: result images, with their expiry and media faults."""

    async def media(request: Request) -> Response:
        """Serve one stored result, applying its media fault."""
        name: str = request.path_params["name"]
        if request.method == "GET":
            await state.hold.wait(name)
        item = state.media.hit(name, count=request.method == "GET")
        if item is None or item.fault == "media_404":
            body = error_envelope("media not found or expired", "invalid_request_error", "not_found")
            return JSONResponse(body, status_code=404)
        if item.fault == "media_fail_once" and item.hits == 1:
            body = error_envelope("media temporarily unavailable", "server_error", "media_error")
            return JSONResponse(body, status_code=503)
        if item.fault == "media_redirect_offhost":
            return RedirectResponse(OFFHOST_URL, status_code=302)
        data = item.data
        if item.fault == "media_not_image":
            data = b"<!doctype html><html><body><h1>Not an image</h1></body></html>\n"
        elif item.fault == "media_truncated":
            data = data[: len(data) // 2]
        return Response(data, media_type=item.content_type, headers={"cache-control": "no-store"})

    return media


def _control(state: SandboxState) -> list[Route]:
    """The ``/sandbox/...`` control routes (never faulted, no auth)."""

    async def ledger(request: Request) -> Response:
        """Ledger entries and stats."""
        return JSONResponse(state.ledger.snapshot())

    async def requests(request: Request) -> Response:
        """The request log."""
        return JSONResponse({"requests": state.ledger.requests})

    async def faults(request: Request) -> Response:
        """Show fault settings; POST queues ``script`` and/or sets ``probabilities``/``seed``."""
        if request.method == "POST":
            try:
                body = await request.json()
                if not isinstance(body, dict):
                    raise ValueError("the body must be a JSON object")
                if "probabilities" in body or "seed" in body:
                    current = state.faults.config
                    state.set_faults(
                        FaultConfig(
                            probabilities=body.get("probabilities", current.probabilities),
                            seed=body.get("seed", current.seed),
                        )
                    )
                script = body.get("script", [])
                if isinstance(script, str) or not isinstance(script, list):
                    raise ValueError("script must be a list of fault kinds")
                state.faults.add_script(script)
            except (ValueError, TypeError) as exc:
                body = error_envelope(str(exc), "invalid_request_error", "invalid_value")
                return JSONResponse(body, status_code=400)
        return JSONResponse({"config": state.faults.config.to_json(), "script": state.faults.script})

    async def hold(request: Request) -> Response:
        """Show the answer hold; POST ``{"hold": true, "count": k}`` arms it, ``{"hold": false}``
        releases every held download."""
        if request.method == "POST":
            try:
                body = await request.json()
                if not isinstance(body, dict) or not isinstance(body.get("hold"), bool):
                    raise ValueError('the body must be {"hold": true|false, "count": int (optional)}')
                count = body.get("count")
                if count is not None and (not isinstance(count, int) or isinstance(count, bool)):
                    raise ValueError("count must be an integer")
                if body["hold"]:
                    state.hold.hold(count)
                else:
                    state.hold.release()
            except ValueError as exc:
                body = error_envelope(str(exc), "invalid_request_error", "invalid_value")
                return JSONResponse(body, status_code=400)
        return JSONResponse(state.hold.to_json())

    async def reset(request: Request) -> Response:
        """Clear ledger, log, scripted faults and counters."""
        state.reset()
        return JSONResponse({"ok": True})

    return [
        Route("/sandbox/ledger", ledger, methods=["GET"]),
        Route("/sandbox/requests", requests, methods=["GET"]),
        Route("/sandbox/faults", faults, methods=["GET", "POST"]),
        Route("/sandbox/hold", hold, methods=["GET", "POST"]),
        Route("/sandbox/reset", reset, methods=["POST"]),
    ]
