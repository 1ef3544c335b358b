"""Running a batch flow (``batch_generate``, ``batch_edit``, ``batch_pipeline``) for a verb, in
this process, and turning its result into the verb's :class:`~.report.Outcome`; or, for ``plan``,
making the flow's plan with the flow's own planner, outside any flow run.

The flows run as they would in a script: on the configured Prefect server, else Prefect's
ephemeral one (started for the run), their progress shown as rows finish (:mod:`.progress`). A
row or step served from the store is told from a paid one by its ``served``. A plan needs neither
a key nor a Prefect server (unless a saved block is named), so it starts at once.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from .exits import FAILED, UsageError
from .progress import batch_progress
from .report import Outcome
from .session import Session, open_session
from .single import plan_document

if TYPE_CHECKING:
    from prefect_gpt_image.flows import RunPlan

__all__ = ["Planner", "flow_options", "local_path", "run_flow"]

Planner = Callable[..., Coroutine[Any, Any, "RunPlan"]]
"""A flow's planner (``plan_batch``, ``plan_batch_edit``, ``plan_batch_pipeline``): the flow's
parameters, ``variant`` and the session's ``settings``, ``credentials`` and ``store``."""


def flow_options(options: dict[str, Any]) -> Any:
    """The flows' ``ImageOptions`` from the command line's options (unset ones left out)."""
    from pydantic import ValidationError

    from prefect_gpt_image.flows import ImageOptions

    fields = {k: v for k, v in options.items() if v is not None and k != "moderation"}
    try:
        return ImageOptions(**fields)
    except ValidationError as exc:
        raise UsageError(
            "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        ) from None


def local_path(location: str) -> str:
    """``location`` as the flow reads it: an absolute path for a local file or folder (which
    must exist), a URI as given."""
    from pathlib import Path

    if "://" in location:
        return location
    path = Path(location).expanduser()
    if not path.exists():
        raise UsageError(f"{location}: no such file or folder")
    return str(path.resolve())


def run_flow(
    command: str, flow: Any, planner: Planner, kwargs: dict[str, Any], args: argparse.Namespace
) -> Outcome:
    """Run ``flow(**kwargs)`` with the options every batch flow takes in the command's session,
    and describe what it made; with ``plan``, make the flow's plan with ``planner(**kwargs)``
    (the code the flow's ``plan_only`` runs) at once: no key, no Prefect server, nothing paid."""
    if args.plan:
        return _plan(command, planner, kwargs, args)
    with open_session(args) as session:
        return _run_flow(command, flow, kwargs, session, args)


def _plan(command: str, planner: Planner, kwargs: dict[str, Any], args: argparse.Namespace) -> Outcome:
    import asyncio

    with open_session(args, needs_key=False) as session:
        plan = asyncio.run(
            planner(
                **kwargs,
                variant=args.variant,
                settings=session.settings,
                credentials=session.credentials,
                store=session.store,
            )
        )
    outcome = Outcome(f"plan {command}")
    outcome.plan = plan_document(plan)
    return outcome


def _run_flow(
    command: str, flow: Any, kwargs: dict[str, Any], session: Session, args: argparse.Namespace
) -> Outcome:
    from prefect_gpt_image.flows import BatchResult, ChainResult

    common = {
        "variant": args.variant,
        "max_parallel": args.max_parallel,
        "storage": args.storage,
        "credentials_block": args.credentials_block,
        "settings_block": args.settings_block,
    }
    with batch_progress(command, as_json=args.json):
        state = flow(**kwargs, **common, return_state=True)
    data = state.result(raise_on_failure=False)
    if isinstance(data, BaseException):
        raise data
    outcome = Outcome(command)
    if isinstance(data, BatchResult):
        _batch(outcome, data, session, str(state.state_details.flow_run_id))
    elif isinstance(data, ChainResult):
        _chain(outcome, data)
    else:
        raise TypeError(f"{command}: the flow returned {type(data).__name__}")
    if state.is_failed():
        outcome.exit_code = FAILED
    return outcome


def _batch(outcome: Outcome, result: Any, session: Session, flow_run_id: str) -> None:
    for row in result.rows:
        if row.status != "stored":
            outcome.add_failure(f"row {row.row}", row.error, row=row.row, id=row.id, status=row.status)
            continue
        for ref in row.images:
            outcome.add_image(ref, cached=row.served, row=row.row, id=row.id)


def _chain(outcome: Outcome, result: Any) -> None:
    for step in result.steps:
        if step.status != "stored":
            if step.status != "skipped":
                what = f"row {step.row} step {step.step}"
                outcome.add_failure(what, step.error, row=step.row, step=step.step, status=step.status)
            continue
        for ref in step.images:
            outcome.add_image(
                ref, cached=step.served, row=step.row, id=step.id, step=step.step, source=step.source
            )
