"""The sandbox's Starlette app: the gpt-image-2 routes of the contract, media and control routes.

Requests are validated with the project's own request models, so the sandbox refuses exactly
what the client refuses. Image routes are raw ASGI handlers so faults can misbehave at the
transport level (a dropped connection, a truncated stream), which a framework response cannot.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import math
import secrets
import string
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import anyio.to_thread
from starlette.applications import Starlette
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..api.errors import RequestValidationError
from ..api.images import CONTENT_TYPES, MAX_INPUT_BYTES, InputImage
from ..api.models import (
    DEFAULT_MODEL,
    MAX_INPUT_IMAGES,
    EditRequest,
    GenerateRequest,
    ImageRequest,
    parse_size,
)
from .config import MEDIA_FAULTS, STATUS_FAULTS, FaultConfig, SandboxConfig
from .faults import FaultInjector
from .ledger import BilledImage, Ledger, LoggedFile
from .media import MediaStore
from .render import RenderCache, Rendered, Renderer, RenderSpec

__all__ = ["REQUEST_ID_KEY", "SandboxState", "create_app", "new_request_id"]

logger = logging.getLogger(__name__)

REQUEST_ID_KEY = "gpt_image_sandbox.request_id"
"""ASGI scope key holding the request id of a ``/v1`` request."""
OFFHOST_URL = "https://evil.example.com/x.png"
PRIVATE_URL = "http://10.0.0.1/x.png"
MODEL_CARD = {"id": DEFAULT_MODEL, "object": "model", "created": 1776643200, "owned_by": "openai"}
_ALNUM = string.ascii_letters + string.digits
_OUTPUT_TOKENS = {"low": 196, "medium": 1756, "high": 7024}
_IMAGE_PARTS = ("image", "image[]")
_MAX_DRAIN = 256 * 1024 * 1024
_STATUS_FAULT_ERRORS: dict[str, tuple[int, str, str, str]] = {
    "429": (429, "rate limit exceeded, retry later", "rate_limit_error", "rate_limit_exceeded"),
    "500": (500, "upstream error: the image generation failed", "server_error", "upstream_error"),
    "502": (502, "bad gateway: invalid upstream response", "server_error", "bad_gateway"),
    "503": (
        503,
        f"no available channel for model {DEFAULT_MODEL}",
        "server_error",
        "no_available_channel",
    ),
}

_DROPPING: ContextVar[bool] = ContextVar("gpt_image_sandbox_dropping", default=False)


class _DropLogFilter(logging.Filter):
    """Silence uvicorn's complaint about the response a ``drop`` fault cut off on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep every record except uvicorn's note about our own deliberate drops."""
        return not (_DROPPING.get() and "without completing response" in record.getMessage())


_DROP_FILTER = _DropLogFilter()


def new_request_id() -> str:
    """A new-api style request id: 31 alphanumerics (UTC timestamp + random)."""
    return time.strftime("%Y%m%d%H%M%S", time.gmtime()) + "".join(secrets.choice(_ALNUM) for _ in range(17))


def error_envelope(
    message: str, type_: str, code: str, param: str | None = None, request_id: str | None = None
) -> dict[str, Any]:
    """The gateway's error body; the message ends with `` (request id: ...)`` when there is one."""
    if request_id:
        message = f"{message} (request id: {request_id})"
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class SandboxState:
    """What the routes share: config, ledger, fault injector, media store and render cache."""

    def __init__(self, config: SandboxConfig) -> None:
        """Build fresh state for ``config``."""
        self.config = config
        self.ledger = Ledger(config.balance)
        self.faults = FaultInjector(config.faults)
        self.media = MediaStore()
        self.renders = RenderCache(renderer=Renderer(config.render, texture=config.texture))

    def set_faults(self, faults: FaultConfig) -> None:
        """Use new fault probabilities (re-seeded) from now on."""
        self.faults.configure(faults)

    def reset(self) -> None:
        """Clear the ledger, request log, scripted faults and counters; re-seed the faults."""
        self.ledger.reset()
        self.faults.reset()


class _ApiError(Exception):
    """An error answer: status and envelope fields (raised anywhere while serving a request)."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str,
        code: str,
        param: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Keep the error's status, envelope fields and extra headers."""
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = (
            status,
            message,
            type_,
            code,
            param,
        )
        self.headers = headers or []


class _ClientGone(Exception):
    """The client went away before its request body was read."""


def _invalid(param: str | None, message: str, code: str = "invalid_value") -> _ApiError:
    """A 400 ``invalid_request_error`` naming the offending field."""
    return _ApiError(400, message, "invalid_request_error", code, param)


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


class _Exchange:
    """One image request on the wire: raw ASGI I/O, disconnect watch, admission bookkeeping."""

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Wrap one request's ASGI channel."""
        self.scope = scope
        self.receive = receive
        self._send = send
        self.request_id: str = scope[REQUEST_ID_KEY]
        self.headers = Headers(scope=scope)
        self.started = False
        self.completed = False
        self.client_gone = False
        self.billed = False
        self.on_final: Callable[[], None] | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def read_body(self, limit: int) -> bytes | None:
        """The whole body, or None when it exceeds ``limit`` (drained, so a 413 can be read)."""
        declared = self.headers.get("content-length")
        too_big = declared is not None and declared.isdigit() and int(declared) > limit
        if too_big and int(declared or 0) > limit + _MAX_DRAIN:
            return None
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk: bytes = message.get("body", b"")
            more = bool(message.get("more_body", False))
            size += len(chunk)
            if size > limit:
                too_big = True
                chunks.clear()
                if size > limit + _MAX_DRAIN:
                    break
            elif not too_big:
                chunks.append(chunk)
        return None if too_big else b"".join(chunks)

    def watch_disconnect(self) -> None:
        """Note in ``client_gone`` if the client disconnects before the answer is complete."""

        async def watch() -> None:
            """Wait for ``http.disconnect``."""
            while True:
                message = await self.receive()
                if message["type"] == "http.disconnect":
                    if not self.completed:
                        self.client_gone = True
                    return

        self._watcher = asyncio.get_running_loop().create_task(watch())

    def close(self) -> None:
        """Stop the disconnect watch."""
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()

    async def send(self, message: Message) -> None:
        """Send one ASGI message; run ``on_final`` just before the last body chunk."""
        if message["type"] == "http.response.start":
            self.started = True
        elif not message.get("more_body", False):
            self.completed = True
            if self.on_final is not None:
                hook, self.on_final = self.on_final, None
                hook()
        await self._send(message)

    async def start(self, status: int, content_type: str, extra: list[tuple[bytes, bytes]]) -> None:
        """Send the status line and headers."""
        headers = [(b"content-type", content_type.encode()), *extra]
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    async def chunk(self, data: bytes, *, last: bool = False) -> None:
        """Send a piece of the body (``last`` ends the response)."""
        await self.send({"type": "http.response.body", "body": data, "more_body": not last})

    async def json(
        self, status: int, payload: bytes, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        """Send a complete JSON answer."""
        extra = [(b"content-length", str(len(payload)).encode()), *(headers or [])]
        await self.start(status, "application/json", extra)
        await self.chunk(payload, last=True)

    async def error(self, err: _ApiError) -> None:
        """Send an error envelope carrying the request id."""
        body = error_envelope(err.message, err.type, err.code, err.param, self.request_id)
        await self.json(err.status, _dumps(body), err.headers)

    async def drop(self, payload: bytes | None = None) -> None:
        """Break the connection mid-answer: announce ``payload`` (JSON) but send only half of it.

        With no payload the response already under way (a stream) just stops. Either way the
        handler then returns with the response incomplete, and uvicorn closes the connection.
        """
        if payload is not None:
            extra = [(b"content-length", str(len(payload)).encode())]
            await self.start(200, "application/json", extra)
            await self.chunk(payload[: len(payload) // 2])
        _DROPPING.set(True)  # hush uvicorn's log line about the incomplete response


@dataclass
class _Parsed:
    """A validated request and what the response needs to know about it."""

    request: ImageRequest
    width: int
    height: int
    input_images: int


class ImagesEndpoint:
    """``POST /v1/images/generations`` (JSON) or ``POST /v1/images/edits`` (multipart)."""

    def __init__(self, state: SandboxState, kind: Literal["generations", "edits"]) -> None:
        """Serve ``kind`` with ``state``."""
        self.state = state
        self.kind = kind
        self.event_family = "image_generation" if kind == "generations" else "image_edit"

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
        ex.watch_disconnect()
        if self.kind == "generations":
            parsed = self._parse_generation(ex, body)
        else:
            parsed = await self._parse_edit(ex, body)
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

    # -- parsing -----------------------------------------------------------------------------

    def _parse_generation(self, ex: _Exchange, body: bytes) -> _Parsed:
        """The JSON body through GenerateRequest.build, logged first."""
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise _invalid(None, "the request body is not valid JSON", "bad_request_body") from None
        if not isinstance(data, dict):
            raise _invalid(None, "the request body must be a JSON object", "bad_request_body")
        self.state.ledger.update_request(ex.request_id, fields=data)
        _check_model(data)
        try:
            req = GenerateRequest.build(**data)
        except RequestValidationError as exc:
            raise _validation_error(exc) from None
        width, height = req.dimensions or (1024, 1024)
        return _Parsed(req, width, height, 0)

    async def _parse_edit(self, ex: _Exchange, body: bytes) -> _Parsed:
        """The multipart body: text parts and files, logged, then decoded and validated."""
        ctype = ex.headers.get("content-type", "")
        if not ctype.lower().startswith("multipart/form-data"):
            raise _invalid(None, "images/edits takes multipart/form-data", "bad_request_body")
        sent = False

        async def replay() -> Message:
            """Hand the already-read body to the form parser."""
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return {"type": "http.disconnect"}  # pragma: no cover - the parser stops at the end

        fields: dict[str, str] = {}
        uploads: list[tuple[str, UploadFile]] = []
        request = Request(ex.scope, replay)
        try:
            form = await request.form(max_files=100, max_fields=100, max_part_size=1024 * 1024)
        except (MultiPartException, HTTPException) as exc:
            detail = getattr(exc, "message", None) or getattr(exc, "detail", "")
            raise _invalid(None, f"malformed multipart body: {detail}", "bad_request_body") from None
        files: list[tuple[str, str | None, bytes]] = []
        logged: list[LoggedFile] = []
        try:
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    uploads.append((key, value))
                elif key in fields:
                    raise _invalid(key, "text field given more than once")
                else:
                    fields[key] = value
            for key, upload in uploads:
                data = await upload.read()
                files.append((key, upload.filename, data))
                logged.append(
                    LoggedFile(
                        field=key,
                        filename=upload.filename,
                        content_type=upload.content_type,
                        size=len(data),
                        sha256=_sha256(data),
                    )
                )
        finally:
            await form.close()
        self.state.ledger.update_request(ex.request_id, fields=dict(fields), files=logged)
        for key in (*_IMAGE_PARTS, "mask"):
            if key in fields:
                raise _invalid(key, "must be a file part (with a filename)", "invalid_image_file")
        if "images" in fields:
            raise _invalid("images", "unknown field: send the images as image[] file parts")
        _check_model(fields)
        image_parts = [(name, data) for key, name, data in files if key in _IMAGE_PARTS]
        masks = [(name, data) for key, name, data in files if key == "mask"]
        for key, _, _ in files:
            if key not in (*_IMAGE_PARTS, "mask"):
                raise _invalid(key, "unknown file part: send images as image[] (or image)")
        if not image_parts:
            raise _invalid("image", "is required: send 1..16 images as image[] (or image)")
        if len(image_parts) > MAX_INPUT_IMAGES:
            raise _invalid("image", f"at most {MAX_INPUT_IMAGES} images, got {len(image_parts)}")
        if len(masks) > 1:
            raise _invalid("mask", "only one mask is allowed")
        mask = masks[0] if masks else None
        decode = partial(_build_edit, image_parts, mask, fields)
        req = await anyio.to_thread.run_sync(decode)
        size = f"{req.images[0].width}x{req.images[0].height}"
        if req.dimensions is not None:
            width, height = req.dimensions
        else:
            try:
                width, height = parse_size(size)
            except ValueError:
                width, height = 1024, 1024
        return _Parsed(req, width, height, len(req.images))

    # -- answering ---------------------------------------------------------------------------

    async def _generate(self, ex: _Exchange, parsed: _Parsed, fault: str | None) -> None:
        """Wait, render and answer (billing through :meth:`_bill` once images exist)."""
        cfg = self.state.config
        req = parsed.request
        specs = [self._spec(parsed, i) for i in range(req.n)]
        renders = asyncio.ensure_future(asyncio.gather(*(self.state.renders.get(spec) for spec in specs)))
        try:
            if fault == "slow":
                await asyncio.sleep(cfg.slow_seconds)
            if req.stream:
                await self._stream(ex, parsed, renders, fault)
                return
            if cfg.latency:
                await asyncio.sleep(cfg.latency)
            rendered = await renders
            await self._respond(ex, parsed, rendered, fault)
        finally:
            if not renders.done():
                renders.cancel()
                with contextlib.suppress(BaseException):
                    await renders

    def _spec(self, parsed: _Parsed, index: int) -> RenderSpec:
        """What image ``index`` of the request looks like (the render cache key)."""
        req = parsed.request
        inputs: tuple[InputImage, ...] = ()
        mask = None
        if isinstance(req, EditRequest):
            inputs, mask = req.images, req.mask
        return RenderSpec(
            prompt=req.prompt,
            width=parsed.width,
            height=parsed.height,
            format=req.format,
            compression=req.output_compression,
            quality=_quality(req),
            index=index,
            n=req.n,
            partials=(req.partial_images or 0) if req.stream else 0,
            inputs=inputs,
            mask=mask,
        )

    def _common(self, parsed: _Parsed) -> dict[str, Any]:
        """The fields every answer and event repeats: format, quality, size, background."""
        req = parsed.request
        return {
            "output_format": req.format,
            "quality": _quality(req),
            "size": f"{parsed.width}x{parsed.height}",
            "background": "opaque" if req.background in (None, "auto") else req.background,
        }

    def _usage(self, parsed: _Parsed) -> dict[str, Any]:
        """Plausible token usage in OpenAI's shape (output scales with pixels and quality)."""
        req = parsed.request
        text = max(1, math.ceil(len(req.prompt) / 4))
        image = 272 * parsed.input_images
        per_image = _OUTPUT_TOKENS[_quality(req)] * parsed.width * parsed.height / 1024**2
        output = round(per_image) * req.n
        return {
            "input_tokens": text + image,
            "input_tokens_details": {"text_tokens": text, "image_tokens": image},
            "output_tokens": output,
            "total_tokens": text + image + output,
        }

    def _publish(self, ex: _Exchange, rendered: Rendered, index: int, fault: str | None) -> str:
        """Store a result for ``/media`` and return its URL (or the hostile URL of a fault)."""
        if fault == "url_offhost":
            return OFFHOST_URL
        if fault == "url_private":
            return PRIVATE_URL
        fmt = _format_of(rendered.data)
        name = f"{ex.request_id}-{index + 1}.{fmt}"
        media_fault = fault if fault in MEDIA_FAULTS else None
        cfg = self.state.config
        self.state.media.put(name, rendered.data, CONTENT_TYPES[fmt], cfg.media_ttl, media_fault)
        return f"{_public_base(ex.scope, ex.headers, cfg.public_url)}/media/{name}"

    def _bill(self, ex: _Exchange, images: list[BilledImage], *, delivered: bool, fault: str | None) -> None:
        """Bill the request's images (once), consuming its balance reservation."""
        if ex.billed:
            return
        ex.billed = True
        self.state.ledger.bill(
            ex.request_id,
            f"/images/{self.kind}",
            images,
            delivered=delivered and not ex.client_gone,
            fault=fault,
        )

    async def _respond(
        self, ex: _Exchange, parsed: _Parsed, rendered: list[Rendered], fault: str | None
    ) -> None:
        """The JSON answer (or its drop / malformed / hostile-URL variants), billed first."""
        use_url = (
            self.state.config.result_mode == "url"
            or fault in MEDIA_FAULTS
            or fault in ("url_offhost", "url_private")
        )
        items: list[dict[str, str]] = []
        billed: list[BilledImage] = []
        for i, result in enumerate(rendered):
            if use_url:
                url = self._publish(ex, result, i, fault)
                items.append({"url": url})
            else:
                url = None
                items.append({"b64_json": base64.b64encode(result.data).decode("ascii")})
            billed.append(BilledImage(url=url, sha256=result.sha256, size_bytes=len(result.data)))
        body = {
            "created": int(time.time()),
            "data": items,
            **self._common(parsed),
            "usage": self._usage(parsed),
        }
        payload = _dumps(body)
        if fault == "drop":
            self._bill(ex, billed, delivered=False, fault=fault)
            await ex.drop(payload)
            return
        if fault == "malformed_json":
            payload = payload[: len(payload) // 2]
        self._bill(ex, billed, delivered=True, fault=fault)
        await ex.json(200, payload)

    async def _stream(
        self,
        ex: _Exchange,
        parsed: _Parsed,
        renders: asyncio.Future[list[Rendered]],
        fault: str | None,
    ) -> None:
        """The SSE answer: PING, partials, completed (or a stream fault), ``[DONE]``."""
        cfg = self.state.config
        req = parsed.request
        k = req.partial_images or 0
        step = cfg.latency / (k + 1)
        common = self._common(parsed)
        created = int(time.time())
        family = self.event_family
        await ex.start(
            200,
            "text/event-stream; charset=utf-8",
            [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")],
        )
        await ex.chunk(b": PING\n\n")
        rendered = None
        for i in range(k):
            if step:
                await asyncio.sleep(step)
            rendered = (await renders)[0]
            event = {
                "type": f"{family}.partial_image",
                "b64_json": base64.b64encode(rendered.partials[i]).decode("ascii"),
                "created_at": created,
                **common,
                "partial_image_index": i,
            }
            await ex.chunk(_frame(event["type"], _dumps(event)))
            if fault == "drop":
                break
        rendered = (await renders)[0]
        billed = [BilledImage(url=None, sha256=rendered.sha256, size_bytes=len(rendered.data))]
        if fault == "drop":
            self._bill(ex, billed, delivered=False, fault=fault)
            await ex.drop()
            return
        if fault == "stream_error":
            error = error_envelope(
                "the image generation failed upstream",
                "server_error",
                "image_generation_failed",
                request_id=ex.request_id,
            )
            await ex.chunk(_frame("error", _dumps({"type": "error", **error})), last=True)
            return
        if fault == "stream_truncate":
            self._bill(ex, billed, delivered=False, fault=fault)
            await ex.chunk(b"", last=True)
            return
        if step:
            await asyncio.sleep(step)
        completed: dict[str, Any] = {"type": f"{family}.completed"}
        url_faults = (*MEDIA_FAULTS, "url_offhost", "url_private")
        if cfg.stream_completed_url or fault in url_faults:
            completed["url"] = self._publish(ex, rendered, 0, fault)
            billed[0]["url"] = completed["url"]
        else:
            completed["b64_json"] = base64.b64encode(rendered.data).decode("ascii")
        completed.update(created_at=created, **common, usage=self._usage(parsed))
        data = _dumps(completed)
        if fault == "malformed_json":
            data = data[: len(data) // 2]
        self._bill(ex, billed, delivered=True, fault=fault)
        frame = _frame(completed["type"], data)
        if cfg.stream_done:
            await ex.chunk(frame)
            await ex.chunk(b"data: [DONE]\n\n", last=True)
        else:
            await ex.chunk(frame, last=True)


# ---------------------------------------------------------------------------------------------
# Plain routes: models, media, control.


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

    async def reset(request: Request) -> Response:
        """Clear ledger, log, scripted faults and counters."""
        state.reset()
        return JSONResponse({"ok": True})

    return [
        Route("/sandbox/ledger", ledger, methods=["GET"]),
        Route("/sandbox/requests", requests, methods=["GET"]),
        Route("/sandbox/faults", faults, methods=["GET", "POST"]),
        Route("/sandbox/reset", reset, methods=["POST"]),
    ]


async def _http_error(request: Request, exc: Exception) -> Response:
    """404/405 and friends as error envelopes (with the request id under ``/v1``)."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, "invalid_request")
    detail = exc.detail if isinstance(exc, HTTPException) else "error"
    body = error_envelope(
        str(detail), "invalid_request_error", code, request_id=request.scope.get(REQUEST_ID_KEY)
    )
    return JSONResponse(body, status_code=status)


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


# ---------------------------------------------------------------------------------------------
# Helpers.


def _auth_ok(headers: Headers, keys: tuple[str, ...]) -> bool:
    """Whether the bearer key is acceptable (constant-time compare; the key is never kept)."""
    scheme, _, key = headers.get("authorization", "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return False
    if not keys:
        return True
    given = key.encode()
    return any(hmac.compare_digest(given, k.encode()) for k in keys)


def _check_model(fields: dict[str, Any]) -> None:
    """Require ``model``; any model but gpt-image-2 is a 404 like on the gateway."""
    if "model" not in fields:
        raise _invalid("model", "is required: use gpt-image-2")
    model = fields["model"]
    if isinstance(model, str) and model != DEFAULT_MODEL:
        raise _ApiError(
            404,
            f"model {model!r} not found: this sandbox serves only {DEFAULT_MODEL}",
            "invalid_request_error",
            "model_not_found",
            "model",
        )


def _validation_error(exc: RequestValidationError) -> _ApiError:
    """The first broken rule of a RequestValidationError as a 400 envelope."""
    field, _value, rule = exc.errors[0]
    return _invalid(field, rule)


def _build_edit(
    image_parts: list[tuple[str | None, bytes]],
    mask_part: tuple[str | None, bytes] | None,
    fields: dict[str, str],
) -> EditRequest:
    """Decode the uploads and validate the edit (CPU-bound: runs in a worker thread)."""
    images: list[InputImage] = []
    for i, (name, data) in enumerate(image_parts):
        if len(data) >= MAX_INPUT_BYTES:
            raise _invalid("image", f"image {i} is too large: must be under 50 MB", "invalid_image_file")
        try:
            images.append(InputImage.from_bytes(data, name))
        except ValueError as exc:
            raise _invalid("image", f"image {i} ({name}): {exc}", "invalid_image_file") from None
    mask: InputImage | None = None
    if mask_part is not None:
        name, data = mask_part
        try:
            mask = InputImage.from_bytes(data, name)
        except ValueError as exc:
            raise _invalid("mask", f"mask ({name}): {exc}", "invalid_image_file") from None
        if mask.format != "png" or not mask.has_alpha:
            raise _invalid(
                "mask",
                "the mask must be a PNG with an alpha channel (alpha 0 marks where to edit)",
                "invalid_mask_image_format",
            )
    try:
        return EditRequest.build(images=tuple(images), mask=mask, **fields)
    except RequestValidationError as exc:
        raise _validation_error(exc) from None


def _quality(req: ImageRequest) -> Literal["low", "medium", "high"]:
    """The quality reported back: ``auto`` (or none) resolves to ``medium``."""
    quality = req.quality
    if quality is None or quality == "auto":
        return "medium"
    return quality


def _format_of(data: bytes) -> str:
    """The format of rendered bytes, from their magic number."""
    if data.startswith(b"\x89PNG"):
        return "png"
    if data.startswith(b"\xff\xd8"):
        return "jpeg"
    return "webp"


def _public_base(scope: Scope, headers: Headers, public_url: str | None) -> str:
    """``scheme://host`` for result URLs: the configured public URL, else the request's Host."""
    if public_url:
        return public_url.rstrip("/")
    host = headers.get("host")
    if not host:
        server = scope.get("server") or ("127.0.0.1", 80)
        host = f"{server[0]}:{server[1]}"
    return f"{scope.get('scheme', 'http')}://{host}"


def _retry_after(seconds: float | None) -> list[tuple[bytes, bytes]]:
    """``Retry-After`` (whole seconds) and ``retry-after-ms`` headers, when configured."""
    if seconds is None:
        return []
    return [
        (b"retry-after", str(math.ceil(seconds)).encode()),
        (b"retry-after-ms", str(round(seconds * 1000)).encode()),
    ]


def _frame(event: str, data: bytes) -> bytes:
    """One SSE frame: ``event:`` line, one-line ``data:`` line, blank line."""
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


def _dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _sha256(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()
