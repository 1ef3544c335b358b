"""The Prefect tasks: :func:`generate_image`, :func:`edit_image` and :func:`blend_images`.

They are async (Prefect cancels an async task on ``timeout_seconds``; a sync one runs on). Await
them in async flows; in sync flows use ``.submit(...)`` / ``.map(...)`` and ``.result()``, ideally
with :func:`~prefect_gpt_image.tasks.bounded_task_runner` (Prefect's default thread pool is
unbounded).

Each returns a list of :class:`~prefect_gpt_image.tasks.ImageRef` (one per image, ``n`` of them),
never image bytes: the images and their manifests are in storage before the task completes.
Identical requests (same model, parameters, prompt, input images and ``variant``) are made once
and then served from the cache records in the store, on any machine; ``refresh_cache=True`` or a
new ``variant`` asks for new images on purpose. See :mod:`prefect_gpt_image.calls.call` for the
order of a call and :mod:`prefect_gpt_image.calls.retry` for when Prefect retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, cast

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.context import TaskRunContext
from prefect.states import Completed
from prefect_aws import S3Bucket

from prefect_gpt_image.api import EditRequest, GenerateRequest, PartialCallback
from prefect_gpt_image.api.images import MAX_MASK_BYTES, InputImage
from prefect_gpt_image.api.models import Background, Moderation, OutputFormat, Quality
from prefect_gpt_image.blocks import GptImageCredentials, GptImageSettings, GptImageStorage
from prefect_gpt_image.calls import (
    RETRIES,
    RETRY_DELAYS,
    CallResult,
    ImageInput,
    ImageRef,
    InputImageError,
    admitted,
    edit_request,
    generate_request,
    in_batch,
    read_input,
    retry_condition,
    run_image_call,
)
from prefect_gpt_image.storage import ImageStore, resolve_store

from .dispatch import sync_or_async

__all__ = [
    "StorageOption",
    "blend_images",
    "edit_image",
    "generate_image",
]

StorageOption = GptImageStorage | ImageStore | S3Bucket | str | os.PathLike[str] | None
"""Where images go: a :class:`GptImageStorage` block, an ImageStore, an S3Bucket block, a local
path or an ``s3://bucket/prefix`` URI; None means ``$GPT_IMAGE_STORAGE``, else ./gpt-image-output."""

_DEFAULT_SETTINGS = GptImageSettings()
_TASK_OPTIONS: dict[str, Any] = {
    "retries": RETRIES,
    "retry_delay_seconds": list(RETRY_DELAYS),
    "retry_condition_fn": retry_condition,
    "cache_policy": NO_CACHE,
}


def _store(storage: StorageOption) -> ImageStore:
    if isinstance(storage, ImageStore):
        return storage
    if isinstance(storage, GptImageStorage):
        return storage.get_store()
    if isinstance(storage, S3Bucket):
        return GptImageStorage(s3_bucket=storage).get_store()
    if isinstance(storage, str):
        return GptImageStorage(location=storage).get_store()
    return resolve_store(storage)


def _admission(args: tuple[Any, ...], kwargs: dict[str, Any]) -> AbstractAsyncContextManager[None]:
    """An awaited call's place among the calls in progress in front of its concurrency limit
    (see :mod:`prefect_gpt_image.calls.concurrency.admission`), before its task run starts."""
    if in_batch():  # a batch bounds its rows itself (max_parallel)
        return contextlib.nullcontext()
    settings = kwargs.get("settings")
    if not isinstance(settings, GptImageSettings):  # a Prefect future, or unset: the defaults
        settings = _DEFAULT_SETTINGS
    return admitted(settings.concurrency_limit_name, settings.concurrency_limit)


def _task_result(result: CallResult) -> list[ImageRef]:
    """The refs; inside a task run a cache hit is returned as Prefect's ``Cached`` state, which
    Prefect makes the run's final state (the UI shows "Cached"); the caller still gets the refs."""
    if not result.cached or TaskRunContext.get() is None:
        return result.refs
    message = f"{len(result.refs)} image(s) from the store's cache record (no API call)"
    state: State[list[ImageRef]] = Completed(name="Cached", message=message, data=result.refs)
    return cast("list[ImageRef]", state)


async def _read_inputs(
    images: Sequence[ImageInput], mask: ImageInput | None, store: ImageStore, settings: GptImageSettings
) -> tuple[tuple[InputImage, ...], InputImage | None]:
    policy = settings.input_policy()

    def read_all() -> tuple[tuple[InputImage, ...], InputImage | None]:
        loaded = tuple(
            read_input(source, store, what=f"images[{i}]", policy=policy) for i, source in enumerate(images)
        )
        mask_image = (
            read_input(mask, store, what="mask", policy=policy, max_bytes=MAX_MASK_BYTES)
            if mask is not None
            else None
        )
        return loaded, mask_image

    return await asyncio.to_thread(read_all)


@sync_or_async(admission=_admission)
@task(name="generate-image", **_TASK_OPTIONS)
async def generate_image(
    prompt: str,
    *,
    n: int = 1,
    size: str | None = None,
    quality: Quality | None = None,
    output_format: OutputFormat | None = None,
    output_compression: int | None = None,
    background: Background | None = None,
    moderation: Moderation | None = None,
    model: str | None = None,
    stream: bool = False,
    partial_images: int | None = None,
    user: str | None = None,
    variant: int = 0,
    refresh_cache: bool = False,
    credentials: GptImageCredentials | None = None,
    settings: GptImageSettings | None = None,
    storage: StorageOption = None,
    on_partial: PartialCallback | None = None,
) -> list[ImageRef]:
    """Generate ``n`` images from ``prompt`` and store them; return one ImageRef per image.

    Args:
        prompt: What to draw (up to 32,000 characters).
        n: Number of images, 1..10 (one call, billed per image).
        size: 'auto' or WIDTHxHEIGHT; unset: the settings' size.
        quality: auto, low, medium or high; unset: the settings' quality.
        output_format: png, jpeg or webp; unset: the settings' format.
        output_compression: 0..100 for jpeg or webp.
        background: auto or opaque.
        moderation: auto or low.
        model: The model; unset: the settings' model.
        stream: Stream the answer (with ``partial_images`` previews to ``on_partial``).
        partial_images: 0..3 previews, with ``stream=True``.
        user: End-user id passed to the API.
        variant: Part of the cache key: a new value makes a new image for the same request.
        refresh_cache: Make new images even if this request is cached (the record is replaced).
        credentials: API key block; unset: GPT_IMAGE_API_KEY / GPT_IMAGE_BASE_URL.
        settings: Defaults and policy; unset: GptImageSettings() defaults.
        storage: Where images go (see StorageOption).
        on_partial: Called with each partial image of a stream (sync or async).

    Example:
        ``refs = await generate_image("a lighthouse at dawn", size="1536x1024", quality="low")``
    """
    settings = settings or GptImageSettings()
    store = _store(storage)
    request = generate_request(
        prompt,
        settings,
        n=n,
        size=size,
        quality=quality,
        output_format=output_format,
        output_compression=output_compression,
        background=background,
        moderation=moderation,
        model=model,
        stream=stream or None,
        partial_images=partial_images,
        user=user,
    )
    return await _call(request, variant, refresh_cache, credentials, settings, store, on_partial)


async def _call(
    request: GenerateRequest | EditRequest,
    variant: int,
    refresh_cache: bool,
    credentials: GptImageCredentials | None,
    settings: GptImageSettings,
    store: ImageStore,
    on_partial: PartialCallback | None,
) -> list[ImageRef]:
    """Make (or find) ``request``'s images: the one call every task ends with."""
    result = await run_image_call(
        request,
        variant=variant,
        refresh_cache=refresh_cache,
        credentials=credentials,
        settings=settings,
        store=store,
        on_partial=on_partial,
    )
    return _task_result(result)


async def _edit(
    prompt: str,
    images: Sequence[ImageInput],
    mask: ImageInput | None,
    *,
    variant: int,
    refresh_cache: bool,
    credentials: GptImageCredentials | None,
    settings: GptImageSettings | None,
    storage: StorageOption,
    on_partial: PartialCallback | None,
    **options: Any,
) -> list[ImageRef]:
    settings = settings or GptImageSettings()
    store = _store(storage)
    loaded, mask_image = await _read_inputs(images, mask, store, settings)
    request = edit_request(prompt, loaded, mask_image, settings, **options)
    return await _call(request, variant, refresh_cache, credentials, settings, store, on_partial)


@sync_or_async(admission=_admission)
@task(name="edit-image", **_TASK_OPTIONS)
async def edit_image(
    prompt: str,
    image: ImageInput,
    mask: ImageInput | None = None,
    *,
    references: Sequence[ImageInput] = (),
    n: int = 1,
    size: str | None = None,
    quality: Quality | None = None,
    output_format: OutputFormat | None = None,
    output_compression: int | None = None,
    background: Background | None = None,
    model: str | None = None,
    stream: bool = False,
    partial_images: int | None = None,
    user: str | None = None,
    variant: int = 0,
    refresh_cache: bool = False,
    credentials: GptImageCredentials | None = None,
    settings: GptImageSettings | None = None,
    storage: StorageOption = None,
    on_partial: PartialCallback | None = None,
) -> list[ImageRef]:
    """Edit one image as ``prompt`` says, optionally only where ``mask`` is transparent.

    Args:
        prompt: How to change the image.
        image: The image: an ImageRef, a path, an s3:// or http(s):// URI, or bytes.
        mask: Optional PNG with an alpha channel, the image's size; alpha 0 marks where to edit.
        references: Up to 15 more images sent after ``image`` (styles, logos); the mask applies
            to ``image``.
        n: Number of images, 1..10.
        size: 'auto' or WIDTHxHEIGHT; unset: the settings' size.
        quality: auto, low, medium or high.
        output_format: png, jpeg or webp.
        output_compression: 0..100 for jpeg or webp.
        background: auto or opaque.
        model: The model; unset: the settings' model.
        stream: Stream the answer (previews to ``on_partial``).
        partial_images: 0..3 previews, with ``stream=True``.
        user: End-user id passed to the API.
        variant: Part of the cache key: a new value makes a new image for the same request.
        refresh_cache: Make new images even if this request is cached.
        credentials: API key block; unset: GPT_IMAGE_API_KEY / GPT_IMAGE_BASE_URL.
        settings: Defaults and policy; unset: GptImageSettings() defaults.
        storage: Where images go (see StorageOption).
        on_partial: Called with each partial image of a stream.

    Example:
        ``edited = await edit_image("add a rainbow", refs[0], mask="sky-mask.png")``
    """
    return await _edit(
        prompt,
        [image, *references],
        mask,
        variant=variant,
        refresh_cache=refresh_cache,
        credentials=credentials,
        settings=settings,
        storage=storage,
        on_partial=on_partial,
        n=n,
        size=size,
        quality=quality,
        output_format=output_format,
        output_compression=output_compression,
        background=background,
        model=model,
        stream=stream or None,
        partial_images=partial_images,
        user=user,
    )


@sync_or_async(admission=_admission)
@task(name="blend-images", **_TASK_OPTIONS)
async def blend_images(
    prompt: str,
    images: Sequence[ImageInput],
    *,
    n: int = 1,
    size: str | None = None,
    quality: Quality | None = None,
    output_format: OutputFormat | None = None,
    output_compression: int | None = None,
    background: Background | None = None,
    model: str | None = None,
    stream: bool = False,
    partial_images: int | None = None,
    user: str | None = None,
    variant: int = 0,
    refresh_cache: bool = False,
    credentials: GptImageCredentials | None = None,
    settings: GptImageSettings | None = None,
    storage: StorageOption = None,
    on_partial: PartialCallback | None = None,
) -> list[ImageRef]:
    """Make new images from ``prompt`` and 1..16 reference ``images`` (style, subjects, scenes).

    Args:
        prompt: What to make from the references.
        images: 1..16 references: ImageRefs, paths, s3:// or http(s):// URIs, or bytes.
        n: Number of images, 1..10.
        size: 'auto' or WIDTHxHEIGHT; unset: the settings' size.
        quality: auto, low, medium or high.
        output_format: png, jpeg or webp.
        output_compression: 0..100 for jpeg or webp.
        background: auto or opaque.
        model: The model; unset: the settings' model.
        stream: Stream the answer (previews to ``on_partial``).
        partial_images: 0..3 previews, with ``stream=True``.
        user: End-user id passed to the API.
        variant: Part of the cache key: a new value makes a new image for the same request.
        refresh_cache: Make new images even if this request is cached.
        credentials: API key block; unset: GPT_IMAGE_API_KEY / GPT_IMAGE_BASE_URL.
        settings: Defaults and policy; unset: GptImageSettings() defaults.
        storage: Where images go (see StorageOption).
        on_partial: Called with each partial image of a stream.

    Example:
        ``poster = await blend_images("a poster with this cat in this style", [cat_ref, "s3://b/style.png"])``
    """
    if isinstance(images, (str, bytes, os.PathLike, ImageRef)):
        images = [images]
    if not 1 <= len(images) <= 16:
        raise InputImageError(f"images: {len(images)} given; blend_images takes 1..16 reference images")
    return await _edit(
        prompt,
        list(images),
        None,
        variant=variant,
        refresh_cache=refresh_cache,
        credentials=credentials,
        settings=settings,
        storage=storage,
        on_partial=on_partial,
        n=n,
        size=size,
        quality=quality,
        output_format=output_format,
        output_compression=output_compression,
        background=background,
        model=model,
        stream=stream or None,
        partial_images=partial_images,
        user=user,
    )
