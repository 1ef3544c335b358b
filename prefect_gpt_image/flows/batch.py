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
import csv
import io
from collections.abc import Iterator
from typing import Any, Literal
from uuid import uuid4

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_progress_artifact, acreate_table_artifact
from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext
from prefect.settings import PREFECT_TASKS_REFRESH_CACHE
from prefect.states import Completed, Failed
from pydantic import BaseModel, Field

from prefect_gpt_image.api import GenerateRequest, GptImageError, RequestValidationError
from prefect_gpt_image.api.inputpolicy import InputPolicy
from prefect_gpt_image.blocks import GptImageSettings
from prefect_gpt_image.calls import (
    CACHE_FOLDER,
    BilledAttempts,
    PartialDeliveryError,
    batch_rows,
    cache_key,
    collect_maybe_billed,
    csv_row,
    hold_slots,
    md_link,
    md_table,
    read_record,
    record_name,
    release_idle_leases,
    run_row_call,
    with_links,
)
from prefect_gpt_image.storage import ImageStore
from prefect_gpt_image.storage.base import IMAGES_FOLDER
from prefect_gpt_image.tasks import ImageRef, sync_or_async

from .failures import Counted, FailedRow, failure_counts, failure_message
from .manifest import BatchRow, batch_row, read_records
from .params import ImageOptions, load_blocks
from .plan import PlannedCall, RunPlan, enforce_budget, has_budget, publish_plan
from .rows import Progress, run_workers
from .templates import template_columns

__all__ = ["BatchResult", "RowResult", "batch_generate"]

BATCH_TABLE_KEY = "gpt-image-batch"
BATCH_PROGRESS_KEY = "gpt-image-batch-progress"
TABLE_ROWS = 1000
"""Rows the table artifact lists at most; a larger batch's full table is a CSV report in the store."""
REPORT_FOLDER = "reports"
"""The folder of the CSV reports of large batches, under the store's prefix."""
_PROGRESS_INTERVAL = 1.0
_CACHE_LOOKUPS = 16
_LIST_PAGE = 1000
_LISTED_PER_ROW = 4
"""A folder is listed while it holds at most this many objects per row of the batch (1,000 at
least): beyond, asking for each row costs fewer requests."""
_FIRST_WAVE_WAIT = 3.0


class RowResult(BaseModel):
    """What happened to one row of a batch."""

    row: int = Field(description="1-based row number (the manifest line for manifests).")
    id: str | None = None
    prompt: str
    status: Literal["stored", "failed", "invalid"]
    images: list[ImageRef] = Field(default_factory=list)
    error: str | None = None
    error_type: str | None = None
    request_id: str | None = None
    maybe_billed: list[str] = Field(
        default_factory=list,
        description="Request ids of attempts that were sent and may have been billed but brought no "
        "image, retried because the settings allow it (retry_outcome_unknown), and of answers whose "
        "images were billed but not delivered (a result URL given up).",
    )
    undelivered: dict[str, int] = Field(
        default_factory=dict,
        description="Request ids (also in maybe_billed) of answers whose images were billed but not "
        "delivered (a result URL given up), with how many images each lost.",
    )
    undelivered_cost: float = Field(
        default=0.0, description="Estimated cost of those images: part of the batch's cost."
    )

    @property
    def cost(self) -> float:
        """Estimated cost of the row: its stored images and those billed but not delivered."""
        return sum(ref.cost for ref in self.images) + self.undelivered_cost


class BatchResult(BaseModel):
    """Every row's result, and counts."""

    rows: list[RowResult]

    @property
    def stored(self) -> int:
        """Rows whose images are stored."""
        return sum(r.status == "stored" for r in self.rows)

    @property
    def failed(self) -> int:
        """Rows that failed or were invalid."""
        return len(self.rows) - self.stored

    @property
    def cost(self) -> float:
        """Estimated cost of every stored image and every image billed but not delivered."""
        return sum(r.cost for r in self.rows)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """Counts, not every row: a repr (in a log, a traceback, Prefect's messages) stays one
        line at 10,000 rows."""
        yield "rows", Counted(len(self.rows), self.stored, self.failed)


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
        storage: A folder, an s3://bucket/prefix URI, or a saved block's slug
            (gpt-image-storage/NAME or s3-bucket/NAME); unset: $GPT_IMAGE_STORAGE or ./gpt-image-output.
        credentials_block: Name of a saved GptImageCredentials block; unset: $GPT_IMAGE_API_KEY,
            else $OPENAI_API_KEY, each sent only to its own base URL.
        settings_block: Name of a saved GptImageSettings block; unset: the defaults.
    """
    logger = get_run_logger()
    options = options or ImageOptions()
    settings, credentials, store = await load_blocks(settings_block, credentials_block, storage)
    parsed = _rows(prompts, manifest, store, prompt_template, settings.input_policy())
    defaults = settings.request_defaults()

    results: dict[int, RowResult] = {}
    todo: list[tuple[int, BatchRow, dict[str, Any]]] = []
    requests: dict[int, GenerateRequest] = {}
    for number, row in parsed:
        if isinstance(row, str):
            results[number] = RowResult(row=number, prompt="", status="invalid", error=row)
            continue
        fields = {**options.fields(), "n": n, **row.overrides()}
        try:
            requests[number] = GenerateRequest.build(prompt=row.prompt, **{**defaults, **fields})
        except RequestValidationError as exc:
            results[number] = RowResult(
                row=number, id=row.id, prompt=row.prompt, status="invalid", error=str(exc)
            )
            continue
        todo.append((number, row, fields))
    total = len(parsed)
    invalid = len(results)
    logger.info(
        "batch of %d rows (%d invalid): rows already in the store are served from it, the others run",
        total,
        invalid,
    )
    lookups = _StoreLookups(todo, requests, variant, store, logger)
    try:
        if plan_only or has_budget(settings):
            plan = await _plan(parsed, results, requests, lookups, settings)
            if plan_only:
                await publish_plan(plan)
                logger.info(plan.summary())
                return Completed(message=plan.summary(), data=plan)
            await enforce_budget(plan, settings)
        # The progress artifact is made while the first rows are looked up (round trips at once).
        progress_id, must_run = await asyncio.gather(
            acreate_progress_artifact(
                0.0, key=BATCH_PROGRESS_KEY, description=f"gpt-image batch: {len(parsed)} rows"
            ),
            lookups.any_miss(),
        )
        progress = Progress(total, progress_id)
        progress.done = len(results)
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
                    results[number] = _stored(number, row, refs)
                else:
                    made = await _run_row(
                        number, row, requests[number], variant, credentials, settings, store
                    )
                    results[number] = made
                    if made.status != "stored":
                        logger.warning("row %d failed: %s", number, made.error)
                progress.advance()

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

    result = BatchResult(rows=[results[number] for number, _ in parsed])
    table, description, report = await _table(result, total, store, logger)
    # The kept slots go back while the artifacts are written (three round trips at once).
    await asyncio.gather(
        release_idle_leases(settings.concurrency_limit_name),
        progress.finish(),
        acreate_table_artifact(table=table, key=BATCH_TABLE_KEY, description=description),
    )
    found = f"{lookups.hits} found in the store"
    summary = f"{result.stored} of {total} rows stored (${result.cost:.4f}; {found})"
    if undelivered := sum(n for r in result.rows for n in r.undelivered.values()):
        summary += f"; {undelivered} image(s) billed but not delivered (column maybe_billed)"
    if lost := sum(rid not in r.undelivered for r in result.rows for rid in r.maybe_billed):
        summary += f"; {lost} retried attempt(s) may also have been billed (column maybe_billed)"
    if result.failed:
        failed = [
            FailedRow(r.row, r.id, r.error_type or r.status, r.error)
            for r in result.rows
            if r.status != "stored"
        ]
        headline = f"{result.failed} of {total} rows failed ({failure_counts(failed)}); {summary}"
        artifact = f"table artifact {BATCH_TABLE_KEY!r}"
        message = failure_message(headline, failed, artifact=artifact, report=report)
        return Failed(message=message, data=result)
    logger.info(summary)
    return Completed(message=summary, data=result)


async def _plan(
    parsed: list[tuple[int, BatchRow | str]],
    results: dict[int, RowResult],
    requests: dict[int, GenerateRequest],
    lookups: _StoreLookups,
    settings: GptImageSettings,
) -> RunPlan:
    """The batch's plan: every row invalid, found in the store, or a call of ``n`` images."""
    calls: list[PlannedCall] = []
    for number, row in parsed:
        invalid = results.get(number)
        if invalid is not None:
            calls.append(PlannedCall(row=number, id=invalid.id, status="invalid", error=invalid.error))
            continue
        assert isinstance(row, BatchRow)
        cached = await lookups.refs(number) is not None
        status: Literal["cached", "call"] = "cached" if cached else "call"
        calls.append(PlannedCall(row=number, id=row.id, status=status, images=requests[number].n))
    return RunPlan(calls=calls, price_per_image=settings.price_per_image)


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
            return RowResult(
                row=number,
                id=row.id,
                prompt=row.prompt,
                status="failed",
                # An answer partly delivered: the images that arrived are stored, and listed.
                images=exc.refs if isinstance(exc, PartialDeliveryError) else [],
                error=str(exc),
                error_type=type(exc).__name__,
                request_id=request_id,
                maybe_billed=lost.besides(request_id),
                undelivered=lost.undelivered,
                undelivered_cost=lost.undelivered_images * settings.price_per_image,
            )
    return _stored(number, row, made.refs, maybe_billed=lost, price_per_image=settings.price_per_image)


def _stored(
    number: int,
    row: BatchRow,
    images: list[ImageRef],
    maybe_billed: BilledAttempts | None = None,
    price_per_image: float = 0.0,
) -> RowResult:
    """The result of row ``number`` whose ``images`` are in the store (made now or cached);
    ``maybe_billed`` the attempts noted while making them (priced at ``price_per_image``)."""
    lost = maybe_billed if maybe_billed is not None else BilledAttempts()
    return RowResult(
        row=number,
        id=row.id,
        prompt=row.prompt,
        status="stored",
        images=images,
        request_id=images[0].request_id,
        maybe_billed=list(lost),
        undelivered=lost.undelivered,
        undelivered_cost=lost.undelivered_images * price_per_image,
    )


def _table_row(r: RowResult) -> dict[str, Any]:
    """Row ``r`` as plain values (the CSV report's line; :func:`_artifact_rows` for the table)."""
    first = r.images[0] if r.images else None
    return {
        "row": r.row,
        "id": r.id or "",
        "prompt": r.prompt[:200],
        "status": r.status,
        "images": len(r.images),
        "image": (first.link or first.uri) if first else "",
        "size": f"{first.width}x{first.height}" if first else "",
        "request_id": r.request_id or "",
        "maybe_billed": ", ".join(r.maybe_billed),
        "cost": round(r.cost, 4),
        "error": (r.error or "")[:300],
    }


def _artifact_rows(rows: list[RowResult]) -> list[dict[str, Any]]:
    """The table artifact's rows: each image links to it (reading its URI), every other string
    cell escaped (the UI renders each cell as markdown)."""
    return md_table(
        {**_table_row(r), "image": md_link(r.images[0].uri, r.images[0].link) if r.images else ""}
        for r in rows
    )


async def _table(
    result: BatchResult, total: int, store: ImageStore, logger: Any
) -> tuple[list[dict[str, Any]], str, str | None]:
    """The table artifact's rows and description, and the URI of the CSV report if one was
    written. Up to :data:`TABLE_ROWS` rows it lists every row; a larger batch lists its failed
    and invalid rows first, then stored ones up to that many, and its full table goes to the
    store as a CSV report linked from the description (the UI renders a table of 10,000 rows
    slowly, and the server stores it as one JSON value)."""
    description = f"gpt-image batch: {result.stored} of {total} rows stored, ${result.cost:.4f}"
    if len(result.rows) <= TABLE_ROWS:
        return _artifact_rows(result.rows), description, None
    failed = [r for r in result.rows if r.status != "stored"]
    shown = (failed + [r for r in result.rows if r.status == "stored"])[:TABLE_ROWS]
    table = _artifact_rows(shown)
    description += f"; {len(shown)} of {total} rows shown (failed first)"
    try:
        key = store.key(REPORT_FOLDER, f"batch-{_flow_run_id()}.csv")
        link = await asyncio.to_thread(_write_report, store, key, result.rows)
    except Exception as exc:  # the table still lists the failures
        logger.warning("Writing the batch's CSV report failed: %s", exc)
        return table, description, None
    return table, f"{description}; every row: {md_link('CSV', link)}", store.uri_for(key)


def _flow_run_id() -> str:
    context = FlowRunContext.get()
    run = context.flow_run if context is not None else None
    return str(run.id) if run is not None else uuid4().hex


def _write_report(store: ImageStore, key: str, rows: list[RowResult]) -> str:
    """Write every row's table line to ``key`` as CSV (cells that would start a spreadsheet
    formula neutralised); a link to it."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(_table_row(rows[0]).keys()))
    writer.writeheader()
    writer.writerows(csv_row(_table_row(r)) for r in rows)
    store.put_bytes(key, out.getvalue().encode(), "text/csv")
    return store.link_for(key)


class _StoreLookups:
    """Cache lookups of a batch's rows, all started at once (at most ``_CACHE_LOOKUPS`` in flight,
    in row order) while the first rows run, so a first run does not wait for the whole search.

    The cache folder and the images folder are listed first (a request per 1,000 names), while
    they hold at most a few times as many objects as the batch has rows: a row whose record is
    not listed is a miss without a request of its own, and an image listed needs no HEAD. A row
    whose record is found gets its result at once, without an image call. Only a certain hit
    counts: a row whose record is missing, damaged or unreadable goes to the image call, which
    looks again under its lock (and finds spooled images). Nothing is looked up under a refresh.
    """

    def __init__(
        self,
        todo: list[tuple[int, BatchRow, dict[str, Any]]],
        requests: dict[int, GenerateRequest],
        variant: int,
        store: ImageStore,
        logger: Any,
    ) -> None:
        self.hits = 0
        self._rows = len(todo)
        self._store, self._logger = store, logger
        self._gate = asyncio.Semaphore(_CACHE_LOOKUPS)
        self._found: dict[int, asyncio.Task[list[ImageRef] | None]] = {}
        self._images: asyncio.Future[set[str] | None] | None = None  # listed at the first hit
        self._records: asyncio.Future[set[str] | None] | None = None
        if PREFECT_TASKS_REFRESH_CACHE.value():
            return
        self._at_most = _LISTED_PER_ROW * max(len(todo), _LIST_PAGE)
        self._records = asyncio.ensure_future(self._list(CACHE_FOLDER))
        for number, row, _ in todo:
            key = cache_key(requests[number], row.variant if row.variant is not None else variant)
            self._found[number] = asyncio.ensure_future(self._lookup(number, key))

    async def _list(self, folder: str) -> set[str] | None:
        try:
            return await asyncio.to_thread(self._store.list_names, folder, at_most=self._at_most)
        except Exception as exc:  # e.g. no list permission: ask for each row instead
            self._logger.debug("listing %s failed: %s", folder, exc)
            return None

    async def _lookup(self, number: int, key: str) -> list[ImageRef] | None:
        records = await self._records if self._records is not None else None
        if records is not None and record_name(key) not in records:
            return None  # not stored when listed: the image call looks again under its lock
        async with self._gate:
            if self._images is None:
                self._images = asyncio.ensure_future(self._list(IMAGES_FOLDER))
            images = await self._images
            try:
                refs = await asyncio.to_thread(_cached_refs, self._store, key, images or set(), self._logger)
            except Exception as exc:  # the image call will look again and report a store failure
                self._logger.debug("cache lookup of row %d failed: %s", number, exc)
                return None
        if refs is not None:
            self.hits += 1
        return refs

    async def refs(self, number: int) -> list[ImageRef] | None:
        """The stored images of row ``number`` (waiting for its lookup), or None: run it."""
        lookup = self._found.get(number)
        return None if lookup is None else await lookup

    async def any_miss(self) -> bool:
        """Whether some row must run; answers at the first miss (in row order), so a first run
        starts after one lookup while a rerun waits for them all."""
        if not self._found:
            return self._rows > 0
        for lookup in self._found.values():
            if await lookup is None:
                return True
        return False

    def cancel(self) -> None:
        """Stop the lookups still waiting (the batch ended or failed)."""
        lookups: list[asyncio.Future[Any]] = [*self._found.values(), *self._listings()]
        for lookup in lookups:
            lookup.cancel()

    def _listings(self) -> list[asyncio.Future[set[str] | None]]:
        return [f for f in (self._records, self._images) if f is not None]


def _cached_refs(store: ImageStore, key: str, stored: set[str], logger: Any) -> list[ImageRef] | None:
    """The refs of cache record ``key`` with fresh links, or None (``stored``: image names
    known to be in the store)."""
    refs = read_record(store, key, stored)
    return None if refs is None else with_links(store, refs, logger)
