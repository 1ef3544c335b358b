"""After the paid call: the refs and manifests of the returned images, storing them with the
cache record (one round trip), spooling them when the store fails, recovering them from the
spool, and the call's artifacts (see :mod:`.call` for where each step sits)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from prefect_gpt_image import __version__
from prefect_gpt_image.api import (
    EditRequest,
    GeneratedImage,
    GenerateRequest,
)
from prefect_gpt_image.api.pricing import CostSource
from prefect_gpt_image.blocks import GptImageSettings
from prefect_gpt_image.storage import ImageStore
from prefect_gpt_image.storage.base import run_concurrently

from . import spool
from .artifacts import claim_artifact_slot, publish_artifacts
from .cache import CACHE_KEY_METADATA, CacheRecord, endpoint_of, write_record
from .clock import utc_now
from .context import in_batch, in_thread, run_deployment, run_ids
from .errors import ImagesLostError, ImagesSpooledError
from .refs import ImageRef
from .store_check import explain_failure, storage_error
from .thumbs import thumbnail_due, thumbnail_key, thumbnail_later, thumbnail_write

__all__ = [
    "ImageCost",
    "describe_images",
    "parents_of",
    "publish_call_artifacts",
    "spool_after_failure",
    "store_from_spool",
    "store_result",
    "with_links",
]


def parents_of(request: GenerateRequest | EditRequest) -> tuple[str, ...]:
    """The sha256 of an edit's input images and mask (their lineage in the manifests)."""
    if not isinstance(request, EditRequest):
        return ()
    shas = [image.sha256 for image in request.images]
    if request.mask is not None:
        shas.append(request.mask.sha256)
    return tuple(shas)


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


@dataclass(frozen=True)
class ImageCost:
    """What one returned image cost: ``paid`` (USD actually billed, from ``source``: the answer's
    token usage or the price model), the price model's ``estimate`` and the model's label."""

    paid: float
    estimate: float
    source: CostSource
    price_model: str


def describe_images(
    request: GenerateRequest | EditRequest,
    images: list[GeneratedImage],
    store: ImageStore,
    key: str,
    variant: int,
    cost: ImageCost,
    flow_run_id: str | None,
    task_run_id: str | None,
    first: int = 0,
) -> tuple[list[ImageRef], list[dict[str, Any]]]:
    """The refs and manifests of freshly returned images of ``request`` (nothing secret in
    either), each priced at ``cost``; ``first``: the index of the first one among the request's
    ``n`` (images a partial record already holds come before)."""
    parents = parents_of(request)
    summary = request.summary()
    created = utc_now().isoformat()
    deployment_id, deployment_name = run_deployment()
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
                cost=cost.paid,
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
                "cost": cost.paid,
                "cost_estimate": cost.estimate,
                "cost_source": cost.source,
                "price_model": cost.price_model,
                "currency": "USD",
                "cache_key": key,
                "thumbnail": (
                    thumbnail_key(store, image.sha256) if thumbnail_due(flow_run_id or task_run_id) else None
                ),
                "variant": variant,
                "flow_run_id": flow_run_id,
                "task_run_id": task_run_id,
                "deployment_id": deployment_id,
                "deployment_name": deployment_name,
                "generator": f"prefect-gpt-image {__version__}",
            }
        )
    return refs, manifests


def store_result(
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
    # Every write at once: one round trip to the store (the first in this thread, the others in
    # the store's pool). The record may land before the images; read_record trusts it only once
    # the images it names are there, so after a failed write the rerun finds no hit and stores
    # the spooled images (paid once). Each image names the record in its metadata (its lineage).
    # The links are signed once they are written (signing is local: a fraction of a write).
    every = [*kept.refs, *refs] if kept is not None else refs
    described = [*kept.manifests, *manifests] if kept is not None else manifests
    writes: list[Callable[[], Any]] = [partial(write_record, store, key, every, summary, described)]
    for ref, data, manifest in zip(refs, files, manifests, strict=True):
        writes.append(partial(store.put_image, ref.sha256, ref.format, data, {CACHE_KEY_METADATA: key}))
        if not manifest.get("thumbnail"):
            continue
        # From the bytes in hand; a batch row's in the background (its next row need not wait).
        if not (in_batch() and thumbnail_later(store, ref.sha256, data, logger)):
            writes.append(thumbnail_write(store, ref.sha256, data, logger))
    run_concurrently(*writes)
    return with_links(store, every, logger)


def spool_after_failure(
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
    what, configuration = explain_failure(store, error, f"storing {len(images)} paid image(s) in")
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
    return ImagesSpooledError(message, spool_path=path, count=len(images), configuration=configuration)


async def store_from_spool(
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
        linked: list[ImageRef] = await in_thread(
            store_result, store, key, files, refs, manifests, entry.request, logger, kept
        )
    except Exception as exc:
        raise storage_error(
            store,
            exc,
            f"storing {len(entry.images)} spooled image(s) from {entry.path} in",
            "they stay spooled, run again later (nothing was paid)",
        ) from exc
    spool.clear(key)
    logger.info(
        "Recovered %d image(s) from the spool into %s (no API call, no cost)", len(refs), store.describe()
    )
    return linked


async def publish_call_artifacts(
    refs: list[ImageRef],
    *,
    params: dict[str, Any],
    outcome: str,
    key: str,
    charged: float,
    settings: GptImageSettings,
    logger: Any,
    estimate: float = 0.0,
) -> None:
    """The call's own artifacts (none for a batch row, at most ``max_call_artifacts_per_run`` per
    run); best effort: a failure is a warning."""
    if in_batch():
        return
    flow_run_id, task_run_id = run_ids()
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
        await publish_artifacts(
            refs, params=params, outcome=outcome, cache_key=key, charged=charged, estimate=estimate
        )
    except Exception as exc:
        logger.warning("Creating the artifacts failed: %s", exc)
