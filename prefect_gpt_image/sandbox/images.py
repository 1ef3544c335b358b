"""The image routes, ``POST /v1/images/generations`` and ``/v1/images/edits``: body limit, auth,
admission, parsing, moderation, quota and fault, then the answer (JSON or a stream)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Literal

from starlette.types import Receive, Scope, Send

from .answers import _respond, _spec
from .config import STATUS_FAULTS
from .errors import _STATUS_FAULT_ERRORS, _ApiError, _ClientGone, _retry_after
from .exchange import _Exchange
from .parsing import _auth_ok, _parse_edit, _parse_generation, _Parsed
from .state import SandboxState
from .streaming import _stream

__all__ = ["ImagesEndpoint"]

logger = logging.getLogger("prefect_gpt_image.sandbox.app")


class ImagesEndpoint:
    """``POST /v1/images/generations`` (JSON) or ``POST /v1/images/edits`` (multipart)."""

    def __init__(self, state: SandboxState, kind: Literal["generations", "edits"]) -> None:
        """Serve ``kind`` with ``state``."""
        self.state = state
        self.kind = kind

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry: serve the request, turning any _ApiError into an error envelope."""
        ex = _Exchange(scope, receive, send)
        try:
            await self._serve(ex)
        except _ApiError as err:
            if not ex.started:
                await ex.error(err)
        except _ClientGone:
            pass
        except Exception:
            logger.exception("sandbox failed to serve %s", ex.request_id)
            if not ex.started:
                await ex.error(_ApiError(500, "sandbox internal error", "server_error", "sandbox_error"))
        finally:
            ex.close()
            if ex.on_final is not None:
                ex.on_final()

    async def _serve(self, ex: _Exchange) -> None:
        """Body limit, auth, admission, parsing, moderation, quota, fault, then the answer."""
        cfg = self.state.config
        ledger = self.state.ledger
        body = await ex.read_body(cfg.max_body_bytes)
        if body is None:
            raise _ApiError(
                413,
                f"request body too large: the limit is {cfg.max_body_bytes} bytes",
                "invalid_request_error",
                "request_too_large",
            )
        auth_ok = _auth_ok(ex.headers, cfg.keys)
        ledger.update_request(ex.request_id, auth_ok=auth_ok)
        if not auth_ok:
            raise _ApiError(
                401,
                "invalid or missing API key: send Authorization: Bearer <key>",
                "invalid_request_error",
                "invalid_api_key",
            )
        if not ledger.try_admit(cfg.max_concurrency):
            raise _ApiError(
                429,
                f"too many concurrent requests (limit {cfg.max_concurrency})",
                "rate_limit_error",
                "rate_limit_exceeded",
                headers=_retry_after(cfg.retry_after),
            )
        ex.on_final = ledger.release
        ex.watch_disconnect(on_gone=lambda: ledger.update_request(ex.request_id, client_gone=True))
        if self.kind == "generations":
            parsed = _parse_generation(self.state.ledger, ex, body)
        else:
            parsed = await _parse_edit(self.state.ledger, ex, body)
        req = parsed.request
        if cfg.moderation_trigger and cfg.moderation_trigger in req.prompt:
            raise _ApiError(
                400,
                "your request was rejected by the safety system",
                "image_generation_user_error",
                "moderation_blocked",
            )
        if not ledger.reserve(req.n):
            raise _ApiError(
                403,
                f"insufficient quota: {ledger.balance_remaining} images left, {req.n} requested",
                "new_api_error",
                "insufficient_user_quota",
            )
        try:
            fault = self.state.faults.draw(stream=req.stream)
            ledger.update_request(ex.request_id, fault=fault)
            if fault in STATUS_FAULTS:
                status, message, type_, code = _STATUS_FAULT_ERRORS[fault]
                headers = _retry_after(cfg.retry_after) if status == 429 else None
                raise _ApiError(status, message, type_, code, headers=headers)
            await self._generate(ex, parsed, fault)
        finally:
            if not ex.billed:
                ledger.unreserve(req.n)

    async def _generate(self, ex: _Exchange, parsed: _Parsed, fault: str | None) -> None:
        """Wait, render and answer (billing through :func:`.answers._bill` once images exist)."""
        cfg = self.state.config
        req = parsed.request
        specs = [_spec(parsed, i) for i in range(req.n)]
        renders = asyncio.ensure_future(asyncio.gather(*(self.state.renders.get(spec) for spec in specs)))
        try:
            if fault == "slow":
                await self.state.sleep(cfg.slow_seconds)
            if req.stream:
                await _stream(self.state, self.kind, ex, parsed, renders, fault)
                return
            if cfg.latency:
                await self.state.sleep(cfg.latency)
            rendered = await renders
            await _respond(self.state, self.kind, ex, parsed, rendered, fault)
        finally:
            if not renders.done():
                renders.cancel()
                with contextlib.suppress(BaseException):
                    await renders
