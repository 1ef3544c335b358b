"""``image_pipeline``: generate from a prompt, then (optionally) edit with a mask, then (optionally)
blend with reference images; ``batch_pipeline``: a chain of such steps for every row of a manifest.

Both run on the one chain engine (:mod:`.chain`): ``image_pipeline`` is its one-row case. Every
input of every step is checked before the first paid call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, NoReturn, cast

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State
from prefect.states import Completed
from pydantic import BaseModel, Field, TypeAdapter

from prefect_gpt_image.blocks import GptImageCredentials, GptImageSettings
from prefect_gpt_image.calls import call_prices, md_text, read_once
from prefect_gpt_image.storage import ImageStore
from prefect_gpt_image.tasks import BatchFailedError, ImageRef, sync_or_async

from .batch_review import review_sheet
from .chain import (
    ChainResult,
    ChainRow,
    failed_steps,
    make_chains,
    plan_batch,
    plan_chains,
    publish_chain_markdown,
    run_batch,
    split_reviews,
    step_names,
)
from .failures import failure_counts, failure_message
from .manifest import read_records
from .params import BlendStep, ChainStep, EditStep, GenerateStep, ImageOptions, ReviewStep, load_blocks
from .plan import RunPlan, enforce_budget, has_budget, planned
from .review import ReviewDecision, ReviewTimeoutError
from .sheets import sheet_publisher

__all__ = ["PipelineResult", "batch_pipeline", "image_pipeline", "pipeline_rows", "plan_batch_pipeline"]

PIPELINE_ARTIFACT_KEY = "gpt-image-pipeline"
BATCH_PIPELINE_KEY = "gpt-image-batch-pipeline"
_LOGGER = logging.getLogger("prefect_gpt_image.flows.pipeline")


class PipelineResult(BaseModel):
    """Every step's images: ``generated``, then ``edited`` and ``blended`` when those steps ran."""

    generated: list[ImageRef]
    edited: list[ImageRef] | None = None
    blended: list[ImageRef] | None = None
    dropped: bool = Field(False, description="A reviewer dropped the generated image: nothing more was made.")
    review: list[ReviewDecision] = Field(
        default_factory=list, description="The review decisions (who, what, when), with review=True."
    )

    @property
    def final(self) -> ImageRef:
        """The last image the pipeline made."""
        return (self.blended or self.edited or self.generated)[0]


@sync_or_async
@flow(name="gpt-image-pipeline", description="Generate, then edit with a mask, then blend with references.")
async def image_pipeline(
    prompt: str,
    options: ImageOptions | None = None,
    edit: EditStep | None = None,
    blend: BlendStep | None = None,
    variant: int = 0,
    review: bool = False,
    review_timeout: int = 86400,
    max_review_rounds: int = 3,
    storage: str | None = None,
    credentials_block: str | None = None,
    settings_block: str | None = None,
) -> PipelineResult:
    """Generate an image, then optionally edit it with a mask, then optionally blend it with references.

    Args:
        prompt: What to draw first.
        options: Size, quality, format and background for every step; unset ones come from the settings.
        edit: Optional edit of the generated image: a prompt and a mask (an image URI or a box).
        blend: Optional blend of the current image with 1..15 reference images.
        variant: Change it to get new images for the same inputs (part of the cache key).
        review: Pause after the generation for a person to approve the image, redo it (a new
            variant, an optional prompt note) or drop it, in the UI, before the edit and blend.
        review_timeout: Seconds the review waits for an answer; then the run fails, paying nothing more.
        max_review_rounds: Reviews at most; in the last one a redo drops the image.
        storage: A folder, an s3://bucket/prefix URI, or a saved block's slug
            (gpt-image-storage/NAME or s3-bucket/NAME); unset: $GPT_IMAGE_STORAGE or ./gpt-image-output.
        credentials_block: Name of a saved GptImageCredentials block; unset: $GPT_IMAGE_API_KEY,
            else $OPENAI_API_KEY, each sent only to its own base URL.
        settings_block: Name of a saved GptImageSettings block; unset: the defaults.
    """
    logger = get_run_logger()
    settings, credentials, store = await load_blocks(settings_block, credentials_block, storage)
    chain: list[ChainStep] = [GenerateStep(prompt=prompt)]
    if review:
        chain.append(ReviewStep(timeout_seconds=review_timeout, max_rounds=max_review_rounds))
    chain += [step for step in (edit, blend) if step is not None]
    steps, reviews = split_reviews(chain)
    # Each remote input is fetched once: the plan checks it, the call sends it, the sheet shows it.
    with read_once():
        # One row: every input of every step is checked before the first paid call, as in a batch.
        plan, prepared = await asyncio.to_thread(
            plan_chains,
            [ChainRow(number=1, templates=False)],
            steps,
            options=options or ImageOptions(),
            variant=variant,
            settings=settings,
            store=store,
            prices=call_prices(credentials, settings),
            lookup=has_budget(settings),
        )
        if prepared[0].error is not None:
            raise prepared[0].error
        if has_budget(settings):
            await enforce_budget(plan, settings)
        result, errors, stopped = await make_chains(  # one row, its steps as task runs
            prepared,
            reviews,
            title="gpt-image pipeline",
            sheet=review_sheet(store, settings, logger),
            logger=logger,
            variant=variant,
            credentials=credentials,
            settings=settings,
            store=store,
        )
        if stopped is not None:
            raise ReviewTimeoutError(stopped)
        if errors:
            await _fail(result, next(iter(errors.values())), prompt, store)
        made = [step.images for step in result.steps]
        first = result.steps[0]
        pipeline = PipelineResult(generated=made[0], dropped=first.status == "dropped", review=first.review)
        if pipeline.dropped:
            logger.info("the reviewer dropped the generated image: nothing more is made")
        else:
            if edit is not None:
                pipeline.edited = made[1]
            if blend is not None:
                pipeline.blended = made[-1]
        for step in result.steps:
            if step.images:
                logger.info("%s: %s", step.step, step.images[0].uri)
        bill = result.bill()
        await publish_chain_markdown(
            result,
            key=PIPELINE_ARTIFACT_KEY,
            title="gpt-image pipeline",
            description=md_text(f"gpt-image pipeline: {prompt[:120]}"),
            publish_sheet=sheet_publisher(store, None, logger),
        )
        logger.info(bill.line())
        # The run ends with its bill as its state message; Prefect hands the caller the state's data
        # (the PipelineResult), as the batch flows' states do.
        return cast(PipelineResult, Completed(message=bill.line(), data=pipeline))


async def _fail(result: ChainResult, error: BaseException, prompt: str, store: ImageStore) -> NoReturn:
    """End a failed ``image_pipeline``: the chain's markdown artifact (the steps stored before the
    failure and why it failed), then :class:`BatchFailedError` with the chain attached, from the
    step's own error."""
    failed = failed_steps(result)
    if not failed:
        raise error
    await publish_chain_markdown(
        result,
        key=PIPELINE_ARTIFACT_KEY,
        title="gpt-image pipeline",
        description=f"gpt-image pipeline (failed): {prompt[:120]}",
        publish_sheet=sheet_publisher(store, None, get_run_logger()),
    )
    stored = sum(s.status == "stored" for s in result.steps)
    headline = (
        f"the pipeline failed at step {failed[0].step!r} ({failure_counts(failed)}); "
        f"{stored} of {len(result.steps)} step(s) stored"
    )
    artifact = f"markdown artifact {PIPELINE_ARTIFACT_KEY!r}"
    message = failure_message(headline, failed, artifact=artifact, what="every step")
    raise BatchFailedError(message, result=result) from error


@sync_or_async
@flow(
    name="gpt-image-batch-pipeline",
    description="Run a chain of steps (generate, edit, blend) for every row of a manifest.",
)
async def batch_pipeline(
    manifest: str,
    steps: list[ChainStep],
    options: ImageOptions | None = None,
    variant: int = 0,
    max_parallel: int | None = None,
    plan_only: bool = False,
    storage: str | None = None,
    credentials_block: str | None = None,
    settings_block: str | None = None,
) -> ChainResult | RunPlan | State[Any]:
    """Run the same chain of steps for every row of a manifest; a failed step fails its row only.

    Args:
        manifest: A CSV (with a header) or JSONL file, local or s3://, one row per chain; its
            columns fill the steps' templates and may hold input URIs. An 'id' column is echoed.
        steps: The chain, in order: generate, edit (a mask URI or a region) and blend
            (references) steps, each with a prompt template ('{product} on a {surface}'), its own
            options, and inputs naming an earlier step, a column holding a URI, or a URI; and
            review steps between them (or last): the run pauses for a person to approve, redo or
            drop each row's result of the step before, in the UI, before the next steps spend.
        options: Options for every step (a step's own options win); unset ones come from the
            settings. An edit keeps its image's size unless its own options set one.
        variant: Change it to get new images for the same rows (part of every step's cache key).
        max_parallel: Rows in progress at once; unset: twice the settings' concurrency limit.
        plan_only: Only plan: validate every row and step, look every call up in the store, and
            report the calls to make and their estimated cost, paying nothing.
        storage: A folder, an s3://bucket/prefix URI, or a saved block's slug
            (gpt-image-storage/NAME or s3-bucket/NAME); unset: $GPT_IMAGE_STORAGE or ./gpt-image-output.
        credentials_block: Name of a saved GptImageCredentials block; unset: $GPT_IMAGE_API_KEY,
            else $OPENAI_API_KEY, each sent only to its own base URL.
        settings_block: Name of a saved GptImageSettings block; unset: the defaults.
    """
    logger = get_run_logger()
    step_names(split_reviews(steps)[0])  # no steps, a name used twice: fails before anything is read
    settings, credentials, store = await load_blocks(
        settings_block, credentials_block, storage, spending=not plan_only
    )
    if plan_only:
        plan = await plan_batch_pipeline(
            manifest,
            steps,
            options,
            variant,
            settings=settings,
            credentials=credentials,
            store=store,
            logger=logger,
        )
        return await planned(plan, logger)
    rows = pipeline_rows(manifest, steps, settings=settings, store=store, logger=logger)
    return await run_batch(
        rows,
        steps,
        options=options or ImageOptions(),
        variant=variant,
        max_parallel=max_parallel,
        credentials=credentials,
        settings=settings,
        store=store,
        key=BATCH_PIPELINE_KEY,
        title="gpt-image batch pipeline",
        sheet=review_sheet(store, settings, logger),
        publish_sheet=sheet_publisher(store, settings.input_policy(), logger),
        logger=logger,
    )


def pipeline_rows(
    manifest: str, steps: Sequence[object], *, settings: GptImageSettings, store: ImageStore, logger: Any
) -> list[ChainRow]:
    """The rows of a batch pipeline of ``steps``: one per manifest record, its columns filling the
    steps' templates (a record that is not an object is an invalid row)."""
    rows = [
        ChainRow(
            number=index,
            id=str(data["id"]) if isinstance(data, dict) and data.get("id") else None,
            columns=data if isinstance(data, dict) else None,
            error=None if isinstance(data, dict) else f"line {line}: {data}",
        )
        for index, (line, data) in enumerate(
            read_records(manifest, store, policy=settings.input_policy(), require=None), start=1
        )
    ]
    logger.info("batch pipeline of %d row(s) x %d step(s)", len(rows), len(steps))
    return rows


async def plan_batch_pipeline(
    manifest: str,
    steps: Sequence[ChainStep | dict[str, Any]],
    options: ImageOptions | None = None,
    variant: int = 0,
    *,
    settings: GptImageSettings,
    credentials: GptImageCredentials | None,
    store: ImageStore,
    logger: Any = _LOGGER,
) -> RunPlan:
    """What ``batch_pipeline(..., plan_only=True)`` returns, made outside any flow run: every row
    and step checked, every call looked up in ``store`` and priced (see :func:`.chain.plan_batch`).
    It needs no key and asks no Prefect server anything; nothing is sent. ``steps`` as the flow
    takes them: the step models, or their dicts (a JSON or YAML file's)."""
    steps = TypeAdapter(list[ChainStep]).validate_python(steps)
    step_names(split_reviews(steps)[0])
    rows = pipeline_rows(manifest, steps, settings=settings, store=store, logger=logger)
    plan, _ = await plan_batch(
        rows,
        steps,
        options=options or ImageOptions(),
        variant=variant,
        credentials=credentials,
        settings=settings,
        store=store,
    )
    return plan
