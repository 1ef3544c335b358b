"""Run a chain of steps (generate, edit, blend) for each row: the one engine behind
``image_pipeline`` (one row), ``batch_edit`` (one edit per image) and ``batch_pipeline``.

Two phases. The *plan* validates every row and step before anything is paid for: prompt
templates filled from the row's columns, inputs resolved (an earlier step's output, a column
holding a URI, or a URI) and read (format, size, decodability), masks checked against their image
(a region becomes a mask at that image's size), each request built as the API layer would, and
every call whose inputs are known looked up in the store's cache records. The *run* then makes
the rows' chains concurrently under the shared limits; a failed step fails its row only, and
a rerun pays only for the steps never stored (every step is a cached call).

The parts: :mod:`.steps` (rows, results, the prepared plan), :mod:`.planning`, :mod:`.running`
and :mod:`.report` (the artifacts); :func:`run_batch` here ties them together for a batch flow.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from prefect.client.schemas.objects import State
from prefect.states import Completed, Failed

from prefect_gpt_image.blocks import GptImageCredentials, GptImageSettings
from prefect_gpt_image.calls import call_prices, read_once
from prefect_gpt_image.storage import ImageStore

from ..failures import failure_counts, failure_message
from ..params import ChainStep, ImageOptions
from ..plan import RunPlan, enforce_budget, has_budget
from .planning import edit_size, plan_chains
from .report import SheetPublisher, chain_markdown, publish_chain_markdown, publish_chain_table
from .reviewed import ReviewPoint, StepSheet, run_reviewed, split_reviews
from .running import run_chains
from .steps import ChainResult, ChainRow, PreparedRow, StepResult, failed_steps, step_names

__all__ = [
    "ChainResult",
    "ChainRow",
    "StepResult",
    "StepSheet",
    "chain_markdown",
    "edit_size",
    "failed_steps",
    "make_chains",
    "plan_batch",
    "plan_chains",
    "publish_chain_markdown",
    "publish_chain_table",
    "run_batch",
    "run_chains",
    "run_reviewed",
    "split_reviews",
    "step_names",
]


async def make_chains(
    prepared: list[PreparedRow],
    reviews: Sequence[ReviewPoint],
    *,
    title: str,
    sheet: StepSheet | None,
    logger: Any,
    variant: int,
    credentials: GptImageCredentials | None,
    settings: GptImageSettings,
    store: ImageStore,
    batch: bool = False,
    max_parallel: int | None = 1,
    progress_key: str | None = None,
) -> tuple[ChainResult, dict[tuple[int, str], BaseException], str | None]:
    """Make the planned chains of ``prepared``: with :func:`run_reviewed` when the chain has
    review points (``reviews``, the form showing ``sheet``), else with :func:`run_chains` (the
    other keywords are its own; their defaults are ``image_pipeline``'s one row, each step its
    own task run, no progress artifact). The results, the failed steps' errors, and why the run
    stopped early (a review timed out) or None. The one place a flow's body chooses between the
    two (``run_batch``, ``image_pipeline``)."""
    run: dict[str, Any] = {
        "variant": variant,
        "credentials": credentials,
        "settings": settings,
        "store": store,
        "batch": batch,
        "max_parallel": max_parallel,
        "progress_key": progress_key,
        "logger": logger,
    }
    if reviews:
        assert sheet is not None, "a run with review steps needs its contact sheet"
        return await run_reviewed(prepared, reviews, title=title, sheet=sheet, **run)
    result, errors = await run_chains(prepared, **run)
    return result, errors, None


async def plan_batch(
    rows: Sequence[ChainRow],
    steps: Sequence[ChainStep],
    *,
    options: ImageOptions,
    variant: int,
    credentials: GptImageCredentials | None,
    settings: GptImageSettings,
    store: ImageStore,
) -> tuple[RunPlan, list[PreparedRow]]:
    """The plan of a batch of chains (its review steps aside: they cost nothing) and the prepared
    rows :func:`run_chains` makes: every row and step checked, looked up in ``store`` and priced by
    the endpoint's price model (:func:`~prefect_gpt_image.calls.call_prices`; ``credentials``
    None: the environment's key, or none at all). It needs no key, no flow run and no Prefect
    server; nothing is sent. Each remote input is fetched once (once per run inside the run's
    :func:`~prefect_gpt_image.calls.read_once`)."""
    with read_once():
        return await asyncio.to_thread(
            plan_chains,
            rows,
            split_reviews(steps)[0],
            options=options,
            variant=variant,
            settings=settings,
            store=store,
            prices=call_prices(credentials, settings),
        )


async def run_batch(
    rows: Sequence[ChainRow],
    steps: Sequence[ChainStep],
    *,
    options: ImageOptions,
    variant: int,
    max_parallel: int | None,
    credentials: GptImageCredentials | None,
    settings: GptImageSettings,
    store: ImageStore,
    key: str,
    title: str,
    logger: Any,
    sheet: StepSheet | None = None,
    publish_sheet: SheetPublisher | None = None,
) -> State[Any]:
    """A batch flow's body: plan every row (:func:`plan_batch`, checked against the budget), run
    the chains, publish the table (``key``), the progress (``key-progress``)
    and the first chains (``key-chains``); Failed when a row failed, naming why. Review steps
    pause the run for a person between the steps (:mod:`.reviewed`), the form showing ``sheet``."""
    reviews = split_reviews(steps)[1]
    # Each remote input is fetched once: the plan checks it, the call sends it, the sheet shows it.
    with read_once():
        plan, prepared = await plan_batch(
            rows,
            steps,
            options=options,
            variant=variant,
            credentials=credentials,
            settings=settings,
            store=store,
        )
        logger.info(plan.summary())
        if has_budget(settings):
            await enforce_budget(plan, settings)
        result, _, stopped = await make_chains(
            prepared,
            reviews,
            title=title,
            sheet=sheet,
            logger=logger,
            batch=True,
            max_parallel=max_parallel,
            progress_key=f"{key}-progress",
            variant=variant,
            credentials=credentials,
            settings=settings,
            store=store,
        )
        made = sum(s.status == "stored" and not s.served for s in result.steps)
        hits = sum(s.served for s in result.steps)
        total = len(rows)
        bill = result.bill()
        summary = (
            f"{result.stored} of {total} rows stored ({made} step(s) made, {hits} found in the store); "
            f"{bill.line()}"
        )
        headline = f"{result.stored} of {total} rows stored; {bill.with_estimate()}"
        if result.dropped:
            summary += f"; {result.dropped} row(s) dropped at review"
            headline += f"; {result.dropped} row(s) dropped at review"
        await asyncio.gather(
            publish_chain_table(result, key=key, description=f"{title}: {headline}"),
            publish_chain_markdown(
                result,
                key=f"{key}-chains",
                title=title,
                description=f"{title}: the first rows",
                publish_sheet=publish_sheet,
                sheet_key=f"{key}-sheet",
            ),
        )
        if undelivered := sum(n for s in result.steps for n in s.undelivered.values()):
            summary += f"; {undelivered} image(s) billed but not delivered (column maybe_billed)"
        if lost := sum(rid not in s.undelivered for s in result.steps for rid in s.maybe_billed):
            summary += f"; {lost} retried attempt(s) may also have been billed (column maybe_billed)"
        if stopped is not None:
            return Failed(message=f"{stopped}; {summary}", data=result)
        if result.failed:
            failed = failed_steps(result)
            headline = f"{result.failed} of {total} rows failed ({failure_counts(failed)}); {summary}"
            message = failure_message(headline, failed, artifact=f"table artifact {key!r}")
            return Failed(message=message, data=result)
        logger.info(summary)
        return Completed(message=summary, data=result)
