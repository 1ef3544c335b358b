"""Reading a streamed (SSE) answer: partial images go to the caller as they arrive, the
``*.completed`` event is the result, an ``error`` event raises.

A stream that ends without a completed image was sent and may be billed, so it is
:class:`~prefect_gpt_image.api.errors.OutcomeUnknownError`.
"""

from __future__ import annotations

import base64
import binascii

import httpx
from httpx_sse import EventSource, SSEError
from pydantic import ValidationError

from .answers import Answer, not_delivered, reading
from .callbacks import AnsweredCallback, PartialCallback, notify
from .download import verify_in_worker
from .errors import DownloadError, InvalidResponseError, OutcomeUnknownError, error_for_status
from .responses import GeneratedImage, ImageItem, PartialImage, StreamEvent

__all__ = ["read_stream"]


async def read_stream(
    answer: Answer,
    response: httpx.Response,
    on_partial: PartialCallback | None,
    on_answered: AnsweredCallback | None = None,
) -> list[GeneratedImage]:
    """The one image of a streamed ``response``, fetched and checked like a JSON answer's."""
    request_id = answer.request_id
    completed: StreamEvent | None = None
    try:
        with reading("the stream", request_id):
            async for sse in EventSource(response).aiter_sse():
                if sse.data.strip() == "[DONE]":
                    break
                if not sse.data:
                    continue
                try:
                    event = StreamEvent.model_validate_json(sse.data)
                except ValidationError:
                    raise InvalidResponseError(
                        f"malformed stream event {sse.event!r}", request_id=request_id
                    ) from None
                if not event.type and sse.event:
                    event = event.model_copy(update={"type": sse.event})
                if event.error is not None or event.type == "error" or sse.event == "error":
                    raise error_for_status(None, {"error": event.error or {}}, request_id=request_id)
                if event.is_partial and event.b64_json:
                    if on_partial is not None:
                        await notify(on_partial, await _partial(event, request_id))
                elif event.is_completed:
                    completed = event
                    break
    except SSEError as exc:
        raise InvalidResponseError(f"malformed stream: {exc}", request_id=request_id) from None
    if completed is None:
        raise OutcomeUnknownError(
            "stream ended without a completed image; it may have been billed",
            request_id=request_id,
        )
    if on_answered is not None:
        await notify(on_answered)
    item = ImageItem(url=completed.url, b64_json=completed.b64_json)
    declared = completed.output_format or answer.request.format
    try:
        image = await answer.image(item, 0, declared, completed.size, completed.usage)
    except DownloadError as exc:
        raise not_delivered(exc, [], 1, request_id) from None
    return [image]


async def _partial(event: StreamEvent, request_id: str | None) -> PartialImage:
    try:
        data = base64.b64decode(event.b64_json or "", validate=True)
        fmt, width, height = await verify_in_worker(data, expected_format=None, expected_size=None)
    except (binascii.Error, ValueError) as exc:
        raise InvalidResponseError(f"partial image is not valid: {exc}", request_id=request_id) from None
    return PartialImage(
        index=event.partial_image_index or 0,
        data=data,
        format=fmt,
        width=width,
        height=height,
        request_id=request_id,
    )
