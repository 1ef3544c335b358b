"""The gpt-image-2 clients: :class:`AsyncImagesClient` does the work, :class:`ImagesClient` runs
the same code from synchronous callers on a private event-loop thread, so every operation is
written once.

One call is: build the HTTP request (:mod:`.wire`), send it and map transport failures (here),
read the answer (:mod:`.answers`, or :mod:`.streaming` for SSE), all inside the retry loop
(:mod:`.retrying`). Retries are ours alone (httpx's transport never retries): 429/500/502/503 and
failures to connect are retried with backoff; a request that was sent but got no complete answer
may already be billed, so it raises :class:`~prefect_gpt_image.api.errors.OutcomeUnknownError`
unless the policy opts in. Every error of this package is described in :mod:`.errors`.
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from functools import partial
from typing import Any, TypeVar

import httpx
from pydantic import SecretStr

from .answers import Answer, read_body, status_error
from .callbacks import AnsweredCallback, PartialCallback, RetryCallback, RetryEvent
from .config import ClientConfig, RetryPolicy, Timeouts
from .errors import (
    ConnectionFailedError,
    GptImageError,
    OutcomeUnknownError,
    ResponseTimeoutError,
    request_id_from,
)
from .images import ImageSource
from .loops import LoopThread, close_with_loop
from .models import EditRequest, GenerateRequest
from .pool import pooled_transport
from .responses import GeneratedImage
from .retrying import with_retries
from .streaming import read_stream
from .wire import build_http_request, endpoint, tls_context

__all__ = [
    "AnsweredCallback",
    "AsyncImagesClient",
    "ImagesClient",
    "PartialCallback",
    "RetryCallback",
    "RetryEvent",
]

T = TypeVar("T")


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
        limits = httpx.Limits(
            max_connections=self.config.max_connections,
            max_keepalive_connections=self.config.max_connections,
        )
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(t.read, connect=t.connect, write=t.write, pool=t.pool),
            transport=pooled_transport(limits, tls_context()),
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

        async def attempt() -> list[GeneratedImage]:
            http_request = build_http_request(self._http, self.config, request)
            return await self._attempt(http_request, request, on_partial, on_answered)

        return await with_retries(
            attempt,
            policy=self.config.retry,
            what=endpoint(request),
            redact=self._redact,
            on_retry=on_retry,
        )

    async def _attempt(
        self,
        http_request: httpx.Request,
        request: GenerateRequest | EditRequest,
        on_partial: PartialCallback | None,
        on_answered: AnsweredCallback | None = None,
    ) -> list[GeneratedImage]:
        """One attempt: send, then read the answer; a failure before any answer byte is mapped
        to "could not connect" (never billed) or "sent, outcome unknown" (maybe billed)."""
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
                raise await status_error(response, request_id, self.config.retry.retry_statuses)
            answer = Answer(self._http, self.config, request, request_id)
            content_type = response.headers.get("content-type", "")
            if content_type.startswith("text/event-stream"):
                return await read_stream(answer, response, on_partial, on_answered)
            return await answer.images(await read_body(response, request_id), on_answered)
        finally:
            await response.aclose()

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
