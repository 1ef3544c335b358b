"""The run of a chain: the rows' chains made concurrently under the shared limits, each step a
cached call (a failed step fails its row only; later steps are skipped)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prefect.artifacts import acreate_progress_artifact
from prefect.utilities.annotations import quote

from prefect_gpt_image.api import EditRequest, GenerateRequest, GptImageError
from prefect_gpt_image.api.images import MAX_MASK_BYTES
from prefect_gpt_image.blocks import GptImageCredentials, GptImageSettings
from prefect_gpt_image.calls import (
    batch_rows,
    collect_maybe_billed,
    edit_request,
    generate_request,
    hold_slots,
    read_input,
    run_row_call,
    with_links,
)
from prefect_gpt_image.storage import ImageStore
from prefect_gpt_image.tasks import ImageRef, blend_images, edit_image, generate_image

from ..masks import build_mask
from ..params import BlendStep, EditStep, GenerateStep
from ..rows import Progress, run_workers
from .planning import edit_size
from .steps import ChainResult, PreparedRow, StepCall, StepResult

__all__ = ["call_variant", "run_chains", "step_request"]


@dataclass
class RunContext:
    credentials: GptImageCredentials | None
    settings: GptImageSettings
    store: ImageStore
    variant: int
    batch: bool
    errors: dict[tuple[int, str], BaseException] = field(default_factory=dict)


async def run_chains(
    prepared: list[PreparedRow],
    *,
    variant: int,
    credentials: GptImageCredentials | None,
    settings: GptImageSettings,
    store: ImageStore,
    batch: bool,
    max_parallel: int | None,
    progress_key: str | None,
    logger: Any,
) -> tuple[ChainResult, dict[tuple[int, str], BaseException]]:
    """Make every valid row's chain (``max_parallel`` rows at once; unset: twice the settings'
    concurrency limit); the results row after row, and the error of each failed or invalid step.

    ``batch`` makes each step as the image call itself, without a task run of its own, serves the
    steps found in the plan straight from the store and keeps the calls' own artifacts off (the
    batch's table lists them); else each step is its task's run (``image_pipeline``)."""
    rt = RunContext(credentials, settings, store, variant, batch=batch)
    results: dict[int, list[StepResult]] = {}
    total = sum(max(1, len(item.calls)) for item in prepared)
    progress: Progress | None = None
    if progress_key is not None:
        artifact = await acreate_progress_artifact(
            0.0, key=progress_key, description=f"gpt-image: {len(prepared)} rows, {total} steps"
        )
        progress = Progress(total, artifact, unit="steps")
    queue: asyncio.Queue[PreparedRow] = asyncio.Queue()
    for item in prepared:
        if item.invalid_step is not None:
            results[item.row.number] = [_invalid(item)]
            rt.errors[(item.row.number, item.invalid_step)] = item.error or ValueError("invalid")
            if progress is not None:
                progress.advance()
        else:
            queue.put_nowait(item)

    async def worker() -> None:
        while True:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            results[item.row.number] = await _run_row(item, rt, progress, logger)

    rows_at_once = max(1, min(queue.qsize(), max_parallel or 2 * settings.concurrency_limit))
    must_run = any(call.cached is None for item in prepared for call in item.calls)
    if batch and must_run:
        # A finished call's concurrency slot goes to the next call of this batch without a round
        # trip to the server (the slots are released when the batch ends).
        async with hold_slots(
            settings.concurrency_limit_name,
            prefetch=min(rows_at_once, settings.concurrency_limit),
            slots=settings.concurrency_limit,
            logger=logger,
        ):
            with batch_rows():
                await run_workers(worker, rows_at_once, settings, logger)
    elif batch:  # every step is in the store: no concurrency slot
        await worker()
    else:
        await asyncio.gather(*(worker() for _ in range(rows_at_once)))
    if progress is not None:
        await progress.finish()
    ordered = [step for item in prepared for step in results.get(item.row.number, [])]
    return ChainResult(steps=ordered), rt.errors


def _invalid(item: PreparedRow) -> StepResult:
    return StepResult(
        row=item.row.number,
        id=item.row.id,
        step=item.invalid_step or "",
        kind=item.invalid_kind,
        source=item.row.source,
        status="invalid",
        error=str(item.error),
        error_type=type(item.error).__name__ if item.error is not None else None,
    )


async def _run_row(
    item: PreparedRow, rt: RunContext, progress: Progress | None, logger: Any
) -> list[StepResult]:
    outputs: dict[str, ImageRef] = dict(item.made)
    done: list[StepResult] = []
    failed: str | None = None
    for call in item.calls:
        result = StepResult(
            row=item.row.number,
            id=item.row.id,
            step=call.name,
            kind=call.step.kind,
            prompt=call.prompt,
            status="skipped",
            source=_source(call, outputs),
            error=failed,
        )
        if failed is None:
            failed = await _run_step(call, result, outputs, rt, logger)
        done.append(result)
        if progress is not None:
            progress.advance(result)
    return done


async def _run_step(
    call: StepCall, result: StepResult, outputs: dict[str, ImageRef], rt: RunContext, logger: Any
) -> str | None:
    """Serve or make ``call``, filling in ``result``; why the row's later steps are skipped, or None."""
    if rt.batch and call.cached is not None:
        refs = with_links(rt.store, call.cached, logger)
        result.serve(refs)
    else:
        with collect_maybe_billed() as lost:
            try:
                refs = await _make(call, outputs, rt, f"Row {result.row}, step {call.name}")
            except Exception as exc:  # a failed step fails its row only
                rt.errors[(result.row, call.name)] = exc
                request_id = exc.request_id if isinstance(exc, GptImageError) else None
                logger.warning("row %d, step %s failed: %s", result.row, call.name, exc)
                result.status, result.error, result.error_type = "failed", str(exc), type(exc).__name__
                result.request_id = request_id
                result.charge(lost, request_id)
                return f"step {call.name!r} failed"
        result.charge(lost)
    outputs[call.name] = refs[0]
    result.status, result.error, result.images = "stored", None, refs
    result.request_id = refs[0].request_id
    return None


def _source(call: StepCall, outputs: Mapping[str, ImageRef]) -> str:
    if not call.inputs:
        return ""
    first = call.inputs[0]
    if first.uri is not None:
        return first.uri
    made = outputs.get(first.step or "")
    return made.uri if made is not None else f"step {first.step}"


def _arguments(
    call: StepCall, outputs: Mapping[str, ImageRef]
) -> tuple[list[ImageRef | str], str | bytes | None, dict[str, Any]]:
    """A step's input images (the edited one first), its mask and its request fields, now that
    the outputs it names are made."""
    images: list[ImageRef | str] = [
        outputs[inp.step] if inp.step is not None else str(inp.uri) for inp in call.inputs
    ]
    fields = dict(call.fields)
    if not isinstance(call.step, EditStep):
        return images, None, fields
    first = images[0]
    dims = (first.width, first.height) if isinstance(first, ImageRef) else None
    if dims is None and call.inputs[0].header is not None:
        dims = (call.inputs[0].header.width, call.inputs[0].header.height)
    if "size" not in fields:
        size = edit_size(dims, fields)
        if size is not None:
            fields["size"] = size
    mask: str | bytes | None = call.mask_uri
    if mask is None and call.region is not None and dims is not None:
        mask = build_mask(dims[0], dims[1], call.region)
    return images, mask, fields


async def _make(call: StepCall, outputs: Mapping[str, ImageRef], rt: RunContext, what: str) -> list[ImageRef]:
    """Make (or find) one step's images: in a batch the image call itself (no task run per step,
    see :func:`~prefect_gpt_image.calls.run_row_call`), else with the step's task."""
    if rt.batch:
        request = await asyncio.to_thread(step_request, call, outputs, rt.settings, rt.store)
        made = await run_row_call(
            request,
            variant=call_variant(call, rt.variant),
            credentials=rt.credentials,
            settings=rt.settings,
            store=rt.store,
            what=what,
        )
        return made.refs
    images, mask, fields = _arguments(call, outputs)
    common: dict[str, Any] = {
        "variant": call_variant(call, rt.variant),
        "credentials": quote(rt.credentials),
        "settings": quote(rt.settings),
        "storage": quote(rt.store),
    }
    step = call.step
    refs: list[ImageRef]
    if isinstance(step, GenerateStep):
        refs = await generate_image.aio(call.prompt, **fields, **common)
    elif isinstance(step, BlendStep):
        refs = await blend_images.aio(call.prompt, images, **fields, **common)
    else:
        refs = await edit_image.aio(call.prompt, images[0], mask, references=images[1:], **fields, **common)
    return refs


def call_variant(call: StepCall, variant: int) -> int:
    """The variant ``call`` is made with: its own (a redo's) or the run's ``variant``."""
    return call.variant if call.variant is not None else variant


def step_request(
    call: StepCall, outputs: Mapping[str, ImageRef], settings: GptImageSettings, store: ImageStore
) -> GenerateRequest | EditRequest:
    """The request of a step whose inputs are made, as its task would build it (reads the inputs
    and builds the mask: blocking)."""
    images, mask, fields = _arguments(call, outputs)
    if isinstance(call.step, GenerateStep):
        return generate_request(call.prompt, settings, **fields)
    labels = [f"{call.name}.image"] + [f"{call.name}.references[{i}]" for i in range(len(images) - 1)]
    policy = settings.input_policy()
    loaded = [
        read_input(image, store, what=label, policy=policy)
        for image, label in zip(images, labels, strict=True)
    ]
    mask_image = None
    if mask is not None:
        mask_image = read_input(
            mask, store, what=f"{call.name}.mask", policy=policy, max_bytes=MAX_MASK_BYTES
        )
    return edit_request(call.prompt, loaded, mask_image, settings, **fields)
