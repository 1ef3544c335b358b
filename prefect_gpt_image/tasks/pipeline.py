"""One image call, end to end: cache, spool, budget, limits, the paid call, storage, artifacts.

Order of a call (all of it under the lock of its cache key, see :mod:`.locks`)::

    whole cache record in the store?  -> return its refs (no call, no cost)
    entry in the local spool?    -> store it, record it, clear it (no call, no cost)
    reserve budget               -> BudgetExceededError before anything is sent
    local gate + global limit (+ rate limit) -> the paid call (client retries are logged)
    store the images and the cache record (with their manifests) at once (one round trip)
        on a store failure       -> spool the bytes, raise ImagesSpooledError (a rerun stores them)
        some result URLs given up -> store the images that arrived, record them, raise
                                    PartialDeliveryError (the rest: billed, not delivered)
    artifacts (best effort)

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
import datetime as dt
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from prefect.settings import PREFECT_TASKS_REFRESH_CACHE

from prefect_gpt_image import __version__
from prefect_gpt_image.api import (
    ClientConfig,
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
from prefect_gpt_image.storage.base import run_concurrently

from . import budget, spool
from .artifacts import claim_artifact_slot, publish_artifacts
from .cache import CACHE_KEY_METADATA, CacheRecord, cache_key, endpoint_of, read_entry, write_record
from .clients import discard_downloads, shared_client
from .concurrency import api_slot
from .errors import (
    BudgetExceededError,
    CacheLockTimeoutError,
    ImagesLostError,
    ImagesSpooledError,
    ImageStorageError,
    PartialDeliveryError,
)
from .locks import get_lock_manager
from .refs import ImageRef
from .retry import allow_outcome_unknown_retry, note_maybe_billed, note_undelivered, with_retries

__all__ = [
    "CallResult",
    "batch_rows",
    "client_config",
    "in_batch",
    "run_image_call",
    "run_row_call",
    "with_links",
]

_T = TypeVar("_T")
_fallback_logger = logging.getLogger("prefect_gpt_image.tasks")
_BATCH_ROW: ContextVar[bool] = ContextVar("prefect_gpt_image_batch_row", default=False)


@contextmanager
def batch_rows() -> Iterator[None]:
    """Image calls made inside are rows of a batch whose table artifact lists each row's image,
    request id and cost: they publish no artifacts of their own (two per image would cost two
    Prefect API calls per row and fill the Artifacts page with thousands of keys) and log their
    success at DEBUG (a line per row buries the batch's warnings). Failures still log as usual."""
    token = _BATCH_ROW.set(True)
    try:
        yield
    finally:
        _BATCH_ROW.reset(token)


def in_batch() -> bool:
    """Whether the current call is a row of a batch (see :func:`batch_rows`)."""
    return _BATCH_ROW.get()


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The run's logger; a task run outside any flow logs to the console only (the API keeps no
    logs without a flow run, and Prefect would warn on every line)."""
    try:
        if _run_ids()[0] is None:
            return get_run_logger(send_to_api=False)
        return get_run_logger()
    except MissingContextError:
        return _fallback_logger


def _run_ids() -> tuple[str | None, str | None]:
    task_ctx = TaskRunContext.get()
    flow_ctx = FlowRunContext.get()
    task_run_id = str(task_ctx.task_run.id) if task_ctx is not None else None
    flow_run_id: str | None = None
    if flow_ctx is not None and flow_ctx.flow_run is not None:
        flow_run_id = str(flow_ctx.flow_run.id)
    elif task_ctx is not None and task_ctx.task_run.flow_run_id is not None:
        flow_run_id = str(task_ctx.task_run.flow_run_id)
    return flow_run_id, task_run_id


def _prefect_refresh_requested() -> bool:
    """Whether Prefect asks for a refresh: ``task.with_options(refresh_cache=True)`` or
    ``PREFECT_TASKS_REFRESH_CACHE``."""
    task_ctx = TaskRunContext.get()
    flag = task_ctx.task.refresh_cache if task_ctx is not None else None
    return bool(flag) if flag is not None else bool(PREFECT_TASKS_REFRESH_CACHE.value())


def _parents(request: GenerateRequest | EditRequest) -> tuple[str, ...]:
    if not isinstance(request, EditRequest):
        return ()
    shas = [image.sha256 for image in request.images]
    if request.mask is not None:
        shas.append(request.mask.sha256)
    return tuple(shas)


def client_config(credentials: GptImageCredentials | None, settings: GptImageSettings) -> ClientConfig:
    """The API client's configuration: the credentials block's key and base URL, else the
    environment's (see :func:`~prefect_gpt_image.api.config.resolve_key`), with the settings'
    timeouts, retries and media hosts; :class:`ConfigurationError` when no key may be used."""
    if credentials is not None:
        return credentials.client_config(settings)
    return settings.configure(ClientConfig.from_env())


async def _in_thread(fn: Any, *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


@dataclass(frozen=True)
class CallResult:
    """What :func:`run_image_call` made or found: the refs, and whether they came from the cache
    record (no call, no cost), so the task can end in Prefect's ``Cached`` state."""

    refs: list[ImageRef]
    cached: bool = False


def with_links(store: ImageStore, refs: Sequence[ImageRef], logger: Any) -> list[ImageRef]:
    """``refs`` with fresh links to their images (None, with a warning, where signing one fails)."""
    out: list[ImageRef] = []
    for ref in refs:
        try:
            link: str | None = store.link_for(store.image_key(ref.sha256, ref.format))
        except Exception as exc:
            logger.warning("No link for image %s: %s", ref.sha256[:16], exc)
            link = None
        out.append(ref.model_copy(update={"link": link}))
    return out


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
    logger = _logger()
    key = cache_key(request, variant)
    refresh = refresh_cache or _prefect_refresh_requested()
    locks = get_lock_manager()
    lock_key = f"gpt-image-{key}"
    holder = f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}:{uuid.uuid4().hex}"
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


async def run_row_call(
    request: GenerateRequest | EditRequest,
    *,
    variant: int,
    credentials: GptImageCredentials | None,
    settings: GptImageSettings,
    store: ImageStore,
    what: str,
) -> CallResult:
    """:func:`run_image_call` for a row (or a row's step) of a batch: the image tasks' guarantees
    and their retries (:func:`~.retry.with_retries`), without a Prefect task run of its own (one
    cost the flow process and the Prefect server more CPU than the rest of the call; the batch's
    table lists every call). ``what`` names the row in the retry warnings."""
    return await with_retries(
        partial(
            run_image_call,
            request,
            variant=variant,
            refresh_cache=False,
            credentials=credentials,
            settings=settings,
            store=store,
            on_partial=None,
        ),
        logger=_logger(),
        what=what,
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
            found = await _in_thread(read_entry, store, key)
        except Exception as exc:
            raise ImageStorageError(
                f"reading the cache record from {store.describe()} failed ({type(exc).__name__}: {exc}); "
                "nothing was sent"
            ) from exc
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
            await _artifacts(
                refs, params=params, outcome="cached", key=key, charged=0.0, settings=settings, logger=logger
            )
            return CallResult(refs, cached=True)
    entry = spool.load(key)
    if entry is not None:
        refs = await _store_from_spool(store, entry, key, logger, kept)
        spooled = [item.manifest for item in entry.images]
        kept = CacheRecord(refs, [*kept.manifests, *spooled], max(0, request.n - len(refs)))
    if entry is not None and kept.complete:
        await _artifacts(
            refs,
            params=params,
            outcome="recovered from the spool",
            key=key,
            charged=0.0,
            settings=settings,
            logger=logger,
        )
        return CallResult(refs)

    # A partial record's missing images only: the same request for fewer images.
    call = request.model_copy(update={"n": kept.missing}) if kept.refs else request
    flow_run_id, task_run_id = _run_ids()
    reserve = partial(
        budget.reserve,
        flow_run_id or task_run_id or "no-run",
        images=call.n,
        price_per_image=settings.price_per_image,
        max_images=settings.max_images_per_run,
        max_cost=settings.max_cost_per_run,
    )
    reservation = reserve()
    # One reservation per attempt that may be billed: an attempt cut off after it was sent
    # (billed or not) keeps its own, and the next one, retried under retry_outcome_unknown,
    # reserves again before it is sent (refused once the caps are used: no retry then).
    attempt_reservation = reservation
    paid = False

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
                    note_undelivered(exc, exc.undelivered)  # billed for sure: in the run's cost
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
        (logger.debug if _BATCH_ROW.get() else logger.info)(
            "gpt-image returned %d image(s) (request id %s, about $%.4f)",
            len(images),
            request_id or "-",
            reservation.cost,
        )
        return await store_images(images)

    async def store_images(images: list[GeneratedImage]) -> list[ImageRef]:
        """Store ``images`` and the record of every stored image of the request (the ones a
        partial record kept first); the refs of them all, linked."""
        refs, manifests = _describe(
            request, images, store, key, variant, settings, flow_run_id, task_run_id, first=len(kept.refs)
        )
        files = [(image.path if image.path is not None else image.read_bytes()) for image in images]
        try:
            linked: list[ImageRef] = await _in_thread(
                _store_result,
                store,
                key,
                files,
                refs,
                manifests,
                summary,
                logger,
                kept,
            )
        except Exception as exc:
            error = _spool_after_failure(exc, store, key, images, files, refs, manifests, summary, logger)
            if not isinstance(error, ImagesLostError):
                discard_downloads(images)
            raise error from exc
        discard_downloads(images)
        return linked

    async def _store_partial(error: DownloadError) -> PartialDeliveryError:
        """Store the images of ``error``'s answer that arrived (a partial record); the error that
        says so, holding the refs of every stored image of the request."""
        stored = await store_images(error.images) if error.images else with_links(store, kept.refs, logger)
        error.images = []  # stored: the error (pickled by Prefect) does not carry their bytes
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
    await _artifacts(
        refs,
        params=params,
        outcome="generated",
        key=key,
        charged=reservation.cost,
        settings=settings,
        logger=logger,
    )
    return CallResult(refs)


def _describe(
    request: GenerateRequest | EditRequest,
    images: list[GeneratedImage],
    store: ImageStore,
    key: str,
    variant: int,
    settings: GptImageSettings,
    flow_run_id: str | None,
    task_run_id: str | None,
    first: int = 0,
) -> tuple[list[ImageRef], list[dict[str, Any]]]:
    """The refs and manifests of freshly returned images of ``request`` (nothing secret in
    either); ``first``: the index of the first one among the request's ``n`` (images a partial
    record already holds come before)."""
    parents = _parents(request)
    summary = request.summary()
    created = dt.datetime.now(dt.UTC).isoformat()
    refs: list[ImageRef] = []
    manifests: list[dict[str, Any]] = []
    for i, image in enumerate(images):
        refs.append(
            ImageRef(
                uri=store.uri_for(store.image_key(image.sha256, image.format)),
                sha256=image.sha256,
                width=image.width,
                height=image.height,
                format=image.format,
                size_bytes=image.size_bytes,
                request_id=image.request_id,
                cost=settings.price_per_image,
                parents=parents,
                prompt=request.prompt,
            )
        )
        manifests.append(
            {
                "sha256": image.sha256,
                "format": image.format,
                "width": image.width,
                "height": image.height,
                "size_bytes": image.size_bytes,
                "model": request.model,
                "prompt": request.prompt,
                "endpoint": endpoint_of(request),
                "parameters": {k: v for k, v in summary.items() if k != "prompt"},
                "request_id": image.request_id,
                "index": first + i,
                "n": request.n,
                "created": created,
                "parents": list(parents),
                "inputs": {
                    "images": list(summary.get("images", [])),
                    "mask": summary.get("mask"),
                },
                "revised_prompt": image.revised_prompt,
                "usage": image.usage.model_dump(mode="json") if image.usage is not None else None,
                "cost": settings.price_per_image,
                "currency": "USD",
                "cache_key": key,
                "variant": variant,
                "flow_run_id": flow_run_id,
                "task_run_id": task_run_id,
                "generator": f"prefect-gpt-image {__version__}",
            }
        )
    return refs, manifests


def _store_result(
    store: ImageStore,
    key: str,
    files: Sequence[bytes | Path],
    refs: list[ImageRef],
    manifests: list[dict[str, Any]],
    summary: dict[str, Any],
    logger: Any,
    kept: CacheRecord | None = None,
) -> list[ImageRef]:
    """Store a call's images (``files``, in the order of ``refs``) and its cache record, which
    holds their manifests (after those of the images a partial record ``kept``); the refs of
    all of them with their links."""
    # Every write at once: one round trip to the store. The record may land before the images;
    # read_record trusts it only once the images it names are there, so after a failed write the
    # rerun finds no hit and stores the spooled images (paid once). Each image names the record
    # in its metadata (its lineage). The links are signed in this thread while the writes are in
    # flight.
    every = [*kept.refs, *refs] if kept is not None else refs
    described = [*kept.manifests, *manifests] if kept is not None else manifests
    writes: list[Callable[[], Any]] = [partial(write_record, store, key, every, summary, described)]
    for ref, data in zip(refs, files, strict=True):
        writes.append(partial(store.put_image, ref.sha256, ref.format, data, {CACHE_KEY_METADATA: key}))
    linked: list[ImageRef] = run_concurrently(partial(with_links, store, every, logger), *writes)[0]
    return linked


def _spool_after_failure(
    error: Exception,
    store: ImageStore,
    key: str,
    images: list[GeneratedImage],
    files: Sequence[bytes | Path],
    refs: list[ImageRef],
    manifests: list[dict[str, Any]],
    summary: dict[str, Any],
    logger: Any,
) -> Exception:
    """Spool paid images after the store failed; the error to raise."""
    what = (
        f"storing {len(images)} paid image(s) in {store.describe()} failed ({type(error).__name__}: {error})"
    )
    try:
        path = spool.save(
            key,
            [
                (data, ref.sha256, ref.format, manifest, ref.without_link().model_dump(mode="json"))
                for data, manifest, ref in zip(files, manifests, refs, strict=True)
            ],
            summary,
        )
    except Exception as spool_error:
        shas = ", ".join(image.sha256 for image in images)
        logger.error("%s, and spooling them failed too (%s)", what, spool_error)
        return ImagesLostError(
            f"{what}, and spooling them failed too ({type(spool_error).__name__}: {spool_error}); "
            f"request id {images[0].request_id or '-'}, sha256 {shas}"
        )
    message = (
        f"{what}. The images are spooled at {path}; run again with the same request to store them "
        "without paying again"
    )
    logger.error(message)
    return ImagesSpooledError(message, spool_path=path, count=len(images))


async def _store_from_spool(
    store: ImageStore, entry: spool.SpoolEntry, key: str, logger: Any, kept: CacheRecord
) -> list[ImageRef]:
    """Store the spooled images of ``key`` and its record (after the images a partial record
    ``kept``); the refs of them all, linked."""
    manifests = [item.manifest for item in entry.images]
    files = [item.path for item in entry.images]
    try:
        refs = [
            ImageRef.model_validate(item.ref).model_copy(
                update={"uri": store.uri_for(store.image_key(item.sha256, item.format))}
            )
            for item in entry.images
        ]
        linked: list[ImageRef] = await _in_thread(
            _store_result, store, key, files, refs, manifests, entry.request, logger, kept
        )
    except Exception as exc:
        raise ImageStorageError(
            f"storing {len(entry.images)} spooled image(s) from {entry.path} in {store.describe()} failed "
            f"({type(exc).__name__}: {exc}); they stay spooled, run again later (nothing was paid)"
        ) from exc
    spool.clear(key)
    logger.info(
        "Recovered %d image(s) from the spool into %s (no API call, no cost)", len(refs), store.describe()
    )
    return linked


async def _artifacts(
    refs: list[ImageRef],
    *,
    params: dict[str, Any],
    outcome: str,
    key: str,
    charged: float,
    settings: GptImageSettings,
    logger: Any,
) -> None:
    if _BATCH_ROW.get():
        return
    flow_run_id, task_run_id = _run_ids()
    run_key = flow_run_id or task_run_id
    if run_key is None:
        return
    allowed = claim_artifact_slot(run_key, settings.max_call_artifacts_per_run)
    if not allowed:
        if allowed is None:
            logger.info(
                "This flow run made over %d image calls: later calls publish no artifacts of their own "
                "(GptImageSettings.max_call_artifacts_per_run); their images are in %s",
                settings.max_call_artifacts_per_run,
                refs[0].uri.rsplit("/", 1)[0] if refs else "the store",
            )
        return
    try:
        await publish_artifacts(refs, params=params, outcome=outcome, cache_key=key, charged=charged)
    except Exception as exc:
        logger.warning("Creating the artifacts failed: %s", exc)
