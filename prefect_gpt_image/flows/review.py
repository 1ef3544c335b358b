"""Human review of what a batch just made, in the Prefect UI, before more is spent.

After a step, :func:`review_rows` pauses the flow run with Prefect's pause-for-input: the Resume
dialog shows a contact sheet of the rows just made (the form's description) above a typed form
(:class:`ReviewForm`): approve every row, rows to redo (a row number or id, with an optional note
appended to the row's prompt) and rows to drop. Rows to redo are made again with a new variant by
the flow (planned and budgeted before any spend) and reviewed again, for at most ``max_rounds``
reviews; dropped rows end as ``dropped``; approved rows go on. Each decision is recorded with who
made it (the resuming user when Prefect says; the open-source server does not: ``unknown``) and
when (the server's time of the resume).

While a review waits, an event (:data:`REVIEW_EVENT`) names the flow run, its UI link and the
counts, so an automation can tell a channel. In a deployment run the flow run is *suspended*
rather than paused (the process exits and the worker is free; on resume the run starts again
from the top, every image already made comes from the store's cache records, and the review
returns the answer given); a run of a deployment served by ``flow.serve()`` is a deployment run
too, taken up again by the serving process. Elsewhere (a script) it is paused, the process
waiting. A suspended run nobody answers is failed by the server's pause expiration service, with
Prefect's message (:data:`SUSPENDED_TIMEOUT` says so in the run's log before it suspends).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from uuid import UUID

import anyio
from prefect.artifacts import acreate_markdown_artifact
from prefect.events import emit_event
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import apause_flow_run, asuspend_flow_run
from prefect.input import RunInput, keyset_from_base_key
from prefect.runtime import deployment, flow_run
from prefect.settings import PREFECT_UI_URL
from prefect.utilities.urls import url_for
from pydantic import BaseModel, BeforeValidator, Field

from prefect_gpt_image.api import EditRequest, GenerateRequest, GptImageError
from prefect_gpt_image.api.pricing import PriceModel
from prefect_gpt_image.blocks import GptImageSettings
from prefect_gpt_image.calls import cache_key, md_link, md_text, read_record
from prefect_gpt_image.storage import ImageStore
from prefect_gpt_image.tasks import ImageRef

from .plan import PlannedCall, RunPlan, enforce_budget

__all__ = [
    "REVIEW_EVENT",
    "RedoCall",
    "RedoRow",
    "ReviewDecision",
    "ReviewForm",
    "ReviewItem",
    "ReviewOutcome",
    "ReviewSettings",
    "ReviewTimeoutError",
    "Sheet",
    "plan_redo",
    "review_rows",
]

REVIEW_EVENT = "prefect-gpt-image.review.waiting"
"""The event a flow run emits when a review waits for someone (resource: the flow run)."""

SHEET_ROWS = 100
"""Rows on a page of the review's contact sheet; the form shows the first page."""

UNKNOWN = "unknown"

POLL_SECONDS = 5
"""How often a paused run (in its process) asks the server whether it was resumed."""

SUSPENDED_TIMEOUT = (
    "; in a deployment run Prefect's server does that (its pause expiration service): "
    "the run ends Failed with the server's message 'The flow was paused and never resumed.', "
    "nothing more is paid for, and a new run with the same parameters gets every image made so "
    "far from the store at no cost"
)
"""What the waiting log line adds for a suspended run: its end is the server's, not the flow's."""

PAUSE_GRACE_SECONDS = 120
"""The server's pause outlasts the review's timeout by this much: the run ends itself first."""


RowName = Annotated[str, BeforeValidator(lambda value: str(value).strip())]
"""A row: its number ("3") or its id ("sku-12"); a number given as a JSON number is taken too."""


class RedoRow(BaseModel):
    """A row to make again, with a new variant."""

    row: RowName = Field(description="The row's number or id, as the sheet shows it.")
    note: str = Field(
        "", max_length=2000, description="Optional: appended to the row's prompt for the new attempt."
    )


class ReviewForm(RunInput):
    """What the reviewer answers in the Resume dialog."""

    approve_all: bool = Field(
        True,
        description="Approve every row not listed below. Off: only the rows listed to redo go on "
        "(made again and reviewed again); every other row is dropped.",
    )
    redo: list[RedoRow] = Field(
        default_factory=list,
        description="Rows to make again with a new variant (a row number or id; an optional note "
        "is appended to its prompt); they are reviewed again.",
    )
    drop: list[RowName] = Field(
        default_factory=list, description="Rows to drop (numbers or ids): they end as 'dropped'."
    )
    reviewer: str = Field(
        "",
        max_length=200,
        description="Optional: your name, recorded with the decisions (the open-source Prefect "
        "server does not say who resumed a run).",
    )


class ReviewDecision(BaseModel):
    """One decision about one row: what, in which review round, by whom and when."""

    step: str = Field(description="The step reviewed (batch_generate: generate).")
    round: int = Field(description="1 for the first review of the step, 2 after a redo, ...")
    decision: Literal["approved", "redo", "dropped"]
    by: str = Field(UNKNOWN, description="The user who resumed the run, when Prefect says; else 'unknown'.")
    signed: str = Field("", description="The name typed in the form's 'reviewer' field, if any.")
    at: dt.datetime = Field(description="When the answer reached the Prefect server (UTC).")
    note: str = Field("", description="The prompt note of a redo; why a row was dropped by the flow.")
    images: list[str] = Field(default_factory=list, description="SHA-256 of the images decided about.")

    def summary(self) -> str:
        """One line for the table: 'approved by unknown (signed ann) at 2026-12-05T02:10:00Z, round 1'."""
        who = self.by + (f" (signed {self.signed})" if self.signed else "")
        when = self.at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        text = f"{self.decision} by {who} at {when}, round {self.round}"
        return text + (f": {self.note}" if self.note else "")


@dataclass
class ReviewItem:
    """A row under review: its number, id and the images decided about."""

    row: int
    id: str | None
    images: list[ImageRef]


@dataclass
class ReviewOutcome:
    """How a review ended: the approved rows (their latest items), the dropped ones, the rows whose
    redo failed (the flow's results say why) and every row's decisions."""

    approved: dict[int, ReviewItem] = field(default_factory=dict)
    dropped: set[int] = field(default_factory=set)
    failed: set[int] = field(default_factory=set)
    decisions: dict[int, list[ReviewDecision]] = field(default_factory=dict)


class ReviewTimeoutError(GptImageError, TimeoutError):
    """No answer came within the review's timeout: the run ends, nothing is paid after it."""


Sheet = Callable[[list[int], str], Awaitable[list[str]]]
"""The contact sheet of the rows under review (numbers in, a title): its markdown pages."""

Remake = Callable[[dict[int, str], int], Awaitable[dict[int, ReviewItem]]]
"""Make rows again: ``{row: prompt note}`` and the round number (its variant offset) in; the rows
made out (a row missing from the answer failed, and the flow's results say why)."""


@dataclass(frozen=True)
class ReviewSettings:
    """Where and how long a review waits."""

    step: str
    timeout: int
    max_rounds: int = 3
    poll_interval: int | None = None
    """Seconds between asks whether the run was resumed; unset: :data:`POLL_SECONDS`."""
    title: str = "gpt-image review"
    index: int = 1
    """Which review of the flow run this is (each review step of a chain has its own)."""


async def review_rows(
    items: Mapping[int, ReviewItem], remake: Remake, sheet: Sheet, settings: ReviewSettings, logger: Any
) -> ReviewOutcome:
    """Review ``items`` until every row is approved or dropped (or ``max_rounds`` reviews), the
    form showing their contact ``sheet``: rows to redo are passed to ``remake`` with their notes
    and reviewed again. Raises
    :class:`ReviewTimeoutError` when an answer does not come in time."""
    outcome = ReviewOutcome()
    pending = dict(items)
    problem = ""
    round_ = 1
    while pending:
        last = round_ >= settings.max_rounds
        answer, by, at = await _ask(pending, sheet, settings, round_, last, problem, logger)
        redo, drop, problem = _resolve(answer, pending)
        if problem and not last:
            logger.warning("review round %d: %s; asking again", round_, problem)
            round_ += 1
            continue
        if problem:
            logger.warning("review round %d (the last): %s; those entries are ignored", round_, problem)
        decided: dict[int, tuple[str, str]] = {}
        if last and redo:
            why = f"a redo asked in the last review (max_review_rounds={settings.max_rounds})"
            decided = {number: ("dropped", why) for number in redo}
            redo = {}
        for number in pending:
            if number in decided:
                continue
            if number in drop or (number not in redo and not answer.approve_all):
                decided[number] = ("dropped", "")
            elif number in redo:
                decided[number] = ("redo", redo[number])
            else:
                decided[number] = ("approved", "")
        for number, (decision, text) in decided.items():
            outcome.decisions.setdefault(number, []).append(
                ReviewDecision(
                    step=settings.step,
                    round=round_,
                    decision=decision,
                    by=by,
                    signed=answer.reviewer.strip(),
                    at=at,
                    note=text,
                    images=[ref.sha256 for ref in pending[number].images],
                )
            )
            if decision == "dropped":
                outcome.dropped.add(number)
            elif decision == "approved":
                outcome.approved[number] = pending[number]
        logger.info(
            "review round %d of %r: %d approved, %d to redo, %d dropped so far",
            round_,
            settings.step,
            len(outcome.approved),
            len(redo),
            len(outcome.dropped),
        )
        if not redo:
            break
        made = await remake(redo, round_)
        outcome.failed |= set(redo) - set(made)
        pending = {number: made[number] for number in redo if number in made}
        problem = ""
        round_ += 1
    return outcome


def _resolve(answer: ReviewForm, pending: Mapping[int, ReviewItem]) -> tuple[dict[int, str], set[int], str]:
    """The rows to redo (with notes) and to drop, by number; what in the answer names no row of
    this review, or a row twice."""
    by_name: dict[str, int] = {}
    for number, item in pending.items():
        by_name[str(number)] = number
        if item.id:
            by_name.setdefault(item.id, number)
    unknown: list[str] = []
    redo: dict[int, str] = {}
    for entry in answer.redo:
        found = by_name.get(entry.row)
        if found is None:
            unknown.append(entry.row)
        else:
            redo[found] = entry.note.strip()
    drop: set[int] = set()
    for name in answer.drop:
        found = by_name.get(name)
        if found is None:
            unknown.append(name)
        else:
            drop.add(found)
    problems = []
    if unknown:
        problems.append(f"not a row of this review: {', '.join(repr(u) for u in unknown)}")
    if both := sorted(set(redo) & drop):
        problems.append(f"listed to redo and to drop: {', '.join(str(n) for n in both)}")
    return redo, drop, "; ".join(problems)


async def _ask(
    pending: Mapping[int, ReviewItem],
    sheet: Sheet,
    settings: ReviewSettings,
    round_: int,
    last: bool,
    problem: str,
    logger: Any,
) -> tuple[ReviewForm, str, dt.datetime]:
    """Pause (or suspend) for one answer; the answer, who gave it and when."""
    key = f"review-{settings.index}-{round_}"
    title = f"{settings.title}: review of step {settings.step}, round {round_}"
    pages = await sheet(sorted(pending), title)
    suspend = deployment.id is not None
    run_id = flow_run.id
    url = url_for("flow-run", obj_id=run_id) if run_id else None
    # A suspended run started again after its resume passes the reviews already answered:
    # no event for those (nobody is waiting), no pages published again, the form not shown.
    answered = suspend and await _answered_before(UUID(str(run_id)), key)
    links: list[str | None] = []
    if len(pages) > 1 and not answered:  # the form shows page 1 and links every page's artifact
        links = await _publish_pages(pages, key, title)
    description = _description(pending, pages, key, last, problem, links)
    form = ReviewForm.with_initial_data(description=description, approve_all=True)
    if answered:
        logger.info("review %d, round %d: answered before this run started again", settings.index, round_)
    else:
        _emit(run_id, url, settings, round_, len(pending), "suspend" if suspend else "pause")
        logger.info(
            "review %d, round %d: %d row(s) of step %r wait for a decision (Resume in the UI%s); "
            "the run fails after %d s without one%s",
            settings.index,
            round_,
            len(pending),
            settings.step,
            f": {url}" if url else "",
            settings.timeout,
            SUSPENDED_TIMEOUT if suspend else "",
        )
    timed_out = ReviewTimeoutError(
        f"review of step {settings.step!r} (round {round_}): no answer within "
        f"{settings.timeout} s; the run ends here and nothing more is paid for"
    )
    if suspend:  # the process exits here; the server's pause expiration fails the run on time
        answer: ReviewForm | None = await asuspend_flow_run(
            wait_for_input=form, timeout=settings.timeout, key=key
        )
    else:
        # The run gives up on its own clock, before the server's pause expires (which would
        # refuse the run's own final state and message), so the run ends with this message.
        answer = None
        with anyio.move_on_after(settings.timeout):
            try:
                answer = await apause_flow_run(
                    wait_for_input=form,
                    timeout=settings.timeout + PAUSE_GRACE_SECONDS,
                    poll_interval=settings.poll_interval or POLL_SECONDS,
                    key=key,
                )
            except FlowPauseTimeout as exc:
                raise timed_out from exc
    if answer is None:
        raise timed_out
    by, at = await _answered(UUID(str(run_id)), "suspended" if suspend else "paused", key)
    return answer, by, at


def _emit(run_id: Any, url: str | None, settings: ReviewSettings, round_: int, rows: int, mode: str) -> None:
    """Tell whoever listens (an automation) that review ``round_`` of the run waits."""
    emit_event(
        REVIEW_EVENT,
        resource={
            "prefect.resource.id": f"prefect.flow-run.{run_id}",
            "prefect.resource.name": str(flow_run.name or ""),
        },
        payload={
            "url": url or "",
            "title": settings.title,
            "step": settings.step,
            "round": round_,
            "rows": rows,
            "timeout_seconds": settings.timeout,
            "mode": mode,
        },
    )


async def _answered_before(run_id: UUID, key: str) -> bool:
    """Whether pause ``key`` of the run already fired (an earlier attempt of this run asked it)."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        run = await client.read_flow_run(run_id)
    return key in (run.empirical_policy.pause_keys or set())


async def _answered(run_id: UUID, state: str, key: str) -> tuple[str, dt.datetime]:
    """Who sent the answer under pause ``key`` (Prefect's ``sender``, set by no UI resume of the
    open-source server: ``unknown``) and when the server stored it."""
    from prefect.client.orchestration import get_client

    response_key = keyset_from_base_key(f"{state}-{key}")["response"]
    async with get_client() as client:
        inputs = await client.filter_flow_run_input(
            flow_run_id=run_id, key_prefix=response_key, limit=1, exclude_keys=set()
        )
    if not inputs:  # resumed with an empty form: the defaults (approve all)
        return UNKNOWN, dt.datetime.now(dt.UTC)
    stored = inputs[0]
    return stored.sender or UNKNOWN, stored.created or dt.datetime.now(dt.UTC)


def _description(
    pending: Mapping[int, ReviewItem],
    pages: list[str],
    key: str,
    last: bool,
    problem: str,
    links: list[str | None],
) -> str:
    """The form's description: what to do, a link to every page of the contact sheet when it
    has more than one (``links``: each page's artifact in the UI), then the first page."""
    lines = []
    if problem:
        lines += [f"**The last answer was not used**: {md_text(problem)}. Answer again.", ""]
    lines += [
        md_text(
            f"{len(pending)} row(s) to review. Approve all, or list rows (number or id) to redo "
            "(made again with a new variant, a note appended to the prompt, then reviewed again) "
            "or to drop."
        ),
        "",
    ]
    if last:
        lines += [md_text("This is the last review round: a row listed to redo is dropped."), ""]
    if len(pages) > 1:
        lines += [
            md_text(
                f"Below: page 1 of {len(pages)} of the contact sheet. Every page is a markdown "
                f"artifact of this run (page 1 under the key gpt-image-{key}); a row on a later "
                "page is answered here like any other, by its number or id:"
            ),
            "",
        ]
        links = links + [None] * (len(pages) - len(links))
        lines += [
            f"- {md_link(_page_name(pending, number, len(pages)), link)}"
            for number, link in enumerate(links, start=1)
        ]
        lines.append("")
    return "\n".join(lines) + "\n" + (pages[0] if pages else "")


def _page_name(pending: Mapping[int, ReviewItem], number: int, count: int) -> str:
    """'page 2 of 3: rows 101 to 200', the rows as the sheet pages them (:data:`SHEET_ROWS` a page)."""
    rows = sorted(pending)[(number - 1) * SHEET_ROWS : number * SHEET_ROWS]
    return f"page {number} of {count}" + (f": rows {rows[0]} to {rows[-1]}" if rows else "")


async def _publish_pages(pages: list[str], key: str, title: str) -> list[str | None]:
    """Publish every page of the review's contact sheet as a markdown artifact of the run (the
    first under the key ``gpt-image-{key}``); each page's link in the UI (None without a UI URL)."""
    ui = PREFECT_UI_URL.value()
    links: list[str | None] = []
    for number, page in enumerate(pages, start=1):
        artifact = await acreate_markdown_artifact(
            markdown=page,
            key=f"gpt-image-{key}" if number == 1 else None,
            description=md_text(f"{title}: page {number} of {len(pages)}"),
        )
        links.append(f"{ui.rstrip('/')}/artifacts/artifact/{artifact}" if ui else None)
    return links


@dataclass(frozen=True)
class RedoCall:
    """A row's call to make again: its request (the prompt with the note) and new variant."""

    row: int
    id: str | None
    step: str
    request: GenerateRequest | EditRequest
    variant: int


async def plan_redo(
    calls: list[RedoCall],
    settings: GptImageSettings,
    store: ImageStore,
    logger: Any,
    prices: PriceModel,
) -> dict[int, list[ImageRef]]:
    """Plan the redo ``calls`` before any spend, as a batch plans: each looked up in the store (a
    rerun of the same review finds them), priced by ``prices`` (the run's price model), the plan
    logged and checked against the settings' per-run caps (BudgetExceededError, nothing sent,
    when it would break one). The stored images of the calls found, by row."""
    import asyncio

    def lookup(call: RedoCall) -> list[ImageRef] | None:
        try:
            return read_record(store, cache_key(call.request, call.variant))
        except Exception:  # unreadable: a miss (the call's own lookup, under its lock, reports it)
            return None

    found = await asyncio.gather(*(asyncio.to_thread(lookup, call) for call in calls))
    plan = RunPlan(
        calls=[
            PlannedCall(
                row=call.row,
                id=call.id,
                step=call.step,
                status="cached" if refs is not None else "call",
                images=call.request.n,
                estimate=prices.estimate_request(call.request),
            )
            for call, refs in zip(calls, found, strict=True)
        ],
        price_model=prices.label,
    )
    logger.info("redo %s", plan.summary())
    await enforce_budget(plan, settings)
    return {call.row: refs for call, refs in zip(calls, found, strict=True) if refs is not None}
