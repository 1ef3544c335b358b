"""One paid image call, end to end: where to read the order of a call.

Order of a call (all of it under the lock of its cache key), with the module of each step::

    check the store once per process  -> ImageStorageError saying what to set    (.store_check)
    take the lock of the cache key            (.locks / .redis_locks)
    whole cache record in the store?  -> return its refs, no call, no cost      (.cache)
    entry in the local spool?    -> store it, record it, clear it, no cost     (.spool)
    reserve budget               -> BudgetExceededError before anything is sent (.budget)
    local gate + global limit (+ rate limit)                                    (.concurrency)
    the paid call (client retries are logged)                                   (.clients)
    store the images and the cache record (with their manifests) at once        (.delivery)
        on a store failure       -> spool the bytes, raise ImagesSpooledError (a rerun stores them)
        some result URLs given up -> store the images that arrived, record them, raise
                                    PartialDeliveryError (the rest: billed, not delivered)
    artifacts (best effort)                                                     (.artifacts)

:func:`run_image_call` takes the lock and ``_locked_call`` does the rest, in that order; the
image tasks call it with Prefect's retries, batch rows and chain steps through
:func:`~.rows.run_row_call` with the same retry rules (:mod:`.retry`).

A partial record (an answer of ``n`` images some of which never arrived, see
:func:`~.cache.read_entry`) is never served as the answer: the next run asks the API only for the
missing images (``n`` = how many), stores them under the same key and makes the record whole, so
the images already stored are not paid for again.

The paid call's concurrency slot is released as soon as the API answered: downloading the result
URLs, checking the images and storing them do not hold API capacity.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import anyio

from prefect_gpt_image.api import (
    DownloadError,
    EditRequest,
    GeneratedImage,
    GenerateRequest,
    GptImageError,
    PartialCallback,
    RetryEvent,
)
from prefect_gpt_image.blocks import GptImageCredentials, GptImageSettings
from prefect_gpt_image.storage import ImageStore

from . import budget, spool
from .bill import Bill
from .cache import CacheRecord, cache_key, read_entry
from .clients import discard_downloads, shared_client
from .concurrency import api_slot
from .context import call_prices, client_config, in_batch, in_thread, refresh_requested, run_ids, run_logger
from .delivery import (
    ImageCost,
    describe_images,
    publish_call_artifacts,
    spool_after_failure,
    store_from_spool,
    store_result,
    with_links,
)
from .errors import (
    BudgetExceededError,
    CacheLockTimeoutError,
    ImagesLostError,
    PartialDeliveryError,
)
from .locks import get_lock_manager, new_holder
from .refs import ImageRef
from .retry import allow_outcome_unknown_retry, current_bill, note_maybe_billed, note_undelivered
from .store_check import NOTHING_SENT, check_store, storage_error

__all__ = ["CallResult", "run_image_call"]

_T = TypeVar("_T")


@dataclass(frozen=True)
class CallResult:
    """What :func:`run_image_call` made or found: the refs, whether they came from the cache
    record (no call, no cost), so the task can end in Prefect's ``Cached`` state, and what this
    call paid: ``paid`` USD for ``paid_images`` images (the answer's usage or the price model),
    against the price model's ``estimate``. Images billed and not delivered raise instead (the
    call's error says so) and are noted in the enclosing
    :func:`~.retry.collect_maybe_billed`, as every call's bill is (:func:`~.retry.current_bill`)."""

    refs: list[ImageRef]
    cached: bool = False
    paid: float = 0.0
    paid_images: int = 0
    estimate: float = 0.0

    @property
    def bill(self) -> Bill:
        """This call's :class:`~.bill.Bill`: paid, or served from the store (or the spool)."""
        kept = self.refs[: len(self.refs) - self.paid_images]  # the paid images come last
        return Bill(
            paid=self.paid,
            paid_images=self.paid_images,
            served_images=len(kept),
            served_worth=sum(ref.cost for ref in kept),
            estimate=self.estimate,
        )


def _noted(result: CallResult) -> CallResult:
    """``result``, its bill noted in the enclosing collector (if any)."""
    tab = current_bill()
    if tab is not None:
        tab.add(result.bill)
    return result


async def run_image_call(
    request: GenerateRequest | EditRequest,
    *,
    variant: int,
    refresh_cache: bool,
    credentials: GptImageCredentials | None,
    settings: GptImageSettings,
    store: ImageStore,
    on_partial: PartialCallback | None,
) -> CallResult:
    """Make (or find) the images of ``request``; see the module docstring."""
    logger = run_logger()
    await check_store(store)  # once per store and process: a store that cannot work costs nothing
    key = cache_key(request, variant)
    refresh = refresh_cache or refresh_requested()
    locks = get_lock_manager()
    lock_key = f"gpt-image-{key}"
    holder = new_holder()
    hold = settings.call_deadline_seconds()
    if not await locks.aacquire_lock(lock_key, holder, acquire_timeout=hold, hold_timeout=hold):
        raise CacheLockTimeoutError(
            f"another run held the lock of this request (cache key {key[:16]}) for over {hold:.0f} s; "
            "nothing was sent"
        )
    try:
        return await _locked_call(
            request,
            key=key,
            variant=variant,
            refresh=refresh,
            credentials=credentials,
            settings=settings,
            store=store,
            on_partial=on_partial,
            logger=logger,
            extend_lock=partial(_extend_lock, locks, lock_key, holder, hold, time.monotonic()),
        )
    finally:
        try:
            locks.release_lock(lock_key, holder)
        except ValueError:
            logger.warning(
                "The lock of cache key %s expired while this call held it: another run may have "
                "made the same images",
                key[:16],
            )


async def _finish_once_answered(
    call: Coroutine[Any, Any, _T], answered: Callable[[], bool], logger: Any
) -> _T:
    """Await ``call`` (the paid call and the storing of its images). A cancellation (the UI's
    Cancel, a worker's SIGTERM, Ctrl-C) before the API answered stops the call; after the answer
    the images are paid for, so it waits until they are stored (or spooled). Either way the call
    has ended (its connection closed, so the gateway sees it go) before the cancellation goes on."""
    task = asyncio.ensure_future(call)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        paid = answered()
        if paid:
            logger.warning("Cancelled after the API answered: storing the paid images first")
        else:
            task.cancel()
        with anyio.CancelScope(shield=True):
            while not task.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait({task})
            await asyncio.sleep(0)  # the connection's close callbacks run
        if paid and not task.cancelled() and task.exception() is None:
            logger.warning("The paid images are stored; the cancellation goes on")
        raise


async def _extend_lock(locks: Any, key: str, holder: str, hold: float, taken: float) -> None:
    """Renew the lock for a full ``hold`` once the call got its slot, if waiting for the slot
    used a noticeable part of it (a lock file write saved per call otherwise)."""
    if time.monotonic() - taken > hold / 10:
        await locks.aacquire_lock(key, holder, acquire_timeout=0, hold_timeout=hold)


async def _locked_call(
    request: GenerateRequest | EditRequest,
    *,
    key: str,
    variant: int,
    refresh: bool,
    credentials: GptImageCredentials | None,
    settings: GptImageSettings,
    store: ImageStore,
    on_partial: PartialCallback | None,
    logger: Any,
    extend_lock: Any,
) -> CallResult:
    summary = request.summary()
    params = {k: v for k, v in summary.items() if k != "prompt"}
    kept = CacheRecord([], [], request.n)  # what a partial record already stored
    if not refresh:
        try:
            found = await in_thread(read_entry, store, key)
        except Exception as exc:
            raise storage_error(store, exc, "reading the cache record from", NOTHING_SENT) from exc
        if found is not None and not found.complete:
            kept = found
            logger.warning(
                "%d of %d image(s) of this request are stored, %d were never delivered: asking for "
                "those only",
                len(kept.refs),
                request.n,
                kept.missing,
            )
        elif found is not None:
            refs = with_links(store, found.refs, logger)
            logger.info(
                "Cache hit: %d image(s) of this request are already in %s (no API call, no cost)",
                len(refs),
                store.describe(),
            )
            await publish_call_artifacts(
                refs, params=params, outcome="cached", key=key, charged=0.0, settings=settings, logger=logger
            )
            return _noted(CallResult(refs, cached=True))
    entry = spool.load(key)
    if entry is not None:
        refs = await store_from_spool(store, entry, key, logger, kept)
        spooled = [item.manifest for item in entry.images]
        kept = CacheRecord(refs, [*kept.manifests, *spooled], max(0, request.n - len(refs)))
    if entry is not None and kept.complete:
        await publish_call_artifacts(
            refs,
            params=params,
            outcome="recovered from the spool",
            key=key,
            charged=0.0,
            settings=settings,
            logger=logger,
        )
        return _noted(CallResult(refs))

    # A partial record's missing images only: the same request for fewer images.
    call = request.model_copy(update={"n": kept.missing}) if kept.refs else request
    flow_run_id, task_run_id = run_ids()
    prices = call_prices(credentials, settings)
    estimate = prices.estimate_request(call)
    reserve = partial(
        budget.reserve,
        flow_run_id or task_run_id or "no-run",
        images=call.n,
        cost=estimate,
        max_images=settings.max_images_per_run,
        max_cost=settings.max_cost_per_run,
    )
    reservation = reserve()
    # One reservation per attempt that may be billed: an attempt cut off after it was sent
    # (billed or not) keeps its own, and the next one, retried under retry_outcome_unknown,
    # reserves again before it is sent (refused once the caps are used: no retry then).
    attempt_reservation = reservation
    paid = False

    def priced(images: list[GeneratedImage], count: int) -> ImageCost:
        """The cost of each of the ``count`` images of the answer (``images``: those that arrived,
        carrying the answer's usage)."""
        usage = images[0].usage if images else None
        total, source = prices.actual(call, count, usage)
        return ImageCost(total / max(1, count), estimate / call.n, source, prices.label)

    async def answered(slot: Any) -> None:
        nonlocal paid
        paid = True
        await slot.release()

    async def pay_and_store() -> list[ImageRef]:
        images: list[GeneratedImage] | None = None
        try:
            config = client_config(credentials, settings)
            client = await shared_client(config)

            def on_retry(event: RetryEvent) -> None:
                logger.warning(
                    "gpt-image attempt %d failed (request id %s): %s; retrying in %.1f s",
                    event.attempt,
                    event.error.request_id or "-",
                    event.error,
                    event.wait_seconds,
                )
                if event.error.maybe_billed:
                    note_maybe_billed(event.error)
                    nonlocal attempt_reservation
                    try:
                        attempt_reservation = reserve()
                    except BudgetExceededError as exc:  # the retry is not made
                        raise BudgetExceededError(
                            f"{exc} by its retry; the attempt before it (request id "
                            f"{event.error.request_id or '-'}) may have been billed",
                            cap=exc.cap,
                        ) from event.error

            async with api_slot(
                settings.concurrency_limit_name,
                settings.concurrency_limit,
                requests_per_minute=settings.requests_per_minute,
                rate_limit_name=settings.rate_limit_name,
                lease_seconds=300.0,
                logger=logger,
            ) as slot:
                await extend_lock()
                # The slot goes back as soon as the API answered: downloading and checking the
                # results use no API capacity.
                images = await client.send(
                    call, on_partial=on_partial, on_retry=on_retry, on_answered=partial(answered, slot)
                )
        except BudgetExceededError:
            # A retry refused by the caps (before GptImageError, its base): the attempts before
            # it may have been billed, so their reservations stay.
            raise
        except GptImageError as exc:
            if exc.maybe_billed:
                if settings.retry_outcome_unknown:
                    allow_outcome_unknown_retry(exc)
                    note_maybe_billed(exc)
                if isinstance(exc, DownloadError) and exc.undelivered:
                    each = priced(exc.images, len(exc.images) + exc.undelivered)
                    # billed for sure: in the run's cost
                    note_undelivered(
                        exc, exc.undelivered, each.paid * exc.undelivered, each.estimate * exc.undelivered
                    )
            else:
                attempt_reservation.cancel()
            logger.error("gpt-image call failed (request id %s): %s", exc.request_id or "-", exc)
            if isinstance(exc, DownloadError) and (exc.images or kept.refs):
                raise await _store_partial(exc) from exc
            raise
        except Exception as exc:
            if images is None:
                attempt_reservation.cancel()
                raise
            # The API answered; only releasing the concurrency slot failed (its lease will expire).
            logger.warning("Releasing the concurrency slot failed: %s", exc)

        assert images is not None  # every path without images raised above
        request_id = images[0].request_id if images else None
        each = priced(images, len(images))
        (logger.debug if in_batch() else logger.info)(
            "gpt-image returned %d image(s) (request id %s, $%.4f by %s, estimated $%.4f)",
            len(images),
            request_id or "-",
            each.paid * len(images),
            "its usage" if each.source == "usage" else prices.label,
            estimate,
        )
        return await store_images(images)

    async def store_images(images: list[GeneratedImage], answered: int | None = None) -> list[ImageRef]:
        """Store ``images`` and the record of every stored image of the request (the ones a
        partial record kept first); the refs of them all, linked. ``answered``: how many images
        the answer billed (more than ``images`` when some were not delivered)."""
        refs, manifests = describe_images(
            request,
            images,
            store,
            key,
            variant,
            priced(images, answered or len(images)),
            flow_run_id,
            task_run_id,
            first=len(kept.refs),
        )
        files = [(image.path if image.path is not None else image.read_bytes()) for image in images]

        def store_and_discard() -> list[ImageRef]:
            linked = store_result(store, key, files, refs, manifests, summary, logger, kept)
            # In this thread too: no file system call on the event loop. A file left behind goes
            # with the download folder at exit; the images are stored either way.
            with contextlib.suppress(OSError):
                discard_downloads(images)
            return linked

        try:
            linked: list[ImageRef] = await in_thread(store_and_discard)
        except Exception as exc:
            error = spool_after_failure(exc, store, key, images, files, refs, manifests, summary, logger)
            if not isinstance(error, ImagesLostError):
                discard_downloads(images)
            raise error from exc
        return linked

    async def _store_partial(error: DownloadError) -> PartialDeliveryError:
        """Store the images of ``error``'s answer that arrived (a partial record); the error that
        says so, holding the refs of every stored image of the request."""
        answered = len(error.images) + error.undelivered
        stored = (
            await store_images(error.images, answered)
            if error.images
            else with_links(store, kept.refs, logger)
        )
        error.images = []  # stored: the error (pickled by Prefect) does not carry their bytes
        made = stored[len(kept.refs) :]  # paid now (the undelivered ones are noted apart)
        _noted(
            CallResult(
                stored,
                paid=sum(ref.cost for ref in made),
                paid_images=len(made),
                estimate=estimate * len(made) / call.n,
            )
        )
        message = (
            f"{len(stored)} of {request.n} image(s) stored; {error.message}. The next run of this request "
            f"asks only for the {request.n - len(stored)} missing image(s)"
        )
        partly = PartialDeliveryError(
            message, refs=stored, undelivered=error.undelivered, url=error.url, request_id=error.request_id
        )
        if settings.retry_outcome_unknown:
            allow_outcome_unknown_retry(partly)  # a retry asks only for the missing images
        return partly

    refs = await _finish_once_answered(pay_and_store(), lambda: paid, logger)
    made = refs[len(kept.refs) :]
    charged = sum(ref.cost for ref in made)
    await publish_call_artifacts(
        refs,
        params=params,
        outcome="generated",
        key=key,
        charged=charged,
        estimate=estimate,
        settings=settings,
        logger=logger,
    )
    return _noted(CallResult(refs, paid=charged, paid_images=len(made), estimate=estimate))
