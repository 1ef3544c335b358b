"""One image request on the wire: raw ASGI reading and writing (so faults can drop or cut an
answer off, which a framework response cannot), and the compact JSON every answer is sent as."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from starlette.datastructures import Headers
from starlette.types import Message, Receive, Scope, Send

from .errors import _ApiError, _ClientGone, error_envelope
from .middleware import REQUEST_ID_KEY

_MAX_DRAIN = 256 * 1024 * 1024

_DROPPING: ContextVar[bool] = ContextVar("gpt_image_sandbox_dropping", default=False)


class _DropLogFilter(logging.Filter):
    """Silence uvicorn's complaint about the response a ``drop`` fault cut off on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep every record except uvicorn's note about our own deliberate drops."""
        return not (_DROPPING.get() and "without completing response" in record.getMessage())


_DROP_FILTER = _DropLogFilter()


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

    def watch_disconnect(self, on_gone: Callable[[], None] | None = None) -> None:
        """Note in ``client_gone`` if the client disconnects before the answer is complete (and
        call ``on_gone`` then, e.g. to say so in the request log)."""

        async def watch() -> None:
            """Wait for ``http.disconnect``."""
            while True:
                message = await self.receive()
                if message["type"] == "http.disconnect":
                    if not self.completed:
                        self.client_gone = True
                        if on_gone is not None:
                            on_gone()
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


def _dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
