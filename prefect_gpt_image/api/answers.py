"""Reading the API's answer to one attempt: an error status, or a 200 JSON images response whose
items are decoded (``b64_json``) or downloaded (``url``) and checked.

Once the server started answering, the request may already be billed: a failure while reading is
:class:`~prefect_gpt_image.api.errors.OutcomeUnknownError` (or a timeout), never "not sent", and
images billed but not delivered are counted on the
:class:`~prefect_gpt_image.api.errors.DownloadError`. Streams are read in
:mod:`prefect_gpt_image.api.streaming`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import ValidationError

from .callbacks import AnsweredCallback, notify
from .config import ClientConfig, RetryPolicy
from .download import download_image, verify_in_worker
from .errors import (
    APIStatusError,
    DownloadError,
    InvalidResponseError,
    OutcomeUnknownError,
    ResponseTimeoutError,
    error_for_status,
)
from .models import ImageRequest
from .responses import GeneratedImage, ImageItem, ImagesResponse, Usage

__all__ = ["Answer", "not_delivered", "read_body", "reading", "status_error"]


@dataclass(frozen=True)
class Answer:
    """One answer being read: the pool and settings its images are downloaded with, the request
    it answers and the request id the server gave it."""

    http: httpx.AsyncClient
    config: ClientConfig
    request: ImageRequest
    request_id: str | None

    async def images(self, body: bytes, on_answered: AnsweredCallback | None) -> list[GeneratedImage]:
        """The images of a 200 JSON ``body``, all fetched and checked concurrently."""
        request_id = self.request_id
        try:
            parsed = ImagesResponse.model_validate_json(body)
        except ValidationError:
            raise InvalidResponseError(
                "the API answered 200 with a body that is not an images response; it may have been billed",
                request_id=request_id,
            ) from None
        if not parsed.data:
            raise InvalidResponseError("the API answered with no images", request_id=request_id)
        if on_answered is not None:
            await notify(on_answered)
        declared = parsed.output_format or self.request.format
        results = await asyncio.gather(
            *(self.image(item, i, declared, parsed.size, parsed.usage) for i, item in enumerate(parsed.data)),
            return_exceptions=True,
        )
        images = [r for r in results if isinstance(r, GeneratedImage)]
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            first = errors[0]
            if not isinstance(first, DownloadError):
                raise first
            raise not_delivered(first, images, len(results), request_id)
        return images

    async def image(
        self,
        item: ImageItem,
        index: int,
        declared_format: str,
        declared_size: str | None,
        usage: Usage | None,
    ) -> GeneratedImage:
        """Item ``index`` of the answer: decoded or downloaded, then checked against the format
        and size the answer (or the request) declared."""
        request, request_id = self.request, self.request_id
        expected_size = request.dimensions or _size_tuple(declared_size)
        if item.b64_json:
            try:
                data = base64.b64decode(item.b64_json, validate=True)
            except (binascii.Error, ValueError):
                raise DownloadError("b64_json is not valid base64", request_id=request_id) from None
            if len(data) > self.config.max_download_bytes:
                raise DownloadError("b64_json image exceeds the size cap", request_id=request_id)
            try:
                fmt, width, height = await verify_in_worker(
                    data, expected_format=declared_format, expected_size=expected_size
                )
            except ValueError as exc:
                raise DownloadError(f"b64_json is not a valid image: {exc}", request_id=request_id) from None
            return GeneratedImage(
                data=data,
                path=None,
                format=fmt,
                width=width,
                height=height,
                sha256=hashlib.sha256(data).hexdigest(),
                size_bytes=len(data),
                request_id=request_id,
                request=request,
                index=index,
                revised_prompt=item.revised_prompt,
                usage=usage,
            )
        if not item.url:
            raise InvalidResponseError(f"image {index} has neither url nor b64_json", request_id=request_id)
        got = await download_image(
            self.http,
            item.url,
            self.config,
            expected_format=declared_format,
            expected_size=expected_size,
            request_id=request_id,
        )
        return GeneratedImage(
            data=got.data,
            path=got.path,
            format=got.format,
            width=got.width,
            height=got.height,
            sha256=got.sha256,
            size_bytes=got.size_bytes,
            request_id=request_id,
            request=request,
            index=index,
            url=item.url,
            revised_prompt=item.revised_prompt,
            usage=usage,
        )


async def status_error(
    response: httpx.Response, request_id: str | None, retry_statuses: tuple[int, ...]
) -> APIStatusError:
    """The error for a non-200 answer, with its ``Retry-After`` and retryable only when its
    status is one of ``retry_statuses``."""
    try:
        raw = await response.aread()
        body: Any = json.loads(raw) if raw else None
    except (httpx.TransportError, ValueError):
        body = None
    error = error_for_status(
        response.status_code,
        body,
        request_id=request_id,
        fallback_message=response.reason_phrase or "",
    )
    error.retry_after = RetryPolicy.retry_after(dict(response.headers))
    if response.status_code not in retry_statuses:
        error.retryable = False
    return error


def not_delivered(
    error: DownloadError, received: list[GeneratedImage], total: int, request_id: str | None
) -> DownloadError:
    """``error`` of an answered request, saying how many of its ``total`` images were billed but
    not delivered (the ``received`` ones are attached, so a caller can still keep them)."""
    error.images = received
    error.undelivered = total - len(received)
    error.message = (
        f"{error.undelivered} of {total} image(s) billed but not delivered "
        f"(request id {request_id or 'unknown'}): {error.message}"
    )
    return error


async def read_body(response: httpx.Response, request_id: str | None) -> bytes:
    """The whole body of an answer the server started."""
    with reading("the answer", request_id):
        return await response.aread()


@contextmanager
def reading(what: str, request_id: str | None) -> Iterator[None]:
    """Map failures while reading an answer the server started: it may already be billed."""
    try:
        yield
    except httpx.TimeoutException:
        raise ResponseTimeoutError(
            f"{what} stalled beyond the read/stream-idle timeout; it may have been billed",
            request_id=request_id,
        ) from None
    except (httpx.TransportError, httpx.StreamError) as exc:
        raise OutcomeUnknownError(
            f"connection lost while reading {what} ({type(exc).__name__}); it may have been billed",
            request_id=request_id,
        ) from None


def _size_tuple(size: str | None) -> tuple[int, int] | None:
    if not size or "x" not in size:
        return None
    w, _, h = size.partition("x")
    return (int(w), int(h)) if w.isdigit() and h.isdigit() else None
