"""Run a chain of steps (generate, edit, blend) for each row: the one engine behind
``image_pipeline`` (one row), ``batch_edit`` (one edit per image) and ``batch_pipeline``.

Two phases. The *plan* validates every row and step before anything is paid for: prompt
templates filled from the row's columns, inputs resolved (an earlier step's output, a column
holding a URI, or a URI) and read (format, size, decodability), masks checked against their image
(a region becomes a mask at that image's size), each request built as the API layer would, and
every call whose inputs are known looked up in the store's cache records. The *run* then makes
the rows' chains concurrently under the shared limits; a failed step fails its row only, and
a rerun pays only for the steps never stored (every step is a cached call).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from prefect.artifacts import acreate_markdown_artifact, acreate_progress_artifact, acreate_table_artifact
from prefect.client.schemas.objects import State
from prefect.settings import PREFECT_TASKS_REFRESH_CACHE
from prefect.states import Completed, Failed
from prefect.utilities.annotations import quote
from pydantic import BaseModel, Field

from prefect_gpt_image.api import EditRequest, GenerateRequest, GptImageError
from prefect_gpt_image.api.images import MAX_MASK_BYTES, InputImage
from prefect_gpt_image.api.inputpolicy import InputPolicy
from prefect_gpt_image.api.models import parse_size
from prefect_gpt_image.blocks import GptImageCredentials, GptImageSettings
from prefect_gpt_image.calls import (
    BilledAttempts,
    InputCache,
    batch_rows,
    cache_key,
    collect_maybe_billed,
    edit_request,
    generate_request,
    hold_slots,
    md_image,
    md_link,
    md_table,
    md_text,
    read_input,
    read_once,
    read_record,
    run_cache,
    run_row_call,
    with_links,
)
from prefect_gpt_image.storage import ImageStore
from prefect_gpt_image.tasks import ImageRef, blend_images, edit_image, generate_image

from .failures import Counted, FailedRow, failure_counts, failure_message
from .masks import MaskRegion, build_mask
from .params import BlendStep, EditStep, GenerateStep, ImageOptions, PipelineStep
from .plan import PlannedCall, RunPlan, enforce_budget, has_budget, publish_plan
from .rows import Progress, run_workers
from .templates import fill_template

__all__ = [
    "ChainResult",
    "ChainRow",
    "StepResult",
    "chain_markdown",
    "edit_size",
    "failed_steps",
    "plan_chains",
    "publish_chain_markdown",
    "publish_chain_table",
    "run_batch",
    "run_chains",
    "step_names",
]

_PREVIEW_ROWS = 3
_PLAN_THREADS = 8


@dataclass(frozen=True)
class ChainRow:
    """One row of a chain run: its number, its own id, and its columns (the templates' values and
    the inputs' URIs)."""

    number: int
    id: str | None = None
    columns: Mapping[str, Any] | None = None
    source: str = ""
    """The row's input image, named in its results when it is invalid."""
    templates: bool = True
    """Whether prompts and URIs are templates filled from the columns (else taken as written)."""
    error: str | None = None
    """Why the row is invalid before any step (e.g. a manifest line that is no row)."""


class StepResult(BaseModel):
    """What happened to one step of one row."""

    row: int = Field(description="1-based row number.")
    id: str | None = None
    step: str = Field(description="The step's name.")
    kind: Literal["generate", "edit", "blend"]
    prompt: str = ""
    status: Literal["stored", "failed", "invalid", "skipped"]
    images: list[ImageRef] = Field(default_factory=list)
    cached: bool = Field(False, description="Served from the store's cache record (nothing paid).")
    source: str = Field("", description="The step's input image (a URI, or the sha256 of an earlier output).")
    request_id: str | None = None
    error: str | None = None
    error_type: str | None = None
    maybe_billed: list[str] = Field(default_factory=list)
    undelivered: dict[str, int] = Field(
        default_factory=dict,
        description="Request ids (also in maybe_billed) of answers whose images were billed but not "
        "delivered (a result URL given up), with how many images each lost.",
    )
    undelivered_cost: float = Field(0.0, description="Estimated USD of those images.")

    @property
    def cost(self) -> float:
        """Estimated USD paid for this step in this run (0 for a cache hit), images billed but
        not delivered included."""
        return (0.0 if self.cached else sum(ref.cost for ref in self.images)) + self.undelivered_cost


class ChainResult(BaseModel):
    """Every row's steps, row after row, and counts."""

    steps: list[StepResult]

    def rows(self) -> dict[int, list[StepResult]]:
        """The steps of each row, by row number."""
        out: dict[int, list[StepResult]] = {}
        for step in self.steps:
            out.setdefault(step.row, []).append(step)
        return out

    @property
    def stored(self) -> int:
        """Rows whose every step is stored."""
        return sum(all(s.status == "stored" for s in steps) for steps in self.rows().values())

    @property
    def failed(self) -> int:
        """Rows with a failed, skipped or invalid step."""
        return len(self.rows()) - self.stored

    @property
    def cost(self) -> float:
        """Estimated USD paid in this run."""
        return sum(s.cost for s in self.steps)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """Counts, not every step: a repr stays one line at any size."""
        yield "steps", Counted(len(self.rows()), self.stored, self.failed, steps=len(self.steps))

    def final(self, row: int) -> ImageRef | None:
        """The last image row ``row`` made, if its chain completed."""
        steps = self.rows().get(row, [])
        return steps[-1].images[0] if steps and all(s.status == "stored" for s in steps) else None


def step_names(steps: Sequence[PipelineStep]) -> list[str]:
    """Each step's name (its kind unless named); ValueError for no steps or a name used twice."""
    if not steps:
        raise ValueError("steps: give at least one step (generate, edit or blend)")
    names = [step.name or step.kind for step in steps]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"steps: two steps are named {name!r}: give each a distinct name")
    return names


# -- the plan ------------------------------------------------------------------------------------


@dataclass
class _Input:
    """One input image of a step: an earlier step's output, or a URI read during the plan."""

    label: str
    step: str | None = None
    uri: str | None = None
    header: InputImage | None = None  # the URI's image, its bytes dropped after the plan


@dataclass
class _Call:
    """One step of one row, validated: all a run needs to make it (or serve it from the store)."""

    name: str
    step: PipelineStep
    prompt: str
    fields: dict[str, Any]
    inputs: list[_Input]
    mask_uri: str | None = None
    region: MaskRegion | None = None
    dims: tuple[int, int] | None = None  # the output's size when it is known before the call
    cached: list[ImageRef] | None = None
    known: bool = False  # the request (so the cache key) was known in the plan


@dataclass
class _Row:
    row: ChainRow
    calls: list[_Call] = field(default_factory=list)
    invalid_step: str | None = None
    invalid_kind: Literal["generate", "edit", "blend"] = "generate"
    error: BaseException | None = None


@dataclass
class _Context:
    steps: Sequence[PipelineStep]
    names: list[str]
    options: ImageOptions
    variant: int
    settings: GptImageSettings
    store: ImageStore
    lookup: bool
    policy: InputPolicy
    cache: InputCache | None  # the run's reads (the plan's threads do not inherit its context)


def plan_chains(
    rows: Sequence[ChainRow],
    steps: Sequence[PipelineStep],
    *,
    options: ImageOptions,
    variant: int,
    settings: GptImageSettings,
    store: ImageStore,
    lookup: bool = True,
) -> tuple[RunPlan, list[_Row]]:
    """Validate every row's chain and look its calls up (``lookup``): the plan, and the prepared rows
    :func:`run_chains` makes. Blocking (reads inputs and the store): run it in a thread."""
    names = step_names(steps)
    lookup = lookup and not PREFECT_TASKS_REFRESH_CACHE.value()
    ctx = _Context(
        steps, names, options, variant, settings, store, lookup, settings.input_policy(), run_cache()
    )
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=_PLAN_THREADS, thread_name_prefix="gpt-image-plan") as pool:
        prepared = list(pool.map(lambda row: _prepare_row(row, ctx), rows))
    calls: list[PlannedCall] = []
    for item in prepared:
        if item.invalid_step is not None:
            calls.append(
                PlannedCall(
                    row=item.row.number,
                    id=item.row.id,
                    step=item.invalid_step,
                    status="invalid",
                    source=item.row.source,
                    error=str(item.error),
                )
            )
            continue
        for call in item.calls:
            status: Literal["call", "cached"] = "cached" if call.cached is not None else "call"
            source = (call.inputs[0].uri or call.inputs[0].step or "") if call.inputs else ""
            calls.append(
                PlannedCall(
                    row=item.row.number,
                    id=item.row.id,
                    step=call.name,
                    status=status,
                    images=int(call.fields.get("n", 1)),
                    source=source,
                )
            )
    return RunPlan(calls=calls, price_per_image=settings.price_per_image), prepared


def _prepare_row(row: ChainRow, ctx: _Context) -> _Row:
    out = _Row(row)
    if row.error is not None:
        out.invalid_step, out.invalid_kind, out.error = ctx.names[0], ctx.steps[0].kind, ValueError(row.error)
        return out
    produced: dict[str, _Call] = {}
    for index, (name, step) in enumerate(zip(ctx.names, ctx.steps, strict=True)):
        try:
            call = _prepare_step(row, index, name, step, produced, ctx)
        except Exception as exc:  # one bad row must not sink the batch: report it, pay nothing for it
            out.invalid_step, out.invalid_kind, out.error, out.calls = name, step.kind, exc, []
            return out
        produced[name] = call
        out.calls.append(call)
    return out


def _where(row: ChainRow) -> str:
    return f"row {row.number}"


def _text(value: str, row: ChainRow) -> str:
    if row.columns is None or not row.templates:
        return value
    return fill_template(value, row.columns, where=_where(row))


def _resolve(value: str, label: str, row: ChainRow, produced: Mapping[str, _Call], ctx: _Context) -> _Input:
    """An input named by ``value``: an earlier step, a column holding a URI, or a URI (a template)."""
    if value in produced:
        return _Input(label, step=value)
    if value in ctx.names:
        raise ValueError(f"{_where(row)}: {label} names step {value!r}, which comes later")
    if row.columns is not None and value in row.columns:
        value = str(row.columns[value] or "")
        if not value.strip():
            raise ValueError(f"{_where(row)}: {label}: the column is empty")
    uri = _text(value, row)
    header = read_input(uri, ctx.store, what=label, policy=ctx.policy, cache=ctx.cache)
    return _Input(label, uri=uri, header=_header(header))


def _header(image: InputImage) -> InputImage:
    """``image`` without its bytes (the plan of a large batch must not hold every image)."""
    return InputImage(
        filename=image.filename,
        data=b"",
        format=image.format,
        width=image.width,
        height=image.height,
        has_alpha=image.has_alpha,
        sha256=image.sha256,
    )


def _input_image(inp: _Input, produced: Mapping[str, _Call]) -> InputImage | None:
    """The input's image as far as the plan knows it (None: an earlier step's output still to make)."""
    if inp.header is not None:
        return inp.header
    source = produced[inp.step] if inp.step is not None else None
    if source is not None and source.cached is not None:
        ref = source.cached[0]
        return InputImage(ref.uri, b"", ref.format, ref.width, ref.height, False, ref.sha256)
    return None


def _input_dims(inp: _Input, produced: Mapping[str, _Call]) -> tuple[int, int] | None:
    image = _input_image(inp, produced)
    if image is not None:
        return image.width, image.height
    return produced[inp.step].dims if inp.step is not None else None


def edit_size(dims: tuple[int, int] | None, fields: Mapping[str, Any]) -> str | None:
    """The size of an edit: the step's own size if set, else the input's when the API takes it as
    an output size, else ``auto`` (None: not known before the input is made)."""
    if fields.get("size"):
        return str(fields["size"])
    if dims is None:
        return None
    try:
        return "x".join(str(side) for side in parse_size(f"{dims[0]}x{dims[1]}"))
    except ValueError:
        return "auto"


def _prepare_step(
    row: ChainRow, index: int, name: str, step: PipelineStep, produced: Mapping[str, _Call], ctx: _Context
) -> _Call:
    prompt = _text(step.prompt, row)
    shared = ctx.options.fields()
    if isinstance(step, EditStep):  # an edit keeps its image's size unless the step says otherwise
        shared.pop("size", None)
    fields = {**shared, **(step.options.fields() if step.options is not None else {})}
    settings = ctx.settings
    if isinstance(step, GenerateStep):
        request = generate_request(prompt, settings, **fields)
        return _Call(
            name, step, prompt, fields, [], dims=request.dimensions, known=True, cached=_lookup(request, ctx)
        )

    first_name = step.image or (ctx.names[index - 1] if index > 0 else "image")
    if step.image is None and index == 0 and (row.columns is None or "image" not in row.columns):
        raise ValueError(f"{_where(row)}: the first step {name!r} needs an input image (give its 'image')")
    inputs = [_resolve(first_name, f"{name}.image", row, produced, ctx)]
    inputs += [
        _resolve(ref, f"{name}.references[{i}]", row, produced, ctx) for i, ref in enumerate(step.references)
    ]
    dims = _input_dims(inputs[0], produced)
    if isinstance(step, EditStep):
        size = edit_size(dims, fields)
        fields = (
            {**fields, "size": size} if size is not None else {k: v for k, v in fields.items() if k != "size"}
        )
    call = _Call(name, step, prompt, fields, inputs, dims=None)
    mask: InputImage | None = None
    if isinstance(step, EditStep):
        if step.mask_uri:
            value = step.mask_uri
            if row.columns is not None and value in row.columns:
                value = str(row.columns[value] or "")
            call.mask_uri = _text(value, row)
            mask = _header(
                read_input(
                    call.mask_uri,
                    ctx.store,
                    what=f"{name}.mask_uri",
                    policy=ctx.policy,
                    max_bytes=MAX_MASK_BYTES,
                    cache=ctx.cache,
                )
            )
        elif step.region is not None:
            call.region = step.region
            if dims is not None:
                step.region.pixels(*dims)
                mask = InputImage.from_bytes(build_mask(dims[0], dims[1], step.region), "mask.png")
    images = [_input_image(inp, produced) for inp in inputs]
    known = all(image is not None for image in images)
    # What is not known yet (an output still to make) is checked with a stand-in of its size.
    stand_in_dims = dims or ((mask.width, mask.height) if mask is not None else (1024, 1024))
    stand_in = InputImage("pending.png", b"", "png", stand_in_dims[0], stand_in_dims[1], False, "0" * 64)
    edit = edit_request(
        prompt, [image if image is not None else stand_in for image in images], mask, settings, **fields
    )
    size_known = isinstance(step, BlendStep) or "size" in fields
    call.dims = edit.dimensions if size_known else None
    if isinstance(step, EditStep) and call.dims is None and dims is not None and fields.get("size") != "auto":
        call.dims = dims
    call.known = known and size_known
    if call.known:
        call.cached = _lookup(edit, ctx)
    return call


def _lookup(request: GenerateRequest | EditRequest, ctx: _Context) -> list[ImageRef] | None:
    """The stored images of ``request`` (None: a miss, or lookups are off); a store that cannot be
    read is a miss (the call's own lookup, under its lock, reports it)."""
    if not ctx.lookup:
        return None
    try:
        refs = read_record(ctx.store, cache_key(request, ctx.variant))
    except Exception:
        return None
    return None if refs is None else refs


# -- the run -------------------------------------------------------------------------------------


@dataclass
class _Runtime:
    credentials: GptImageCredentials | None
    settings: GptImageSettings
    store: ImageStore
    variant: int
    batch: bool
    errors: dict[tuple[int, str], BaseException] = field(default_factory=dict)


async def run_chains(
    prepared: list[_Row],
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
    rt = _Runtime(credentials, settings, store, variant, batch=batch)
    results: dict[int, list[StepResult]] = {}
    total = sum(max(1, len(item.calls)) for item in prepared)
    progress: Progress | None = None
    if progress_key is not None:
        artifact = await acreate_progress_artifact(
            0.0, key=progress_key, description=f"gpt-image: {len(prepared)} rows, {total} steps"
        )
        progress = Progress(total, artifact)
    queue: asyncio.Queue[_Row] = asyncio.Queue()
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


def failed_steps(result: ChainResult) -> list[FailedRow]:
    """The failed and invalid steps of ``result`` (a skipped step is counted in its row)."""
    return [
        FailedRow(s.row, s.id, s.error_type or s.status, s.error, step=s.step)
        for s in result.steps
        if s.status in ("failed", "invalid")
    ]


def _invalid(item: _Row) -> StepResult:
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


async def _run_row(item: _Row, rt: _Runtime, progress: Progress | None, logger: Any) -> list[StepResult]:
    outputs: dict[str, ImageRef] = {}
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
            progress.advance()
    return done


async def _run_step(
    call: _Call, result: StepResult, outputs: dict[str, ImageRef], rt: _Runtime, logger: Any
) -> str | None:
    """Serve or make ``call``, filling in ``result``; why the row's later steps are skipped, or None."""
    if rt.batch and call.cached is not None:
        refs, result.cached, lost = with_links(rt.store, call.cached, logger), True, BilledAttempts()
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
                _note_billed(result, lost, rt.settings, request_id)
                return f"step {call.name!r} failed"
    outputs[call.name] = refs[0]
    result.status, result.error, result.images = "stored", None, refs
    result.request_id = refs[0].request_id
    _note_billed(result, lost, rt.settings, None)
    return None


def _note_billed(
    result: StepResult, lost: BilledAttempts, settings: GptImageSettings, request_id: str | None
) -> None:
    """Report in ``result`` the attempts ``lost`` noted (the failed call's own ``request_id`` only
    when its images were billed but not delivered) and price the undelivered images."""
    result.maybe_billed = lost.besides(request_id)
    result.undelivered = dict(lost.undelivered)
    result.undelivered_cost = lost.undelivered_images * settings.price_per_image


def _source(call: _Call, outputs: Mapping[str, ImageRef]) -> str:
    if not call.inputs:
        return ""
    first = call.inputs[0]
    if first.uri is not None:
        return first.uri
    made = outputs.get(first.step or "")
    return made.uri if made is not None else f"step {first.step}"


def _arguments(
    call: _Call, outputs: Mapping[str, ImageRef]
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


async def _make(call: _Call, outputs: Mapping[str, ImageRef], rt: _Runtime, what: str) -> list[ImageRef]:
    """Make (or find) one step's images: in a batch the image call itself (no task run per step,
    see :func:`~prefect_gpt_image.calls.run_row_call`), else with the step's task."""
    if rt.batch:
        request = await asyncio.to_thread(_request, call, outputs, rt)
        made = await run_row_call(
            request,
            variant=rt.variant,
            credentials=rt.credentials,
            settings=rt.settings,
            store=rt.store,
            what=what,
        )
        return made.refs
    images, mask, fields = _arguments(call, outputs)
    common: dict[str, Any] = {
        "variant": rt.variant,
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


def _request(call: _Call, outputs: Mapping[str, ImageRef], rt: _Runtime) -> GenerateRequest | EditRequest:
    """The request of a step whose inputs are made, as its task would build it (reads the inputs
    and builds the mask: blocking)."""
    images, mask, fields = _arguments(call, outputs)
    if isinstance(call.step, GenerateStep):
        return generate_request(call.prompt, rt.settings, **fields)
    labels = [f"{call.name}.image"] + [f"{call.name}.references[{i}]" for i in range(len(images) - 1)]
    policy = rt.settings.input_policy()
    loaded = [
        read_input(image, rt.store, what=label, policy=policy)
        for image, label in zip(images, labels, strict=True)
    ]
    mask_image = None
    if mask is not None:
        mask_image = read_input(
            mask, rt.store, what=f"{call.name}.mask", policy=policy, max_bytes=MAX_MASK_BYTES
        )
    return edit_request(call.prompt, loaded, mask_image, rt.settings, **fields)


# -- artifacts -----------------------------------------------------------------------------------


async def publish_chain_table(result: ChainResult, *, key: str, description: str) -> None:
    """Every row x step as a table artifact: source, output link, request id, cost, status, error
    (every string cell escaped: the UI renders it as markdown)."""
    table = []
    for s in result.steps:
        first = s.images[0] if s.images else None
        table.append(
            {
                "row": s.row,
                "id": s.id or "",
                "step": s.step,
                "status": s.status,
                "source": s.source,
                "image": md_link(first.uri, first.link) if first else "",
                "request_id": s.request_id or "",
                "cached": s.cached,
                "cost": round(s.cost, 4),
                "maybe_billed": ", ".join(s.maybe_billed),
                "error": (s.error or "")[:300],
            }
        )
    await acreate_table_artifact(table=md_table(table), key=key, description=description)


def chain_markdown(result: ChainResult, *, title: str, rows: int = _PREVIEW_ROWS) -> str:
    """The first ``rows`` rows' chains with their images, step by step; every string of a row
    (id, step name, prompt, error, URIs, request id) escaped, the image built by ``md_image``."""
    lines = [f"# {md_text(title)}", ""]
    grouped = list(result.rows().items())
    for number, steps in grouped[:rows]:
        if len(grouped) > 1:
            lines += [f"## row {number}" + (f" ({md_text(steps[0].id)})" if steps[0].id else ""), ""]
        heading = "###" if len(grouped) > 1 else "##"
        for index, s in enumerate(steps, start=1):
            lines += [f"{heading} {index}. {md_text(s.step)}", "", f"> {md_text(s.prompt)}", ""]
            if not s.images:
                lines += [md_text(f"{s.status}: {s.error or ''}"), ""]
                continue
            ref = s.images[0]
            parents = ", ".join(p[:16] for p in ref.parents)
            lines += [
                md_image(s.step, ref.link) if ref.link else md_text(ref.uri),
                "",
                md_text(
                    f"{ref.width}x{ref.height} {ref.format}, sha256 {ref.sha256[:16]}, "
                    f"request id {ref.request_id or '-'}, ${ref.cost:.4f}" + (" (cached)" if s.cached else "")
                ),
                "",
                md_text(f"stored at {ref.uri}" + (f"; made from {parents}" if ref.parents else "")),
                "",
            ]
    if len(grouped) > rows:
        lines.append(f"... and {len(grouped) - rows} more rows (see the table artifact)")
    return "\n".join(lines)


async def publish_chain_markdown(result: ChainResult, *, key: str, title: str, description: str) -> None:
    """:func:`chain_markdown` as a markdown artifact."""
    await acreate_markdown_artifact(
        markdown=chain_markdown(result, title=title), key=key, description=description
    )


async def run_batch(
    rows: Sequence[ChainRow],
    steps: Sequence[PipelineStep],
    *,
    options: ImageOptions,
    variant: int,
    plan_only: bool,
    max_parallel: int | None,
    credentials: GptImageCredentials | None,
    settings: GptImageSettings,
    store: ImageStore,
    key: str,
    title: str,
    logger: Any,
) -> State[Any]:
    """A batch flow's body: plan every row (returned as is with ``plan_only``, checked against the
    budget otherwise), run the chains, publish the table (``key``), the progress (``key-progress``)
    and the first chains (``key-chains``); Failed when a row failed, naming why."""
    with read_once():  # each remote input fetched once: the plan checks it, the call sends it
        plan, prepared = await asyncio.to_thread(
            plan_chains, rows, steps, options=options, variant=variant, settings=settings, store=store
        )
        logger.info(plan.summary())
        if plan_only:
            await publish_plan(plan)
            return Completed(message=plan.summary(), data=plan)
        if has_budget(settings):
            await enforce_budget(plan, settings)
        result, _ = await run_chains(
            prepared,
            variant=variant,
            credentials=credentials,
            settings=settings,
            store=store,
            batch=True,
            max_parallel=max_parallel,
            progress_key=f"{key}-progress",
            logger=logger,
        )
    made = sum(s.status == "stored" and not s.cached for s in result.steps)
    hits = sum(s.cached for s in result.steps)
    total = len(rows)
    summary = (
        f"{result.stored} of {total} rows stored ({made} step(s) made, {hits} found in the store; "
        f"${result.cost:.4f})"
    )
    await asyncio.gather(
        publish_chain_table(result, key=key, description=f"{title}: {summary}"),
        publish_chain_markdown(
            result, key=f"{key}-chains", title=title, description=f"{title}: the first rows"
        ),
    )
    if undelivered := sum(n for s in result.steps for n in s.undelivered.values()):
        summary += f"; {undelivered} image(s) billed but not delivered (column maybe_billed)"
    if lost := sum(rid not in s.undelivered for s in result.steps for rid in s.maybe_billed):
        summary += f"; {lost} retried attempt(s) may also have been billed (column maybe_billed)"
    if result.failed:
        failed = failed_steps(result)
        headline = f"{result.failed} of {total} rows failed ({failure_counts(failed)}); {summary}"
        message = failure_message(headline, failed, artifact=f"table artifact {key!r}")
        return Failed(message=message, data=result)
    logger.info(summary)
    return Completed(message=summary, data=result)
