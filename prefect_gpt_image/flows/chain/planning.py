"""The plan of a chain: every row and step validated before anything is paid for (templates
filled, inputs resolved and read, masks checked, each request built as the API layer would) and
every call whose inputs are known looked up in the store's cache records."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from prefect.settings import PREFECT_TASKS_REFRESH_CACHE

from prefect_gpt_image.api import EditRequest, GenerateRequest
from prefect_gpt_image.api.images import MAX_MASK_BYTES, InputImage
from prefect_gpt_image.api.models import parse_size
from prefect_gpt_image.api.pricing import PriceModel
from prefect_gpt_image.blocks import GptImageSettings
from prefect_gpt_image.calls import (
    cache_key,
    edit_request,
    generate_request,
    read_input,
    read_record,
    run_cache,
)
from prefect_gpt_image.storage import ImageStore
from prefect_gpt_image.tasks import ImageRef

from ..masks import build_mask
from ..params import BlendStep, EditStep, GenerateStep, ImageOptions, PipelineStep
from ..plan import PlannedCall, RunPlan
from ..templates import fill_template
from .steps import (
    ChainRow,
    PlanContext,
    PreparedRow,
    StepCall,
    StepInput,
    step_names,
)

__all__ = ["edit_size", "plan_chains"]


_PLAN_THREADS = 8


def plan_chains(
    rows: Sequence[ChainRow],
    steps: Sequence[PipelineStep],
    *,
    options: ImageOptions,
    variant: int,
    settings: GptImageSettings,
    store: ImageStore,
    prices: PriceModel,
    lookup: bool = True,
) -> tuple[RunPlan, list[PreparedRow]]:
    """Validate every row's chain and look its calls up (``lookup``): the plan, each call priced
    by ``prices``, and the prepared rows :func:`run_chains` makes. Blocking (reads inputs and the
    store): run it in a thread."""
    names = step_names(steps)
    lookup = lookup and not PREFECT_TASKS_REFRESH_CACHE.value()
    ctx = PlanContext(
        steps, names, options, variant, settings, store, lookup, settings.input_policy(), prices, run_cache()
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
                    estimate=call.estimate,
                    source=source,
                )
            )
    return RunPlan(calls=calls, price_model=prices.label), prepared


def _prepare_row(row: ChainRow, ctx: PlanContext) -> PreparedRow:
    out = PreparedRow(row)
    if row.error is not None:
        out.invalid_step, out.invalid_kind, out.error = ctx.names[0], ctx.steps[0].kind, ValueError(row.error)
        return out
    produced: dict[str, StepCall] = {}
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


def _resolve(
    value: str, label: str, row: ChainRow, produced: Mapping[str, StepCall], ctx: PlanContext
) -> StepInput:
    """An input named by ``value``: an earlier step, a column holding a URI, or a URI (a template)."""
    if value in produced:
        return StepInput(label, step=value)
    if value in ctx.names:
        raise ValueError(f"{_where(row)}: {label} names step {value!r}, which comes later")
    if row.columns is not None and value in row.columns:
        value = str(row.columns[value] or "")
        if not value.strip():
            raise ValueError(f"{_where(row)}: {label}: the column is empty")
    uri = _text(value, row)
    header = read_input(uri, ctx.store, what=label, policy=ctx.policy, cache=ctx.cache)
    return StepInput(label, uri=uri, header=_header(header))


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


def _input_image(inp: StepInput, produced: Mapping[str, StepCall]) -> InputImage | None:
    """The input's image as far as the plan knows it (None: an earlier step's output still to make)."""
    if inp.header is not None:
        return inp.header
    source = produced[inp.step] if inp.step is not None else None
    if source is not None and source.cached is not None:
        ref = source.cached[0]
        return InputImage(ref.uri, b"", ref.format, ref.width, ref.height, False, ref.sha256)
    return None


def _input_dims(inp: StepInput, produced: Mapping[str, StepCall]) -> tuple[int, int] | None:
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
    row: ChainRow,
    index: int,
    name: str,
    step: PipelineStep,
    produced: Mapping[str, StepCall],
    ctx: PlanContext,
) -> StepCall:
    prompt = _text(step.prompt, row)
    shared = ctx.options.fields()
    if isinstance(step, EditStep):  # an edit keeps its image's size unless the step says otherwise
        shared.pop("size", None)
    fields = {**shared, **(step.options.fields() if step.options is not None else {})}
    settings = ctx.settings
    if isinstance(step, GenerateStep):
        request = generate_request(prompt, settings, **fields)
        return StepCall(
            name,
            step,
            prompt,
            fields,
            [],
            dims=request.dimensions,
            known=True,
            cached=_lookup(request, ctx),
            estimate=ctx.prices.estimate_request(request),
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
    call = StepCall(name, step, prompt, fields, inputs, dims=None)
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
    # An edit keeping an input's size not yet made is priced at the stand-in's (1024x1024 or the mask's).
    call.estimate = ctx.prices.estimate_request(edit)
    call.dims = edit.dimensions if size_known else None
    if isinstance(step, EditStep) and call.dims is None and dims is not None and fields.get("size") != "auto":
        call.dims = dims
    call.known = known and size_known
    if call.known:
        call.cached = _lookup(edit, ctx)
    return call


def _lookup(request: GenerateRequest | EditRequest, ctx: PlanContext) -> list[ImageRef] | None:
    """The stored images of ``request`` (None: a miss, or lookups are off); a store that cannot be
    read is a miss (the call's own lookup, under its lock, reports it)."""
    if not ctx.lookup:
        return None
    try:
        refs = read_record(ctx.store, cache_key(request, ctx.variant))
    except Exception:
        return None
    return None if refs is None else refs
