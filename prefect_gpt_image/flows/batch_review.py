"""``batch_generate(review=True)``: the stored rows reviewed in the UI (:mod:`.review`), rows to
redo generated again with a new variant (and the note appended to their prompt), planned and
budgeted before any spend, dropped rows marked ``dropped``, and every decision in the rows'
results."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from prefect_gpt_image.api import GenerateRequest
from prefect_gpt_image.api.pricing import PriceModel
from prefect_gpt_image.blocks import GptImageSettings
from prefect_gpt_image.calls import batch_rows
from prefect_gpt_image.storage import ImageStore

from .batch_report import RowResult
from .chain.steps import StepResult
from .manifest import BatchRow
from .review import (
    SHEET_ROWS,
    RedoCall,
    ReviewItem,
    ReviewSettings,
    ReviewTimeoutError,
    plan_redo,
    review_rows,
)
from .sheets import contact_sheet

__all__ = ["review_batch", "review_sheet"]

RunRow = Callable[[int, BatchRow, GenerateRequest], Awaitable[RowResult]]
"""Make one row's images (batch_generate's own row call)."""


async def review_batch(
    results: dict[int, RowResult],
    rows: dict[int, tuple[BatchRow, dict[str, Any]]],
    run_row: RunRow,
    *,
    variant: int,
    timeout: int,
    max_rounds: int,
    settings: GptImageSettings,
    store: ImageStore,
    logger: Any,
    prices: PriceModel,
) -> str | None:
    """Review the stored rows of ``results`` (updated in place), redos priced by ``prices``; why
    the run stopped (the review timed out), or None."""
    items = {
        number: ReviewItem(number, r.id, r.images)
        for number, r in sorted(results.items())
        if r.status == "stored"
    }
    defaults = settings.request_defaults()

    async def remake(redo: dict[int, str], round_: int) -> dict[int, ReviewItem]:
        calls = []
        for number, note in redo.items():
            row, fields = rows[number]
            prompt = f"{results[number].prompt} {note}" if note else results[number].prompt
            request = GenerateRequest.build(prompt=prompt, **{**defaults, **fields})
            base = row.variant if row.variant is not None else variant
            calls.append(RedoCall(number, row.id, "generate", request, base + round_))
        try:
            await plan_redo(calls, settings, store, logger, prices)
        except Exception as exc:  # a budget refused (nothing was sent): the rows fail
            for call in calls:
                results[call.row] = results[call.row].model_copy(
                    update={
                        "status": "failed",
                        "images": [],
                        "error": str(exc),
                        "error_type": type(exc).__name__,
                    }
                )
            return {}

        async def one(call: RedoCall) -> None:
            row = rows[call.row][0].model_copy(
                update={"prompt": call.request.prompt, "variant": call.variant}
            )
            assert isinstance(call.request, GenerateRequest)
            made = await run_row(call.row, row, call.request)
            made.add_sent_back(results[call.row])  # the attempt sent back was paid too
            results[call.row] = made

        with batch_rows():
            await asyncio.gather(*(one(call) for call in calls))
        return {
            c.row: ReviewItem(c.row, c.id, results[c.row].images)
            for c in calls
            if results[c.row].status == "stored"
        }

    async def sheet(numbers: list[int], title: str) -> list[str]:
        return await review_sheet(store, settings, logger)([results[number] for number in numbers], title)

    try:
        outcome = await review_rows(
            items,
            remake,
            sheet,
            ReviewSettings(step="generate", timeout=timeout, max_rounds=max_rounds),
            logger,
        )
    except ReviewTimeoutError as exc:
        return str(exc)
    for number, decisions in outcome.decisions.items():
        results[number].review = [*results[number].review, *decisions]
    for number in outcome.dropped:
        results[number].status = "dropped"
    return None


def review_sheet(
    store: ImageStore, settings: GptImageSettings, logger: Any
) -> Callable[[Sequence[RowResult] | Sequence[StepResult], str], Awaitable[list[str]]]:
    """The contact sheet of the rows under review (a batch's rows or a chain's steps), pages of
    :data:`~.review.SHEET_ROWS` rows, made off the event loop (it may make thumbnails)."""

    async def sheet(rows: Sequence[RowResult] | Sequence[StepResult], title: str) -> list[str]:
        return await asyncio.to_thread(
            contact_sheet,
            rows,
            store,
            title=title,
            page_rows=SHEET_ROWS,
            policy=settings.input_policy(),
            logger=logger,
        )

    return sheet
