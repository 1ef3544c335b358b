"""The SSE answer of a ``stream: true`` image request: PING, partial images, the completed event
(or a stream fault) and ``[DONE]``, paced over the configured latency."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any, Literal

from .answers import _bill, _common, _forces_url, _publish, _usage
from .errors import error_envelope
from .exchange import _dumps, _Exchange
from .ledger import BilledImage
from .parsing import _Parsed
from .render import Rendered
from .state import SandboxState


async def _stream(
    state: SandboxState,
    kind: Literal["generations", "edits"],
    ex: _Exchange,
    parsed: _Parsed,
    renders: asyncio.Future[list[Rendered]],
    fault: str | None,
) -> None:
    """The SSE answer: PING, partials, completed (or a stream fault), ``[DONE]``."""
    cfg = state.config
    req = parsed.request
    k = req.partial_images or 0
    step = cfg.latency / (k + 1)
    common = _common(parsed)
    created = int(time.time())
    family = "image_generation" if kind == "generations" else "image_edit"
    await ex.start(
        200,
        "text/event-stream; charset=utf-8",
        [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")],
    )
    await ex.chunk(b": PING\n\n")
    rendered = None
    for i in range(k):
        if step:
            await state.sleep(step)
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
    usage = _usage(parsed)
    if fault == "drop":
        _bill(state, kind, ex, billed, delivered=False, fault=fault, usage=usage)
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
        _bill(state, kind, ex, billed, delivered=False, fault=fault, usage=usage)
        await ex.chunk(b"", last=True)
        return
    if step:
        await state.sleep(step)
    completed: dict[str, Any] = {"type": f"{family}.completed"}
    if cfg.stream_completed_url or _forces_url(fault):
        completed["url"] = _publish(state, ex, rendered, 0, fault)
        billed[0]["url"] = completed["url"]
    else:
        completed["b64_json"] = base64.b64encode(rendered.data).decode("ascii")
    completed.update(created_at=created, **common, usage=usage)
    data = _dumps(completed)
    if fault == "malformed_json":
        data = data[: len(data) // 2]
    _bill(state, kind, ex, billed, delivered=True, fault=fault, usage=usage)
    frame = _frame(completed["type"], data)
    if cfg.stream_done:
        await ex.chunk(frame)
        await ex.chunk(b"data: [DONE]\n\n", last=True)
    else:
        await ex.chunk(frame, last=True)


def _frame(event: str, data: bytes) -> bytes:
    """One SSE frame: ``event:`` line, one-line ``data:`` line, blank line."""
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"
