"""The retry loop of every call: which failures are tried again, how long to wait, when to stop.

Retries are ours alone (httpx's transport never retries). An error is retried when it is
``retryable`` (429/500/502/503 and failures to connect), or when it is
:class:`~prefect_gpt_image.api.errors.OutcomeUnknownError` and the policy opts in (such a request
may already be billed). The loop stops at ``max_attempts`` or when the next wait would pass
``max_total_seconds``; ``Retry-After`` is honoured through :meth:`RetryPolicy.backoff`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .callbacks import RetryCallback, RetryEvent
from .config import RetryPolicy
from .errors import APIStatusError, GptImageError, OutcomeUnknownError

__all__ = ["with_retries"]

log = logging.getLogger("prefect_gpt_image.api")

T = TypeVar("T")


async def with_retries(
    attempt: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    what: str,
    redact: Callable[[GptImageError], None],
    on_retry: RetryCallback | None = None,
) -> T:
    """Await ``attempt()`` until it succeeds or ``policy`` gives up; ``what`` names it in logs.

    Every error is passed through ``redact`` (which removes the key) before it is logged,
    reported to ``on_retry`` or raised.
    """
    started = time.monotonic()
    number = 0
    while True:
        number += 1
        try:
            return await attempt()
        except GptImageError as exc:
            redact(exc)
            retry = exc.retryable or (policy.retry_outcome_unknown and isinstance(exc, OutcomeUnknownError))
            retry_after = exc.retry_after if isinstance(exc, APIStatusError) else None
            wait = policy.backoff(number, retry_after)
            elapsed = time.monotonic() - started
            if not retry or number >= policy.max_attempts or elapsed + wait > policy.max_total_seconds:
                log.warning("%s failed after %d attempt(s): %s", what, number, exc)
                raise
            log.warning("%s attempt %d failed: %s; retrying in %.2fs", what, number, exc, wait)
            if on_retry is not None:
                on_retry(RetryEvent(number, exc, wait))
            await asyncio.sleep(wait)
