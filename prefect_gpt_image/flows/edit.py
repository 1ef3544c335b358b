"""``batch_edit``: one edit (a prompt, a mask image or a box, references, options) applied to many
existing images: a folder, an ``s3://bucket/prefix/``, a list of URIs, or a manifest's column.

One paid edit per input; each output keeps a link to its source (its manifest's ``parents``, the
table's ``source`` column). A region becomes a mask at each image's own size. Inputs the API would
refuse (not an image, 50 MB or more, a mask of another size, a box outside the image) are
reported as invalid rows before anything is paid for.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State

from prefect_gpt_image.blocks import GptImageCredentials, GptImageSettings
from prefect_gpt_image.storage import ImageStore
from prefect_gpt_image.tasks import sync_or_async

from .batch_review import review_sheet
from .chain import ChainResult, ChainRow, plan_batch, run_batch
from .masks import MaskRegion
from .params import ChainStep, EditStep, ImageOptions, ReviewStep, load_blocks
from .plan import RunPlan, planned
from .sheets import sheet_publisher
from .sources import image_sources, is_manifest

__all__ = ["BATCH_EDIT_KEY", "batch_edit", "edit_rows", "plan_batch_edit"]

BATCH_EDIT_KEY = "gpt-image-batch-edit"
_LOGGER = logging.getLogger("prefect_gpt_image.flows.edit")


@sync_or_async
@flow(name="gpt-image-batch-edit", description="Apply one edit to many existing images.")
async def batch_edit(
    images: str | list[str],
    prompt: str,
    mask_uri: str | None = None,
    region: MaskRegion | None = None,
    references: list[str] | None = None,
    options: ImageOptions | None = None,
    image_column: str = "image",
    variant: int = 0,
    max_parallel: int | None = None,
    plan_only: bool = False,
    review: bool = False,
    review_timeout: int = 86400,
    max_review_rounds: int = 3,
    storage: str | None = None,
    credentials_block: str | None = None,
    settings_block: str | None = None,
) -> ChainResult | RunPlan | State[Any]:
    """Edit every image of a folder, an S3 prefix, a list or a manifest the same way; one bad image
    never sinks the batch.

    Args:
        images: A folder, an s3://bucket/prefix/ (every png, jpeg and webp under it), a list of
            paths or URIs, or a CSV/JSONL manifest whose image_column holds each row's image.
        prompt: How to change each image, e.g. 'replace the background with a white studio'. With
            a manifest, a template filled from the row's columns ('{product} on {surface}').
        mask_uri: A mask PNG (alpha 0 = edit) for every image (all of its size), or a manifest
            column holding each row's mask; or leave empty and give a region.
        region: The box to edit, in pixels or fractions (0..1); a mask is built at each image's size.
        references: Up to 15 more images sent with each one (a logo, a frame, a style).
        options: Size, quality, format, background; unset size: each image's own (or auto).
        image_column: The manifest column holding the images.
        variant: Change it to get new edits of the same inputs (part of the cache key).
        max_parallel: Images in progress at once; unset: twice the settings' concurrency limit.
        plan_only: Only plan: check every image, look every edit up in the store, report the
            edits to make and their estimated cost, paying nothing.
        review: Pause after the edits for a person to approve them, redo some (with a new
            variant and an optional prompt note) or drop some, in the Resume dialog of the UI.
        review_timeout: Seconds a review waits for an answer; then the run fails, paying nothing more.
        max_review_rounds: Reviews at most (redone rows are reviewed again); in the last one a
            row listed to redo is dropped.
        storage: A folder, an s3://bucket/prefix URI, or a saved block's slug
            (gpt-image-storage/NAME or s3-bucket/NAME); unset: $GPT_IMAGE_STORAGE or ./gpt-image-output.
        credentials_block: Name of a saved GptImageCredentials block; unset: $GPT_IMAGE_API_KEY,
            else $OPENAI_API_KEY, each sent only to its own base URL.
        settings_block: Name of a saved GptImageSettings block; unset: the defaults.
    """
    logger = get_run_logger()
    settings, credentials, store = await load_blocks(
        settings_block, credentials_block, storage, spending=not plan_only
    )
    edit = (images, prompt, mask_uri, region, references, options, image_column)
    if plan_only:
        plan = await plan_batch_edit(
            *edit, variant, settings=settings, credentials=credentials, store=store, logger=logger
        )
        return await planned(plan, logger)
    rows, step = edit_rows(*edit, settings=settings, store=store, logger=logger)
    steps: list[ChainStep] = [step]
    if review:
        steps.append(ReviewStep(timeout_seconds=review_timeout, max_rounds=max_review_rounds))
    return await run_batch(
        rows,
        steps,
        options=ImageOptions(),
        variant=variant,
        max_parallel=max_parallel,
        credentials=credentials,
        settings=settings,
        store=store,
        key=BATCH_EDIT_KEY,
        title="gpt-image batch edit",
        sheet=review_sheet(store, settings, logger),
        publish_sheet=sheet_publisher(store, settings.input_policy(), logger),
        logger=logger,
    )


def edit_rows(
    images: str | list[str],
    prompt: str,
    mask_uri: str | None,
    region: MaskRegion | None,
    references: list[str] | None,
    options: ImageOptions | None,
    image_column: str,
    *,
    settings: GptImageSettings,
    store: ImageStore,
    logger: Any,
) -> tuple[list[ChainRow], EditStep]:
    """The rows of a batch edit (``batch_edit``'s parameters): one per image found, each with its
    manifest columns, and the edit step they all get. Nothing is read but the listing (or manifest)."""
    if mask_uri and region is not None:
        raise ValueError("give mask_uri or region, not both")
    step = EditStep(
        prompt=prompt,
        mask_uri=mask_uri,
        region=region,
        image=image_column,
        references=references or [],
        options=options,
    )
    sources = image_sources(images, store, policy=settings.input_policy(), column=image_column)
    if not sources:
        raise ValueError(f"images: no png, jpeg or webp image found in {images!r}")
    templates = is_manifest(images)
    rows = [
        ChainRow(
            number=s.number,
            id=str(s.columns["id"]) if templates and s.columns.get("id") else None,
            columns=s.columns,
            templates=templates,
            source=s.uri,
            error=s.error,
        )
        for s in sources
    ]
    logger.info("batch edit of %d image(s)", len(rows))
    return rows, step


async def plan_batch_edit(
    images: str | list[str],
    prompt: str,
    mask_uri: str | None = None,
    region: MaskRegion | None = None,
    references: list[str] | None = None,
    options: ImageOptions | None = None,
    image_column: str = "image",
    variant: int = 0,
    *,
    settings: GptImageSettings,
    credentials: GptImageCredentials | None,
    store: ImageStore,
    logger: Any = _LOGGER,
) -> RunPlan:
    """What ``batch_edit(..., plan_only=True)`` returns, made outside any flow run: every image
    checked, every edit looked up in ``store`` and priced (see :func:`.chain.plan_batch`). It
    needs no key and asks no Prefect server anything; nothing is sent."""
    rows, step = edit_rows(
        images,
        prompt,
        mask_uri,
        region,
        references,
        options,
        image_column,
        settings=settings,
        store=store,
        logger=logger,
    )
    plan, _ = await plan_batch(
        rows,
        [step],
        options=ImageOptions(),
        variant=variant,
        credentials=credentials,
        settings=settings,
        store=store,
    )
    return plan
