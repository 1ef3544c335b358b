"""What a batch made and how it is shown: :class:`RowResult` and :class:`BatchResult`, the table
artifact (over :data:`TABLE_ROWS` rows, the failed ones first) and the CSV report of every row in
the store."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Iterator
from typing import Any, Literal
from uuid import uuid4

from prefect.context import FlowRunContext
from pydantic import BaseModel, Field

from prefect_gpt_image.calls import (
    Bill,
    Charges,
    csv_row,
    md_link,
    md_table,
)
from prefect_gpt_image.storage import ImageStore
from prefect_gpt_image.tasks import ImageRef

from .failures import Counted
from .review import ReviewDecision

__all__ = [
    "REPORT_FOLDER",
    "SHEET_KEY",
    "TABLE_ROWS",
    "BatchResult",
    "RowResult",
    "artifact_rows",
    "flow_run_id",
    "publish_batch_table",
    "table_row",
    "write_report",
]

SHEET_KEY = "gpt-image-batch-sheet"
"""The key of a batch's contact sheet (its first page; see :mod:`.sheets`)."""

TABLE_ROWS = 1000
"""Rows the table artifact lists at most; a larger batch's full table is a CSV report in the store."""


REPORT_FOLDER = "reports"
"""The folder of the CSV reports of large batches, under the store's prefix."""


class RowResult(Charges):
    """What happened to one row of a batch, and what it cost this run (:class:`Charges`)."""

    row: int = Field(description="1-based row number (the manifest line for manifests).")
    id: str | None = None
    prompt: str
    status: Literal["stored", "failed", "invalid", "dropped"]
    images: list[ImageRef] = Field(default_factory=list)
    error: str | None = None
    error_type: str | None = None
    request_id: str | None = None
    review: list[ReviewDecision] = Field(
        default_factory=list, description="The review decisions about the row (who, what, when)."
    )


class BatchResult(BaseModel):
    """Every row's result, and counts."""

    rows: list[RowResult]

    @property
    def stored(self) -> int:
        """Rows whose images are stored."""
        return sum(r.status == "stored" for r in self.rows)

    @property
    def dropped(self) -> int:
        """Rows a reviewer dropped."""
        return sum(r.status == "dropped" for r in self.rows)

    @property
    def failed(self) -> int:
        """Rows that failed or were invalid."""
        return len(self.rows) - self.stored - self.dropped

    @property
    def cost(self) -> float:
        """USD this run paid: every image billed, delivered or not (0 for a rerun served from
        the store)."""
        return sum(r.cost for r in self.rows)

    def bill(self) -> Bill:
        """What the batch paid and found in the store, and the estimate of the calls it made."""
        return Bill.total(r.bill() for r in self.rows)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """Counts, not every row: a repr (in a log, a traceback, Prefect's messages) stays one
        line at 10,000 rows."""
        yield "rows", Counted(len(self.rows), self.stored, self.failed)


def table_row(r: RowResult) -> dict[str, Any]:
    """Row ``r`` as plain values (the CSV report's line; :func:`artifact_rows` for the table)."""
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
        "served": r.served,
        "maybe_billed": ", ".join(r.maybe_billed),
        "cost": round(r.cost, 4),
        "estimate": round(r.estimate, 4),
        "error": (r.error or "")[:300],
        "review": r.review[-1].summary() if r.review else "",
    }


def artifact_rows(rows: list[RowResult]) -> list[dict[str, Any]]:
    """The table artifact's rows: each image links to it (reading its URI), every other string
    cell escaped (the UI renders each cell as markdown)."""
    return md_table(
        {**table_row(r), "image": md_link(r.images[0].uri, r.images[0].link) if r.images else ""}
        for r in rows
    )


async def publish_batch_table(
    result: BatchResult, total: int, store: ImageStore, logger: Any
) -> tuple[list[dict[str, Any]], str, str | None]:
    """The table artifact's rows and description, and the URI of the CSV report if one was
    written. Up to :data:`TABLE_ROWS` rows it lists every row; a larger batch lists its failed
    and invalid rows first, then stored ones up to that many, and its full table goes to the
    store as a CSV report linked from the description (the UI renders a table of 10,000 rows
    slowly, and the server stores it as one JSON value)."""
    description = f"gpt-image batch: {result.stored} of {total} rows stored; {result.bill().with_estimate()}"
    if len(result.rows) <= TABLE_ROWS:
        return artifact_rows(result.rows), description, None
    failed = [r for r in result.rows if r.status in ("failed", "invalid")]
    shown = (failed + [r for r in result.rows if r.status not in ("failed", "invalid")])[:TABLE_ROWS]
    table = artifact_rows(shown)
    description += f"; {len(shown)} of {total} rows shown (failed first)"
    try:
        key = store.key(REPORT_FOLDER, f"batch-{flow_run_id()}.csv")
        link = await asyncio.to_thread(write_report, store, key, result.rows)
    except Exception as exc:  # the table still lists the failures
        logger.warning("Writing the batch's CSV report failed: %s", exc)
        return table, description, None
    return table, f"{description}; every row: {md_link('CSV', link)}", store.uri_for(key)


def flow_run_id() -> str:
    context = FlowRunContext.get()
    run = context.flow_run if context is not None else None
    return str(run.id) if run is not None else uuid4().hex


def write_report(store: ImageStore, key: str, rows: list[RowResult]) -> str:
    """Write every row's table line to ``key`` as CSV (cells that would start a spreadsheet
    formula neutralised); a link to it."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(table_row(rows[0]).keys()))
    writer.writeheader()
    writer.writerows(csv_row(table_row(r)) for r in rows)
    store.put_bytes(key, out.getvalue().encode(), "text/csv")
    return store.link_for(key)
