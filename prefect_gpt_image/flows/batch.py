"""``batch_generate``: many prompts (a list, or a CSV/JSONL manifest, local or ``s3://``), each row
able to override options, fanned out under the shared concurrency limit.

Every row is validated before anything is paid for. One failed row does not stop the others; the
final state says how many failed and why, and a table artifact lists the rows (over
:data:`TABLE_ROWS`, the failed ones first, and every row in a CSV report in the store).

Rows whose images are already in the store (a rerun) are served from the cache records at once;
the others run the image call of ``generate_image`` (its lock, cache record, spool, budget and
limits, and its retries) inside the flow run, without a task run per row (one cost more server
and flow-process CPU than the rest of the row), holding their concurrency slots for the batch
(see :func:`~prefect_gpt_image.calls.concurrency.hold_slots`) and publishing no per-call
artifacts (the table lists every row's image).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_progress_artifact, acreate_table_artifact
from prefect.client.schemas.objects import State
from prefect.states import Completed, Failed

from prefect_gpt_image.api import GenerateRequest, GptImageError, RequestValidationError
from prefect_gpt_image.api.inputpolicy import InputPolicy
from prefect_gpt_image.api.pricing import PriceModel
from prefect_gpt_image.blocks import GptImageCredentials, GptImageSettings
from prefect_gpt_image.calls import (
    PartialDeliveryError,
    batch_rows,
    call_prices,
    collect_maybe_billed,
    hold_slots,
    release_idle_leases,
    run_row_call,
)
from prefect_gpt_image.storage import ImageStore
from prefect_gpt_image.tasks import ImageRef, sync_or_async

from .batch_lookups import StoreLookups
from .batch_report import SHEET_KEY, BatchResult, RowResult, publish_batch_table
from .batch_review import review_batch
from .failures import FailedRow, failure_counts, failure_message
from .manifest import BatchRow, batch_row, read_records
from .params import ImageOptions, load_blocks
from .plan import PlannedCall, RunPlan, enforce_budget, has_budget, planned
from .rows import Progress, run_workers
from .sheets import publish_sheets
from .templates import template_columns

__all__ = [
    "BatchResult",
    "CheckedRows",
    "RowResult",
    "batch_generate",
    "check_rows",
    "plan_batch",
    "plan_rows",
]

BATCH_TABLE_KEY = "gpt-image-batch"
BATCH_PROGRESS_KEY = "gpt-image-batch-progress"
_PROGRESS_INTERVAL = 1.0
_FIRST_WAVE_WAIT = 3.0
_LOGGER = logging.getLogger("prefect_gpt_image.flows.batch")


@sync_or_async
@flow(name="gpt-image-batch", description="Generate images for many prompts under the shared limits.")
async def batch_generate(
    prompts: list[str] | None = None,
    manifest: str | None = None,
    prompt_template: str | None = None,
    options: ImageOptions | None = None,
    n: int = 1,
    variant: int = 0,
    max_parallel: int | None = None,
    plan_only: bool = False,
    review: bool = False,
    review_timeout: int = 86400,
    max_review_rounds: int = 3,
    storage: str | None = None,
    credentials_block: str | None = None,
    settings_block: str | None = None,
) -> BatchResult | RunPlan | State[Any]:
    """Generate images for a list of prompts or a manifest; one bad row never sinks the batch.

    Args:
        prompts: Prompts to draw, one image request each.
        manifest: Or a CSV (header with 'prompt') or JSONL file, local or s3://, one request per row;
            rows may override size, quality, n, output_format, background, variant, and carry an id.
        prompt_template: Fill each manifest row's prompt from its columns, e.g. "{product} on a
            {surface}"; a row without a named column, an empty or over-long prompt is refused
            before anything is paid.
        options: Options for every row (rows may override them); unset ones come from the settings.
        n: Images per row unless a row says otherwise (1..10).
        variant: Change it to get new images for the same prompts (part of the cache key).
        max_parallel: Rows in progress at once; unset: twice the settings' concurrency limit. Paid calls
            are bounded by the global concurrency limit whatever this is.
        plan_only: Only plan: validate every row, look every row up in the store and report the
            calls to make, their images, the cache hits and the estimated cost (the result and a
            table artifact), paying nothing. A real run plans first when the settings cap images
            or cost per run, and fails before the first paid call if the plan exceeds a cap.
        review: Pause once the images are made for a person to approve them, redo some (a new
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
    batch = (prompts, manifest, prompt_template, options, n)
    if plan_only:
        plan = await plan_batch(*batch, variant, settings=settings, credentials=credentials, store=store)
        return await planned(plan, logger)
    checked = check_rows(*batch, settings=settings, store=store, logger=logger)
    parsed, todo, requests = checked.parsed, checked.todo, checked.requests
    results: dict[int, RowResult] = dict(checked.invalid)
    total = len(parsed)
    lookups = StoreLookups(todo, requests, variant, store, logger)
    try:
        if has_budget(settings):
            await enforce_budget(
                await plan_rows(checked, lookups, call_prices(credentials, settings)), settings
            )
        # The progress artifact is made while the first rows are looked up (round trips at once).
        progress_id, must_run = await asyncio.gather(
            acreate_progress_artifact(
                0.0, key=BATCH_PROGRESS_KEY, description=f"gpt-image batch: {len(parsed)} rows"
            ),
            lookups.any_miss(),
        )
        progress = Progress(total, progress_id, done=len(results))
        queue: asyncio.Queue[tuple[int, BatchRow, dict[str, Any]]] = asyncio.Queue()
        for item in todo:
            queue.put_nowait(item)

        async def worker() -> None:
            while True:
                try:
                    number, row, _ = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                refs = await lookups.refs(number)
                if refs is not None:
                    results[number] = _stored(number, row, refs, served=True)
                else:
                    made = await _run_row(
                        number, row, requests[number], variant, credentials, settings, store
                    )
                    results[number] = made
                    if made.status != "stored":
                        logger.warning("row %d failed: %s", number, made.error)
                progress.advance(results[number])

        if must_run:
            parallel = max_parallel or max(1, 2 * settings.concurrency_limit)
            # Rows follow each other: a finished row's concurrency slot goes to the next row of this
            # batch without a round trip to the server (released when the batch ends).
            rows_at_once = min(parallel, len(todo) - lookups.hits)
            async with hold_slots(
                settings.concurrency_limit_name,
                prefetch=rows_at_once,
                slots=settings.concurrency_limit,
                release=False,
                logger=logger,
            ):
                with batch_rows():
                    await run_workers(worker, rows_at_once, settings, logger)
        else:  # every row is in the store: no task run, no concurrency slot
            await worker()
    finally:
        lookups.cancel()

    stopped: str | None = None
    if review:
        await release_idle_leases(settings.concurrency_limit_name)  # no slot kept while a person looks

        async def again(number: int, row: BatchRow, request: GenerateRequest) -> RowResult:
            return await _run_row(number, row, request, variant, credentials, settings, store)

        stopped = await review_batch(
            results,
            {number: (row, fields) for number, row, fields in todo},
            again,
            variant=variant,
            timeout=review_timeout,
            max_rounds=max_review_rounds,
            settings=settings,
            store=store,
            logger=logger,
            prices=call_prices(credentials, settings),
        )
    result = BatchResult(rows=[results[number] for number, _ in parsed])

    async def publish_table() -> str | None:
        table, description, report = await publish_batch_table(result, total, store, logger)
        await acreate_table_artifact(table=table, key=BATCH_TABLE_KEY, description=description)
        return report

    # The run's closing writes at once, so its end waits for the longest of them rather than their
    # sum (bench/scale.py's "tail"): the table (and its CSV report), the contact sheet (its pages
    # and the gallery), the final progress, and the kept slots going back.
    report, *_ = await asyncio.gather(
        publish_table(),
        publish_sheets(result, store, key=SHEET_KEY, title="gpt-image batch", logger=logger),
        release_idle_leases(settings.concurrency_limit_name),
        progress.finish(),
    )
    summary = (
        f"{result.stored} of {total} rows stored ({lookups.hits} found in the store); {result.bill().line()}"
    )
    if undelivered := sum(n for r in result.rows for n in r.undelivered.values()):
        summary += f"; {undelivered} image(s) billed but not delivered (column maybe_billed)"
    if lost := sum(rid not in r.undelivered for r in result.rows for rid in r.maybe_billed):
        summary += f"; {lost} retried attempt(s) may also have been billed (column maybe_billed)"
    if result.dropped:
        summary += f"; {result.dropped} row(s) dropped at review"
    if stopped is not None:
        return Failed(message=f"{stopped}; {summary}", data=result)
    if result.failed:
        failed = [
            FailedRow(r.row, r.id, r.error_type or r.status, r.error)
            for r in result.rows
            if r.status in ("failed", "invalid")
        ]
        headline = f"{result.failed} of {total} rows failed ({failure_counts(failed)}); {summary}"
        artifact = f"table artifact {BATCH_TABLE_KEY!r}"
        message = failure_message(headline, failed, artifact=artifact, report=report)
        return Failed(message=message, data=result)
    logger.info(summary)
    return Completed(message=summary, data=result)


@dataclass
class CheckedRows:
    """A batch's rows, each checked before anything is paid: the invalid ones already as their
    results, the others with their request and the fields it was built from."""

    parsed: list[tuple[int, BatchRow | str]]
    invalid: dict[int, RowResult] = field(default_factory=dict)
    todo: list[tuple[int, BatchRow, dict[str, Any]]] = field(default_factory=list)
    requests: dict[int, GenerateRequest] = field(default_factory=dict)


def check_rows(
    prompts: list[str] | None,
    manifest: str | None,
    prompt_template: str | None,
    options: ImageOptions | None,
    n: int,
    *,
    settings: GptImageSettings,
    store: ImageStore,
    logger: Any,
) -> CheckedRows:
    """Read and check every row of a batch (``batch_generate``'s parameters): its prompt, template
    and overrides, and its request as the API layer builds it. Nothing is sent."""
    options = options or ImageOptions()
    checked = CheckedRows(_rows(prompts, manifest, store, prompt_template, settings.input_policy()))
    defaults = settings.request_defaults()
    for number, row in checked.parsed:
        if isinstance(row, str):
            checked.invalid[number] = RowResult(row=number, prompt="", status="invalid", error=row)
            continue
        fields = {**options.fields(), "n": n, **row.overrides()}
        try:
            checked.requests[number] = GenerateRequest.build(prompt=row.prompt, **{**defaults, **fields})
        except RequestValidationError as exc:
            checked.invalid[number] = RowResult(
                row=number, id=row.id, prompt=row.prompt, status="invalid", error=str(exc)
            )
            continue
        checked.todo.append((number, row, fields))
    logger.info(
        "batch of %d rows (%d invalid): rows already in the store are served from it, the others run",
        len(checked.parsed),
        len(checked.invalid),
    )
    return checked


async def plan_rows(checked: CheckedRows, lookups: StoreLookups, prices: PriceModel) -> RunPlan:
    """The batch's plan: every row invalid, found in the store (``lookups``), or a call of ``n``
    images priced by ``prices``."""
    calls: list[PlannedCall] = []
    for number, row in checked.parsed:
        invalid = checked.invalid.get(number)
        if invalid is not None:
            calls.append(PlannedCall(row=number, id=invalid.id, status="invalid", error=invalid.error))
            continue
        assert isinstance(row, BatchRow)
        cached = await lookups.refs(number) is not None
        status: Literal["cached", "call"] = "cached" if cached else "call"
        request = checked.requests[number]
        estimate = prices.estimate_request(request)
        calls.append(PlannedCall(row=number, id=row.id, status=status, images=request.n, estimate=estimate))
    return RunPlan(calls=calls, price_model=prices.label)


async def plan_batch(
    prompts: list[str] | None = None,
    manifest: str | None = None,
    prompt_template: str | None = None,
    options: ImageOptions | None = None,
    n: int = 1,
    variant: int = 0,
    *,
    settings: GptImageSettings,
    credentials: GptImageCredentials | None,
    store: ImageStore,
    logger: Any = _LOGGER,
) -> RunPlan:
    """What ``batch_generate(..., plan_only=True)`` returns, made outside any flow run: every row
    checked, looked up in ``store`` and priced by the endpoint's price model
    (:func:`~prefect_gpt_image.calls.call_prices`; ``credentials`` None: the environment's key, or
    none at all). It needs no key and asks no Prefect server anything; nothing is sent."""
    checked = check_rows(
        prompts, manifest, prompt_template, options, n, settings=settings, store=store, logger=logger
    )
    lookups = StoreLookups(checked.todo, checked.requests, variant, store, logger)
    try:
        return await plan_rows(checked, lookups, call_prices(credentials, settings))
    finally:
        lookups.cancel()


def _rows(
    prompts: list[str] | None,
    manifest: str | None,
    store: ImageStore,
    template: str | None,
    policy: InputPolicy,
) -> list[tuple[int, BatchRow | str]]:
    if (prompts is None) == (manifest is None):
        raise ValueError("give either prompts or manifest (not both, not neither)")
    if prompts is not None:
        if template is not None:
            raise ValueError("prompt_template fills prompts from a manifest's columns: give a manifest")
        return [
            (i, BatchRow(prompt=p) if isinstance(p, str) and p.strip() else "prompt must not be empty")
            for i, p in enumerate(prompts, start=1)
        ]
    assert manifest is not None
    if template is not None:
        template_columns(template)  # a malformed template fails the run before anything is read
    out: list[tuple[int, BatchRow | str]] = []
    records = read_records(manifest, store, policy=policy, require=None if template else "prompt")
    for index, (line, data) in enumerate(records, start=1):
        item = batch_row(index, data, template) if isinstance(data, dict) else (line, data)
        out.append((line, f"line {line}: {item[1]}") if isinstance(item, tuple) else (index, item))
    return out


async def _run_row(
    number: int,
    row: BatchRow,
    request: GenerateRequest,
    variant: int,
    credentials: Any,
    settings: Any,
    store: ImageStore,
) -> RowResult:
    """Make row ``number``'s images: the image call itself, with the image tasks' retries, but
    no Prefect task run of its own (a task run per row cost the flow process and the Prefect
    server more CPU per row than the rest of the row; the table artifact lists every row)."""
    with collect_maybe_billed() as lost:
        try:
            made = await run_row_call(
                request,
                variant=row.variant if row.variant is not None else variant,
                credentials=credentials,
                settings=settings,
                store=store,
                what=f"Batch row {number}",
            )
        except Exception as exc:  # one bad row must not sink the batch: record it and go on
            request_id = exc.request_id if isinstance(exc, GptImageError) else None
            failed = RowResult(
                row=number,
                id=row.id,
                prompt=row.prompt,
                status="failed",
                # An answer partly delivered: the images that arrived are stored, and listed.
                images=exc.refs if isinstance(exc, PartialDeliveryError) else [],
                error=str(exc),
                error_type=type(exc).__name__,
                request_id=request_id,
            )
            failed.charge(lost, request_id)
            return failed
    made_row = _stored(number, row, made.refs)
    made_row.charge(lost)
    return made_row


def _stored(number: int, row: BatchRow, images: list[ImageRef], *, served: bool = False) -> RowResult:
    """The result of row ``number`` whose ``images`` are in the store (made now, or ``served``
    from it: nothing paid)."""
    result = RowResult(
        row=number,
        id=row.id,
        prompt=row.prompt,
        status="stored",
        images=images,
        request_id=images[0].request_id,
    )
    if served:
        result.serve(images)
    return result
