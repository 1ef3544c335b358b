"""The sandbox's plain routes: ``/v1/models`` (list and card), ``/media/{name}`` (result images,
with their expiry, media faults and GET counts) and the ``/sandbox/...`` control routes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..api.models import DEFAULT_MODEL
from .answers import OFFHOST_URL
from .config import FaultConfig, MediaFlake, media_flake
from .errors import error_envelope
from .exchange import _DROPPING
from .media import MediaItem
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


class _CutResponse(Response):
    """A 200 that announces the whole image but sends only its first ``keep`` bytes and then
    closes the connection (a reset or truncated transfer, as a flaky CDN does)."""

    def __init__(self, data: bytes, content_type: str, keep: int) -> None:
        """Announce ``data`` (its full length) but keep only ``keep`` bytes of it."""
        super().__init__(data, media_type=content_type, headers={"cache-control": "no-store"})
        self._keep = keep

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Headers, then part of the body, then return incomplete: uvicorn closes the connection."""
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        if self._keep:
            await send({"type": "http.response.body", "body": self.body[: self._keep], "more_body": True})
        _DROPPING.set(True)  # hush uvicorn's log line about the incomplete response


def _media_error(status: int) -> Response:
    """The error answer of a media GET that fails with ``status``."""
    if status == 503:
        body = error_envelope("media temporarily unavailable", "server_error", "media_error")
    elif status == 403:
        body = error_envelope("access denied (not yet propagated)", "invalid_request_error", "access_denied")
    else:
        body = error_envelope("media not found or expired", "invalid_request_error", "not_found")
    return JSONResponse(body, status_code=status)


def _flaky_failure(flake: MediaFlake, item: MediaItem) -> Response:
    """What a flaky result URL answers while it still fails."""
    if flake.mode == "reset":
        return _CutResponse(item.data, item.content_type, 0)
    if flake.mode == "truncated":
        return _CutResponse(item.data, item.content_type, len(item.data) // 2)
    return _media_error(int(flake.mode))


def _media(state: SandboxState) -> Callable[[Request], Awaitable[Response]]:
    """``GET /media/{name}``: result images, with their expiry and media faults, counted."""

    def answer(item: MediaItem | None) -> tuple[Response, bool]:
        """The answer to one GET and whether it is the image whole."""
        if item is None or item.fault == "media_404":
            return _media_error(404), False
        flake = media_flake(item.fault)
        if flake is not None and item.hits <= flake.times:
            return _flaky_failure(flake, item), False
        if item.fault == "media_redirect_offhost":
            return RedirectResponse(OFFHOST_URL, status_code=302), False
        data, whole = item.data, True
        if item.fault == "media_not_image":
            data, whole = b"<!doctype html><html><body><h1>Not an image</h1></body></html>\n", False
        elif item.fault == "media_truncated":
            data, whole = data[: len(data) // 2], False
        return Response(data, media_type=item.content_type, headers={"cache-control": "no-store"}), whole

    async def media(request: Request) -> Response:
        """Serve one stored result, applying its media fault; count the GET and its outcome."""
        name: str = request.path_params["name"]
        counted = request.method == "GET"
        if counted:
            await state.hold.wait(name)
        response, ok = answer(state.media.hit(name, count=counted))
        if counted:
            state.media.outcome(name, ok=ok)
        return response

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

    async def media(request: Request) -> Response:
        """GET counts of every result URL, by media name (kept after the image expires)."""
        return JSONResponse(state.media.counts())

    async def reset(request: Request) -> Response:
        """Clear ledger, log, scripted faults and counters."""
        state.reset()
        return JSONResponse({"ok": True})

    return [
        Route("/sandbox/ledger", ledger, methods=["GET"]),
        Route("/sandbox/requests", requests, methods=["GET"]),
        Route("/sandbox/faults", faults, methods=["GET", "POST"]),
        Route("/sandbox/hold", hold, methods=["GET", "POST"]),
        Route("/sandbox/media", media, methods=["GET"]),
        Route("/sandbox/reset", reset, methods=["POST"]),
    ]
