"""When Prefect may retry an image task: only when a retry cannot pay twice unseen.

The API client already retries transient API errors (429, 500-503, failures to connect) with
backoff and logs each retry in the run log. A Prefect task retry runs the whole task again, so it
is allowed only for failures after which nothing paid can be lost or paid again:

* store failures (:class:`~.errors.ImageStorageError`, including :class:`~.errors.ImagesSpooledError`:
  paid images are in the spool and the retry stores them without a call), except configuration
  mistakes (``configuration``: no credentials, a wrong key, access denied, no such bucket, ...;
  see :mod:`prefect_gpt_image.storage.diagnosis`), which would fail the same way ~35 s later;
* API errors that were not billed and may pass later (``retryable`` and not ``maybe_billed``:
  429, 5xx, :class:`~prefect_gpt_image.api.ConnectionFailedError`) and lock timeouts;
* errors that may have been billed (``maybe_billed``: :class:`~prefect_gpt_image.api.OutcomeUnknownError`,
  stream errors, lost downloads) only when the settings opt in with ``retry_outcome_unknown``.

Never: 400-class errors, storage configuration mistakes, validation, budget caps, unreadable
inputs, lost images, or anything unexpected. :func:`retry_condition` is a plain function because
Prefect 3.8.8 silently ignores a ``retry_condition_fn`` that is a callable object, bound method or
``functools.partial``.

An attempt that may have been billed and was retried anyway (``retry_outcome_unknown``) is
reported: the calls made inside :func:`collect_maybe_billed` note its request id there (the batch
flow lists them per row), so what was paid for adds up. So is an answer whose images were billed
but not delivered (a result URL given up): its request id and how many images it lost
(:func:`note_undelivered`), retried or not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from prefect_gpt_image.api.errors import GptImageError

from .bill import Bill
from .errors import CacheLockTimeoutError, ImageStorageError

__all__ = [
    "RETRIES",
    "RETRY_DELAYS",
    "BilledAttempts",
    "allow_outcome_unknown_retry",
    "collect_maybe_billed",
    "current_bill",
    "is_safe_to_retry",
    "note_maybe_billed",
    "note_undelivered",
    "retry_condition",
    "with_retries",
]

RETRIES = 2
"""How many times an image call is run again after a failure that is safe to retry."""
RETRY_DELAYS: tuple[float, ...] = (5.0, 30.0)
"""Seconds before each of those runs (the image tasks' Prefect ``retry_delay_seconds``)."""
T = TypeVar("T")

_OPT_IN_ATTRIBUTE = "_prefect_gpt_image_retry_outcome_unknown"


class BilledAttempts(list[str]):
    """Request ids of attempts that were (or may have been) billed and brought no stored image,
    in the order noted; ``undelivered`` maps those whose images were billed but not delivered
    (an answered request whose result URL was given up) to how many images each lost, which cost
    ``undelivered_cost``; ``bill`` is what the calls paid (those images included) and found in the
    store (see :mod:`.bill`)."""

    def __init__(self) -> None:
        super().__init__()
        self.undelivered: dict[str, int] = {}
        self.undelivered_cost = 0.0
        self.bill = Bill()

    def besides(self, request_id: str | None) -> list[str]:
        """The ids to report for a call that failed with ``request_id``: all of them, except that
        one when it is merely outcome-unknown (the call's own request id column shows it)."""
        return [rid for rid in self if rid != request_id or rid in self.undelivered]

    @property
    def undelivered_images(self) -> int:
        """Images billed but not delivered."""
        return sum(self.undelivered.values())


_MAYBE_BILLED: ContextVar[BilledAttempts | None] = ContextVar("prefect_gpt_image_maybe_billed", default=None)


@contextmanager
def collect_maybe_billed() -> Iterator[BilledAttempts]:
    """Collect the request ids of the attempts, of the image calls made inside the block, that were
    sent, may have been billed, brought no image and were retried (``retry_outcome_unknown``), and
    of the answers whose images were billed but not delivered (:func:`note_undelivered`)."""
    found = BilledAttempts()
    token = _MAYBE_BILLED.set(found)
    try:
        yield found
    finally:
        _MAYBE_BILLED.reset(token)


def note_maybe_billed(error: GptImageError) -> None:
    """Note ``error``'s attempt in the enclosing :func:`collect_maybe_billed`, if any."""
    found = _MAYBE_BILLED.get()
    if found is not None:
        found.append(error.request_id or "unknown")


def note_undelivered(error: GptImageError, images: int, cost: float, estimate: float) -> None:
    """Note that ``error``'s answer had ``images`` billed but not delivered, costing ``cost``
    (``estimate`` by the price model), in the enclosing :func:`collect_maybe_billed`, if any."""
    found = _MAYBE_BILLED.get()
    if found is not None:
        rid = error.request_id or "unknown"
        if rid not in found:
            found.append(rid)
        found.undelivered[rid] = found.undelivered.get(rid, 0) + images
        found.undelivered_cost += cost
        found.bill.add(Bill(paid=cost, paid_images=images, estimate=estimate))


def current_bill() -> Bill | None:
    """The bill of the enclosing :func:`collect_maybe_billed`, if any: where a call notes what it
    paid or found in the store."""
    found = _MAYBE_BILLED.get()
    return found.bill if found is not None else None


def allow_outcome_unknown_retry(error: BaseException) -> None:
    """Mark ``error`` as raised under ``retry_outcome_unknown=True``: a ``maybe_billed`` API error
    may then be retried (the user accepted paying twice)."""
    setattr(error, _OPT_IN_ATTRIBUTE, True)


def is_safe_to_retry(error: BaseException | None) -> bool:
    """Whether running the image task again after ``error`` cannot pay twice unseen."""
    if isinstance(error, ImageStorageError):
        return not error.configuration
    if isinstance(error, CacheLockTimeoutError):
        return True
    if isinstance(error, GptImageError):
        if error.maybe_billed:
            return bool(getattr(error, _OPT_IN_ATTRIBUTE, False))
        return error.retryable
    return False


def retry_condition(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn`` of the image tasks: see :func:`is_safe_to_retry`."""
    data = getattr(state, "data", None)
    return is_safe_to_retry(data if isinstance(data, BaseException) else None)


async def with_retries(call: Callable[[], Awaitable[T]], *, logger: Any, what: str) -> T:
    """``call()`` (one image call), run again after a failure :func:`is_safe_to_retry` allows, as
    the image tasks' Prefect retries do (:data:`RETRIES` times, :data:`RETRY_DELAYS` apart): for
    a batch row, which runs without a task run of its own."""
    for attempt in range(RETRIES + 1):
        try:
            return await call()
        except Exception as exc:
            if attempt == RETRIES or not is_safe_to_retry(exc):
                raise
            delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
            logger.warning(
                "%s failed with %s: %s - Retry %d/%d will start in %.0f s",
                what,
                type(exc).__name__,
                exc,
                attempt + 1,
                RETRIES,
                delay,
            )
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")
