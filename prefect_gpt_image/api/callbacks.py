"""What a caller can be told during one call: partial images, retries, and that the API answered.

Each callback may be sync or async; :func:`notify` calls it and awaits it when it returns an
awaitable, so callers write whichever suits them.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .errors import GptImageError
from .responses import PartialImage

__all__ = ["AnsweredCallback", "PartialCallback", "RetryCallback", "RetryEvent", "notify"]

PartialCallback = Callable[[PartialImage], "Awaitable[None] | None"]
"""Called with each partial image of a stream as it arrives (sync or async)."""

AnsweredCallback = Callable[[], "Awaitable[None] | None"]
"""Called (sync or async) once the API gave a valid answer, before results are downloaded."""


@dataclass(frozen=True)
class RetryEvent:
    """One retry decision: which attempt failed, with what, and how long until the next."""

    attempt: int
    error: GptImageError
    wait_seconds: float


RetryCallback = Callable[[RetryEvent], None]
"""Told about every retry, e.g. to log it where the user sees it."""


async def notify(callback: Callable[..., Awaitable[None] | None], *args: object) -> None:
    """Call ``callback(*args)`` and await its result when it is awaitable."""
    result = callback(*args)
    if inspect.isawaitable(result):
        await result
