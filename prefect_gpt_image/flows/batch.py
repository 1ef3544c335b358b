"""``batch_generate``: many prompts (a list, or a CSV/JSONL manifest, local or ``s3://``), each row
able to override options, fanned out under the shared concurrency limit.

Every row is validated before anything is paid for. One failed row does not stop the others; the
final state says how many failed and why, and a table artifact lists every row.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any, Literal
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_progress_artifact, acreate_table_artifact, aupdate_progress_artifact
from prefect.client.schemas.objects import State
from prefect.states import Completed, Failed
from pydantic import BaseModel, Field

from prefect_gpt_image.api import GenerateRequest, GptImageError, RequestValidationError
from prefect_gpt_image.storage import ImageStore
from prefect_gpt_image.tasks import ImageRef, generate_image

from .manifest import BatchRow, parse_manifest, read_manifest_text
from .params import ImageOptions, load_blocks

__all__ = ["BatchResult", "RowResult", "batch_generate"]

BATCH_TABLE_KEY = "gpt-image-batch"
BATCH_PROGRESS_KEY = "gpt-image-batch-progress"
_PROGRESS_INTERVAL = 1.0


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
        """Estimated cost of every stored image."""
        return sum(ref.cost for r in self.rows for ref in r.images)


@flow(name="gpt-image-batch", description="Generate images for many prompts under the shared limits.")
async def batch_generate(
    prompts: list[str] | None = None,
    manifest: str | None = None,
    options: ImageOptions | None = None,
    n: int = 1,
    variant: int = 0,
    max_parallel: int | None = None,
    storage: str | None = None,
    credentials_block: str | None = None,
    settings_block: str | None = None,
) -> BatchResult | State[Any]:
    """Generate images for a list of prompts or a manifest; one bad row never sinks the batch.

    Args:
        prompts: Prompts to draw, one image request each.
        manifest: Or a CSV (header with 'prompt') or JSONL file, local or s3://, one request per row;
            rows may override size, quality, n, output_format, background, variant, and carry an id.
        options: Options for every row (rows may override them); unset ones come from the settings.
        n: Images per row unless a row says otherwise (1..10).
        variant: Change it to get new images for the same prompts (part of the cache key).
        max_parallel: Rows in progress at once; unset: twice the settings' concurrency limit. Paid calls
            are bounded by the global concurrency limit whatever this is.
        storage: A folder, an s3://bucket/prefix URI, or a saved block's slug
            (gpt-image-storage/NAME or s3-bucket/NAME); unset: $GPT_IMAGE_STORAGE or ./gpt-image-output.
        credentials_block: Name of a saved GptImageCredentials block; unset: $GPT_IMAGE_API_KEY.
        settings_block: Name of a saved GptImageSettings block; unset: the defaults.
    """
    logger = get_run_logger()
    options = options or ImageOptions()
    settings, credentials, store = await load_blocks(settings_block, credentials_block, storage)
    parsed = _rows(prompts, manifest, store)
    defaults = settings.request_defaults()

    results: dict[int, RowResult] = {}
    todo: list[tuple[int, BatchRow, dict[str, Any]]] = []
    for number, row in parsed:
        if isinstance(row, str):
            results[number] = RowResult(row=number, prompt="", status="invalid", error=row)
            continue
        fields = {**options.fields(), "n": n, **row.overrides()}
        try:
            GenerateRequest.build(prompt=row.prompt, **{**defaults, **fields})
        except RequestValidationError as exc:
            results[number] = RowResult(
                row=number, id=row.id, prompt=row.prompt, status="invalid", error=str(exc)
            )
            continue
        todo.append((number, row, fields))
    total = len(parsed)
    logger.info("batch of %d rows: %d to run, %d invalid", total, len(todo), len(results))

    progress = _Progress(
        total,
        await acreate_progress_artifact(
            100.0 * len(results) / total if total else 100.0,
            key=BATCH_PROGRESS_KEY,
            description=f"gpt-image batch: {total} rows",
        ),
    )
    progress.done = len(results)
    queue: asyncio.Queue[tuple[int, BatchRow, dict[str, Any]]] = asyncio.Queue()
    for item in todo:
        queue.put_nowait(item)

    async def worker() -> None:
        while True:
            try:
                number, row, fields = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            results[number] = await _run_row(number, row, fields, variant, credentials, settings, store)
            if results[number].status != "stored":
                logger.warning("row %d failed: %s", number, results[number].error)
            await progress.advance()

    parallel = max_parallel or max(1, 2 * settings.concurrency_limit)
    await asyncio.gather(*(worker() for _ in range(min(parallel, len(todo)) or 1)))
    await progress.finish()

    result = BatchResult(rows=[results[number] for number, _ in parsed])
    await acreate_table_artifact(
        table=[_table_row(r) for r in result.rows],
        key=BATCH_TABLE_KEY,
        description=f"gpt-image batch: {result.stored} of {total} rows stored, ${result.cost:.4f}",
    )
    summary = f"{result.stored} of {total} rows stored (${result.cost:.4f})"
    if result.failed:
        reasons = Counter(r.error_type or r.status for r in result.rows if r.status != "stored")
        why = ", ".join(f"{kind}: {count}" for kind, count in reasons.most_common())
        return Failed(message=f"{result.failed} of {total} rows failed ({why}); {summary}", data=result)
    logger.info(summary)
    return Completed(message=summary, data=result)


def _rows(
    prompts: list[str] | None, manifest: str | None, store: ImageStore
) -> list[tuple[int, BatchRow | str]]:
    if (prompts is None) == (manifest is None):
        raise ValueError("give either prompts or manifest (not both, not neither)")
    if prompts is not None:
        return [
            (i, BatchRow(prompt=p) if isinstance(p, str) and p.strip() else "prompt must not be empty")
            for i, p in enumerate(prompts, start=1)
        ]
    assert manifest is not None
    text = read_manifest_text(manifest, read_s3=_s3_reader(store))
    out: list[tuple[int, BatchRow | str]] = []
    for index, item in enumerate(parse_manifest(text, name=manifest), start=1):
        if isinstance(item, tuple):
            out.append((item[0], f"line {item[0]}: {item[1]}"))
        else:
            out.append((index, item))
    return out


def _s3_reader(store: ImageStore) -> Any:
    def read(uri: str) -> bytes:
        from prefect_gpt_image.storage import S3ImageStore, resolve_store

        bucket = uri.split("/", 3)[2]
        reader = (
            store
            if isinstance(store, S3ImageStore) and store.bucket == bucket
            else resolve_store(f"s3://{bucket}")
        )
        return reader.read_bytes(uri)

    return read


async def _run_row(
    number: int,
    row: BatchRow,
    fields: dict[str, Any],
    variant: int,
    credentials: Any,
    settings: Any,
    store: ImageStore,
) -> RowResult:
    try:
        images: list[ImageRef] = await generate_image(
            row.prompt,
            **fields,
            variant=row.variant if row.variant is not None else variant,
            credentials=credentials,
            settings=settings,
            storage=store,
        )
    except Exception as exc:  # one bad row must not sink the batch: record it and go on
        return RowResult(
            row=number,
            id=row.id,
            prompt=row.prompt,
            status="failed",
            error=str(exc),
            error_type=type(exc).__name__,
            request_id=exc.request_id if isinstance(exc, GptImageError) else None,
        )
    return RowResult(
        row=number,
        id=row.id,
        prompt=row.prompt,
        status="stored",
        images=images,
        request_id=images[0].request_id,
    )


def _table_row(r: RowResult) -> dict[str, Any]:
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
        "cost": round(sum(ref.cost for ref in r.images), 4),
        "error": (r.error or "")[:300],
    }


class _Progress:
    """A progress artifact that moves as rows land, updated at most once a second."""

    def __init__(self, total: int, artifact_id: UUID) -> None:
        self.total, self.artifact_id, self.done = total, artifact_id, 0
        self._last = time.monotonic()

    async def advance(self) -> None:
        self.done += 1
        if time.monotonic() - self._last >= _PROGRESS_INTERVAL:
            await self.finish()

    async def finish(self) -> None:
        self._last = time.monotonic()
        percent = 100.0 * self.done / self.total if self.total else 100.0
        await aupdate_progress_artifact(self.artifact_id, percent)
