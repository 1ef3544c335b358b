"""The gpt-image-2 clients: :class:`AsyncImagesClient` does the work, :class:`ImagesClient` runs
the same code from synchronous callers on a private event-loop thread, so every operation is
written once.

Retries are ours alone (httpx's transport never retries): 429/500/502/503 and failures to connect
are retried with backoff; a request that was sent but got no complete answer may already be billed,
so it raises :class:`~prefect_gpt_image.api.errors.OutcomeUnknownError` unless the policy opts in.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import inspect
import json
import logging
import ssl
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import cache, partial
from typing import Any, TypeVar

import httpx
from httpx_sse import EventSource, SSEError
from pydantic import SecretStr, ValidationError

from .config import ClientConfig, RetryPolicy, Timeouts
from .download import download_image, verify_in_worker
from .errors import (
    APIStatusError,
    ConnectionFailedError,
    DownloadError,
    GptImageError,
    InvalidResponseError,
    OutcomeUnknownError,
    ResponseTimeoutError,
    error_for_status,
    request_id_from,
)
from .images import ImageSource
from .loops import LoopThread, close_with_loop
from .models import (
    EditRequest,
    GeneratedImage,
    GenerateRequest,
    ImageItem,
    ImageRequest,
    ImagesResponse,
    PartialImage,
    StreamEvent,
    Usage,
)

__all__ = [
    "AnsweredCallback",
    "AsyncImagesClient",
    "ImagesClient",
    "PartialCallback",
    "RetryCallback",
    "RetryEvent",
]

log = logging.getLogger("prefect_gpt_image.api")

T = TypeVar("T")
PartialCallback = Callable[[PartialImage], "Awaitable[None] | None"]
"""Called with each partial image of a stream as it arrives (sync or async)."""


@dataclass(frozen=True)
class RetryEvent:
    """One retry decision: which attempt failed, with what, and how long until the next."""

    attempt: int
    error: GptImageError
    wait_seconds: float


RetryCallback = Callable[[RetryEvent], None]
"""Told about every retry, e.g. to log it where the user sees it."""

AnsweredCallback = Callable[[], "Awaitable[None] | None"]
"""Called (sync or async) once the API gave a valid answer, before results are downloaded."""


@cache
def _tls_context() -> ssl.SSLContext:
    """The TLS settings every client of this process shares (httpx's defaults: system-trusted
    certifi roots). Made once: loading the roots costs tens of milliseconds per client."""
    return httpx.create_ssl_context()


class AsyncImagesClient:
    """Async client for ``POST /images/generations`` and ``POST /images/edits``.

    Configure with keyword arguments or a :class:`ClientConfig`; without a key it reads
    ``GPT_IMAGE_API_KEY`` / ``GPT_IMAGE_BASE_URL``, else ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL``,
    each key sent only to its own pair's URL (:func:`~prefect_gpt_image.api.config.resolve_key`).
    Use as ``async with AsyncImagesClient() as client: images = await client.generate("a cat")``.
    """

    def __init__(
        self,
        api_key: str | SecretStr | None = None,
        *,
        base_url: str | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        allowed_media_hosts: Sequence[str] | None = None,
        max_download_bytes: int | None = None,
        spool_dir: str | None = None,
        config: ClientConfig | None = None,
    ) -> None:
        overrides: dict[str, Any] = {
            "api_key": SecretStr(api_key) if isinstance(api_key, str) else api_key,
            "base_url": base_url,
            "timeouts": timeouts,
            "retry": retry,
            "allowed_media_hosts": tuple(allowed_media_hosts) if allowed_media_hosts is not None else None,
            "max_download_bytes": max_download_bytes,
            "spool_dir": spool_dir,
        }
        if config is not None:
            given = {k: v for k, v in overrides.items() if v is not None}
            self.config = config.with_options(**given) if given else config
        else:
            self.config = ClientConfig.from_env(**overrides)
        t = self.config.timeouts
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(t.read, connect=t.connect, write=t.write, pool=t.pool),
            limits=httpx.Limits(
                max_connections=self.config.max_connections,
                max_keepalive_connections=self.config.max_connections,
            ),
            transport=httpx.AsyncHTTPTransport(retries=0, verify=_tls_context()),
            follow_redirects=False,
            headers={"User-Agent": self.config.user_agent},
        )
        self._closer: AsyncGenerator[None, None] | None = None

    def __repr__(self) -> str:
        return f"AsyncImagesClient(base_url={self.config.base_url!r})"

    async def __aenter__(self) -> AsyncImagesClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def generate(
        self,
        prompt: str,
        *,
        on_partial: PartialCallback | None = None,
        on_retry: RetryCallback | None = None,
        **options: Any,
    ) -> list[GeneratedImage]:
        """Generate images from ``prompt``; ``options`` are the API's fields (``size``, ``n``, ...).

        Validates everything before the request is sent (RequestValidationError).
        """
        request = GenerateRequest.build(prompt=prompt, **options)
        return await self.send(request, on_partial=on_partial, on_retry=on_retry)

    async def edit(
        self,
        prompt: str,
        images: ImageSource | Sequence[ImageSource],
        mask: ImageSource | None = None,
        *,
        on_partial: PartialCallback | None = None,
        on_retry: RetryCallback | None = None,
        **options: Any,
    ) -> list[GeneratedImage]:
        """Edit 1..16 ``images`` (paths, bytes or binary files) with an optional PNG ``mask``."""
        request = EditRequest.build_with_files(images, mask, prompt=prompt, **options)
        return await self.send(request, on_partial=on_partial, on_retry=on_retry)

    async def send(
        self,
        request: GenerateRequest | EditRequest,
        *,
        on_partial: PartialCallback | None = None,
        on_retry: RetryCallback | None = None,
        on_answered: AnsweredCallback | None = None,
    ) -> list[GeneratedImage]:
        """Send an already validated request and return its images, downloaded and checked.

        ``on_answered`` is awaited once, as soon as the API gave a valid answer (before result
        URLs are downloaded and images checked): no further API request is made by this call,
        so a caller can give back its API concurrency slot then.
        """
        if self._closer is None:  # first use: closed with this loop if never closed by hand
            self._closer = close_with_loop(self.aclose)
        build = partial(self._build_request, request)
        policy = self.config.retry
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._attempt(build(), request, on_partial, on_answered)
            except GptImageError as exc:
                self._redact(exc)
                retry = exc.retryable or (
                    policy.retry_outcome_unknown and isinstance(exc, OutcomeUnknownError)
                )
                retry_after = exc.retry_after if isinstance(exc, APIStatusError) else None
                wait = policy.backoff(attempt, retry_after)
                elapsed = time.monotonic() - started
                if not retry or attempt >= policy.max_attempts or elapsed + wait > policy.max_total_seconds:
                    log.warning(
                        "%s failed after %d attempt(s): %s",
                        _endpoint(request),
                        attempt,
                        exc,
                    )
                    raise
                log.warning(
                    "%s attempt %d failed: %s; retrying in %.2fs",
                    _endpoint(request),
                    attempt,
                    exc,
                    wait,
                )
                if on_retry is not None:
                    on_retry(RetryEvent(attempt, exc, wait))
                await asyncio.sleep(wait)

    # -- one attempt ----------------------------------------------------------------------------

    def _build_request(self, request: GenerateRequest | EditRequest) -> httpx.Request:
        url = f"{self.config.base_url}/{_endpoint(request)}"
        headers = {"Authorization": f"Bearer {self.config.api_key.get_secret_value()}"}
        timeout = self._http.timeout
        if request.stream:
            t = self.config.timeouts
            timeout = httpx.Timeout(t.stream_idle, connect=t.connect, write=t.write, pool=t.pool)
            headers["Accept"] = "text/event-stream"
        if isinstance(request, EditRequest):
            files: list[tuple[str, tuple[str, bytes, str]]] = [
                ("image[]", (img.filename, img.data, img.content_type)) for img in request.images
            ]
            if request.mask is not None:
                m = request.mask
                files.append(("mask", (m.filename, m.data, m.content_type)))
            built = self._http.build_request(
                "POST",
                url,
                data=request.form_fields(),
                files=files,
                headers=headers,
                timeout=timeout,
            )
            # One buffer, sent in one write (streamed, each field's headers and value is a write
            # of its own under a cancel scope: a few milliseconds of event loop per edit).
            built.read()
            return built
        return self._http.build_request(
            "POST", url, json=request.wire_fields(), headers=headers, timeout=timeout
        )

    async def _attempt(
        self,
        http_request: httpx.Request,
        request: GenerateRequest | EditRequest,
        on_partial: PartialCallback | None,
        on_answered: AnsweredCallback | None = None,
    ) -> list[GeneratedImage]:
        try:
            response = await self._http.send(http_request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise ConnectionFailedError(
                f"could not connect to {self.config.base_url}: {type(exc).__name__}"
            ) from None
        except httpx.TimeoutException as exc:
            raise ResponseTimeoutError(
                f"no answer within the timeout ({type(exc).__name__}); the request may have been billed"
            ) from None
        except httpx.TransportError as exc:
            raise OutcomeUnknownError(
                f"connection lost after the request was sent ({type(exc).__name__}); it may have been billed"
            ) from None
        request_id = request_id_from(response.headers)
        try:
            if response.status_code != 200:
                raise await self._status_error(response, request_id)
            content_type = response.headers.get("content-type", "")
            if content_type.startswith("text/event-stream"):
                return await self._read_stream(response, request, request_id, on_partial, on_answered)
            body = await _read_body(response, request_id)
            return await self._materialize_response(body, request, request_id, on_answered)
        finally:
            await response.aclose()

    async def _status_error(self, response: httpx.Response, request_id: str | None) -> APIStatusError:
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
        if response.status_code not in self.config.retry.retry_statuses:
            error.retryable = False
        return error

    async def _read_stream(
        self,
        response: httpx.Response,
        request: ImageRequest,
        request_id: str | None,
        on_partial: PartialCallback | None,
        on_answered: AnsweredCallback | None = None,
    ) -> list[GeneratedImage]:
        completed: StreamEvent | None = None
        try:
            with _reading("the stream", request_id):
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
                            await _call(on_partial, await _partial(event, request, request_id))
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
            await _call0(on_answered)
        item = ImageItem(url=completed.url, b64_json=completed.b64_json)
        declared = completed.output_format or request.format
        try:
            image = await self._materialize_item(
                item, 0, request, request_id, declared, completed.size, completed.usage
            )
        except DownloadError as exc:
            raise _not_delivered(exc, [], 1, request_id) from None
        return [image]

    async def _materialize_response(
        self,
        body: bytes,
        request: ImageRequest,
        request_id: str | None,
        on_answered: AnsweredCallback | None = None,
    ) -> list[GeneratedImage]:
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
            await _call0(on_answered)
        declared = parsed.output_format or request.format
        results = await asyncio.gather(
            *(
                self._materialize_item(item, i, request, request_id, declared, parsed.size, parsed.usage)
                for i, item in enumerate(parsed.data)
            ),
            return_exceptions=True,
        )
        images = [r for r in results if isinstance(r, GeneratedImage)]
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            first = errors[0]
            if not isinstance(first, DownloadError):
                raise first
            raise _not_delivered(first, images, len(results), request_id)
        return images

    async def _materialize_item(
        self,
        item: ImageItem,
        index: int,
        request: ImageRequest,
        request_id: str | None,
        declared_format: str,
        declared_size: str | None,
        usage: Usage | None,
    ) -> GeneratedImage:
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
            self._http,
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

    def _redact(self, exc: GptImageError) -> None:
        """Remove the API key from an error message, whatever the server echoed."""
        key = self.config.api_key.get_secret_value()
        if key and key in exc.message:
            exc.message = exc.message.replace(key, "***")
            exc.args = (exc.message,)


class ImagesClient(AbstractContextManager["ImagesClient"]):
    """Synchronous client with the same methods as :class:`AsyncImagesClient`.

    It runs the async client on a private event-loop thread, so one implementation serves both.
    Partial-image callbacks run on that thread. Close it (or use ``with``) to free the
    connections at once; a client never closed is closed when collected or at exit, and never
    keeps the interpreter from exiting.
    """

    def __init__(self, api_key: str | SecretStr | None = None, **kwargs: Any) -> None:
        self._loop: LoopThread | None = LoopThread("prefect-gpt-image-client")
        try:
            self._async: AsyncImagesClient = self._loop.run(_make_async_client(api_key, kwargs))
        except BaseException:
            self._loop.close()
            raise
        self._loop.on_close(self._async.aclose)
        self.config = self._async.config
        # Never closed: the connections are closed when the client is collected or at exit.
        self._finalizer = weakref.finalize(self, self._loop.close)

    def __repr__(self) -> str:
        return f"ImagesClient(base_url={self.config.base_url!r})"

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool and stop the event-loop thread."""
        self._finalizer()
        self._loop = None

    def generate(self, prompt: str, **options: Any) -> list[GeneratedImage]:
        """Generate images; see :meth:`AsyncImagesClient.generate`."""
        return self._run(partial(self._async.generate, prompt, **options))

    def edit(
        self,
        prompt: str,
        images: ImageSource | Sequence[ImageSource],
        mask: ImageSource | None = None,
        **options: Any,
    ) -> list[GeneratedImage]:
        """Edit images; see :meth:`AsyncImagesClient.edit`."""
        return self._run(partial(self._async.edit, prompt, images, mask, **options))

    def send(self, request: GenerateRequest | EditRequest, **kwargs: Any) -> list[GeneratedImage]:
        """Send a validated request; see :meth:`AsyncImagesClient.send`."""
        return self._run(partial(self._async.send, request, **kwargs))

    def _run(self, fn: Callable[[], Awaitable[T]]) -> T:
        if self._loop is None:
            raise RuntimeError("the client is closed")
        return self._loop.run(_awaited(fn))


async def _awaited(fn: Callable[[], Awaitable[T]]) -> T:
    return await fn()


async def _make_async_client(api_key: str | SecretStr | None, kwargs: dict[str, Any]) -> AsyncImagesClient:
    return AsyncImagesClient(api_key, **kwargs)


def _not_delivered(
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


async def _read_body(response: httpx.Response, request_id: str | None) -> bytes:
    with _reading("the answer", request_id):
        return await response.aread()


@contextmanager
def _reading(what: str, request_id: str | None) -> Iterator[None]:
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


async def _call0(callback: AnsweredCallback) -> None:
    result = callback()
    if inspect.isawaitable(result):
        await result


async def _call(callback: PartialCallback, value: PartialImage) -> None:
    result = callback(value)
    if inspect.isawaitable(result):
        await result


async def _partial(event: StreamEvent, request: ImageRequest, request_id: str | None) -> PartialImage:
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


def _size_tuple(size: str | None) -> tuple[int, int] | None:
    if not size or "x" not in size:
        return None
    w, _, h = size.partition("x")
    return (int(w), int(h)) if w.isdigit() and h.isdigit() else None


def _endpoint(request: ImageRequest) -> str:
    return "images/edits" if isinstance(request, EditRequest) else "images/generations"
