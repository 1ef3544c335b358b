"""A chain run in parts around review steps: every row makes the steps up to a review, a person
reviews the last of them (:mod:`..review`), rows to redo make that step again with a new variant
(planned and budgeted first) and are reviewed again, dropped rows end as ``dropped``, and only the
approved rows make the steps after it."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from prefect_gpt_image.blocks import GptImageSettings
from prefect_gpt_image.calls import call_prices
from prefect_gpt_image.storage import ImageStore
from prefect_gpt_image.tasks import BudgetExceededError, ImageRef

from ..params import ChainStep, PipelineStep, ReviewStep
from ..review import (
    RedoCall,
    ReviewDecision,
    ReviewItem,
    ReviewSettings,
    ReviewTimeoutError,
    plan_redo,
    review_rows,
)
from .running import call_variant, run_chains, step_request
from .steps import ChainResult, PreparedRow, StepCall, StepResult

__all__ = ["ReviewPoint", "StepSheet", "run_reviewed", "split_reviews"]

StepSheet = Callable[[list[StepResult], str], Awaitable[list[str]]]
"""The contact sheet of some rows' steps, with a title: markdown pages (given by the flow)."""


@dataclasses.dataclass(frozen=True)
class ReviewPoint:
    """A review after step ``after``."""

    after: str
    step: ReviewStep
    index: int


def split_reviews(steps: Sequence[ChainStep]) -> tuple[list[PipelineStep], list[ReviewPoint]]:
    """The working steps, and the reviews between them (each after the step before it, named or
    by kind). ValueError for a review first or two reviews in a row."""
    work: list[PipelineStep] = []
    points: list[ReviewPoint] = []
    for step in steps:
        if isinstance(step, ReviewStep):
            if not work:
                raise ValueError("steps: a review step reviews the step before it: it cannot come first")
            after = work[-1].name or work[-1].kind
            if points and points[-1].after == after:
                raise ValueError(f"steps: two review steps in a row after {after!r}")
            points.append(ReviewPoint(after, step, len(points) + 1))
        else:
            work.append(step)
    return work, points


@dataclasses.dataclass
class _Run:
    run: dict[str, Any]
    """:func:`run_chains`' keyword arguments (variant, credentials, settings, store, batch, ...)."""
    title: str
    sheet: StepSheet

    @property
    def settings(self) -> GptImageSettings:
        settings: GptImageSettings = self.run["settings"]
        return settings

    @property
    def store(self) -> ImageStore:
        store: ImageStore = self.run["store"]
        return store

    @property
    def logger(self) -> Any:
        return self.run["logger"]

    @property
    def variant(self) -> int:
        return int(self.run["variant"])


async def run_reviewed(
    prepared: list[PreparedRow], points: Sequence[ReviewPoint], *, title: str, sheet: StepSheet, **run: Any
) -> tuple[ChainResult, dict[tuple[int, str], BaseException], str | None]:
    """Run the chains of ``prepared`` part by part with :func:`run_chains` (``run``: its keyword
    arguments), with a review at each of ``points``; the results, the failed steps' errors, and
    why the run stopped early (a review timed out), if it did. Rows that stop (failed, dropped,
    or the review timed out) have their later steps ``skipped`` or ``dropped``. ``sheet`` makes
    the review's contact sheet of the rows' steps."""
    rt = _Run(run, title, sheet)
    logger = rt.logger
    results: dict[int, dict[str, StepResult]] = {item.row.number: {} for item in prepared}
    outputs: dict[int, dict[str, ImageRef]] = {item.row.number: {} for item in prepared}
    errors: dict[tuple[int, str], BaseException] = {}
    stop: dict[int, tuple[str, str]] = {}  # row -> (status of its later steps, why)
    timed_out: str | None = None
    active = list(prepared)
    ends = [point.after for point in points] + [None]
    start = 0
    for part, end in enumerate(ends):
        names = _names_until(prepared, start, end)
        sub = [
            PreparedRow(
                item.row,
                calls=[c for c in item.calls if c.name in names],
                invalid_step=item.invalid_step if part == 0 else None,
                invalid_kind=item.invalid_kind,
                error=item.error if part == 0 else None,
                made=dict(outputs[item.row.number]),
            )
            for item in active
        ]
        made, errs = await run_chains(sub, **run)
        errors.update(errs)
        for step in made.steps:
            _keep(step, results, outputs)
        active = [
            item
            for item in active
            if item.invalid_step is None
            and all(results[item.row.number][n].status == "stored" for n in names)
        ]
        if end is None:
            break
        point = points[part]
        items = {item.row.number: _item(item, end, results) for item in active}
        try:
            outcome = await review_rows(
                items,
                _remake(rt, {item.row.number: item for item in active}, end, results, outputs, errors),
                _sheet(rt, prepared, end, results),
                ReviewSettings(
                    step=end,
                    timeout=point.step.timeout_seconds,
                    max_rounds=point.step.max_rounds,
                    title=title,
                    index=point.index,
                ),
                logger,
            )
        except ReviewTimeoutError as exc:
            timed_out = str(exc)
            for item in active:
                stop[item.row.number] = ("skipped", timed_out)
            active = []
            break
        for number, decisions in outcome.decisions.items():
            _record(results[number][end], decisions)
        for number in outcome.dropped:
            results[number][end].status = "dropped"
            stop[number] = ("dropped", f"step {end!r} dropped at review")
        active = [item for item in active if item.row.number in outcome.approved]
        start = _after(prepared, end)
    ordered: list[StepResult] = []
    for item in prepared:
        row = results[item.row.number]
        if item.invalid_step is not None:
            ordered += row.values()
            continue
        failed = next((s for s in row.values() if s.status == "failed"), None)
        for call in item.calls:
            if call.name in row:
                ordered.append(row[call.name])
                continue
            status, why = stop.get(
                item.row.number, ("skipped", f"step {failed.step!r} failed" if failed else "")
            )
            ordered.append(
                StepResult(
                    row=item.row.number,
                    id=item.row.id,
                    step=call.name,
                    kind=call.step.kind,
                    prompt=call.prompt,
                    status="dropped" if status == "dropped" else "skipped",
                    error=why or None,
                )
            )
    return ChainResult(steps=ordered), errors, timed_out


def _names_until(prepared: list[PreparedRow], start: int, end: str | None) -> list[str]:
    """The names of the steps from index ``start`` up to ``end`` (included; None: the last)."""
    names = [step.name or step.kind for step in _steps(prepared)]
    stop = names.index(end) + 1 if end is not None else len(names)
    return names[start:stop]


def _after(prepared: list[PreparedRow], name: str) -> int:
    names = [step.name or step.kind for step in _steps(prepared)]
    return names.index(name) + 1


def _steps(prepared: list[PreparedRow]) -> list[PipelineStep]:
    for item in prepared:
        if item.invalid_step is None and item.calls:
            return [call.step for call in item.calls]
    return []


def _keep(
    step: StepResult, results: dict[int, dict[str, StepResult]], outputs: dict[int, dict[str, ImageRef]]
) -> None:
    results[step.row][step.step] = step
    if step.status == "stored" and step.images:
        outputs[step.row][step.step] = step.images[0]


def _record(step: StepResult, decisions: list[ReviewDecision]) -> None:
    step.review = [*step.review, *decisions]


def _item(item: PreparedRow, name: str, results: dict[int, dict[str, StepResult]]) -> ReviewItem:
    """Row ``item`` under review at step ``name``: its images."""
    return ReviewItem(item.row.number, item.row.id, results[item.row.number][name].images)


def _sheet(
    rt: _Run, prepared: list[PreparedRow], name: str, results: dict[int, dict[str, StepResult]]
) -> Any:
    """The review's contact sheet: each row's steps up to ``name`` (its input, then every image)."""
    names = _names_until(prepared, 0, name)

    async def sheet(numbers: list[int], title: str) -> list[str]:
        return await rt.sheet(
            [results[n][step] for n in numbers for step in names if step in results[n]], title
        )

    return sheet


def _remake(
    rt: _Run,
    rows: dict[int, PreparedRow],
    name: str,
    results: dict[int, dict[str, StepResult]],
    outputs: dict[int, dict[str, ImageRef]],
    errors: dict[tuple[int, str], BaseException],
) -> Any:
    """The review's remake: step ``name`` of the rows to redo, with the note appended to its prompt
    and the round added to its variant, planned and budgeted before any spend."""

    async def remake(redo: dict[int, str], round_: int) -> dict[int, ReviewItem]:
        calls: dict[int, StepCall] = {}
        for number, note in redo.items():
            call = next(c for c in rows[number].calls if c.name == name)
            prompt = f"{call.prompt} {note}" if note else call.prompt
            calls[number] = dataclasses.replace(
                call, prompt=prompt, variant=call_variant(call, rt.variant) + round_, cached=None
            )
        before = {number: {k: v for k, v in outputs[number].items() if k != name} for number in redo}
        try:
            requests = await asyncio.gather(
                *(
                    asyncio.to_thread(step_request, call, before[number], rt.settings, rt.store)
                    for number, call in calls.items()
                )
            )
            found = await plan_redo(
                [
                    RedoCall(number, rows[number].row.id, name, request, call_variant(call, rt.variant))
                    for (number, call), request in zip(calls.items(), requests, strict=True)
                ],
                rt.settings,
                rt.store,
                rt.logger,
                call_prices(rt.run["credentials"], rt.settings),
            )
        except Exception as exc:  # a budget (or an input) refused: the rows fail, nothing was sent
            for number in redo:
                step = results[number][name]
                step.status, step.error, step.error_type = "failed", str(exc), type(exc).__name__
                step.images = []
                errors[(number, name)] = exc
            if not isinstance(exc, BudgetExceededError):
                rt.logger.warning("redo of step %r failed before any call: %s", name, exc)
            return {}
        for number, refs in found.items():
            calls[number].cached = refs
        sub = [PreparedRow(rows[number].row, calls=[calls[number]], made=before[number]) for number in redo]
        made, errs = await run_chains(sub, **{**rt.run, "progress_key": None})
        errors.update(errs)
        out: dict[int, ReviewItem] = {}
        for step in made.steps:
            step.add_sent_back(results[step.row][name])  # the attempt sent back was paid too
            _keep(step, results, outputs)
            if step.status == "stored":
                out[step.row] = _item(rows[step.row], name, results)
        return out

    return remake
