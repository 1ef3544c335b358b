"""Running a batch flow (``batch_generate``, ``batch_edit``, ``batch_pipeline``) for a verb, in
this process, and turning its result (or plan) into the verb's :class:`~.report.Outcome`.

The flows run as they would in a script: on the configured Prefect server, else Prefect's
ephemeral one (started for the run). A row or step served from the store is told from a paid one by
its ``served``.
"""

from __future__ import annotations

import argparse
from typing import Any

from .exits import FAILED, UsageError
from .report import Outcome, progress
from .session import Session, open_session
from .single import plan_document

__all__ = ["flow_options", "local_path", "run_flow"]


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


def run_flow(command: str, flow: Any, kwargs: dict[str, Any], args: argparse.Namespace) -> Outcome:
    """Run ``flow(**kwargs)`` with the options every batch flow takes (planning only with
    ``plan``) in the command's session, and describe what it made."""
    with open_session(args) as session:
        return _run_flow(command, flow, kwargs, session, args)


def _run_flow(
    command: str, flow: Any, kwargs: dict[str, Any], session: Session, args: argparse.Namespace
) -> Outcome:
    from prefect_gpt_image.flows import BatchResult, ChainResult, RunPlan

    common = {
        "variant": args.variant,
        "max_parallel": args.max_parallel,
        "plan_only": args.plan,
        "storage": args.storage,
        "credentials_block": args.credentials_block,
        "settings_block": args.settings_block,
    }
    with progress(f"{command}: running the flow", as_json=args.json):
        state = flow(**kwargs, **common, return_state=True)
    data = state.result(raise_on_failure=False)
    if isinstance(data, BaseException):
        raise data
    outcome = Outcome(f"plan {command}" if args.plan else command)
    if isinstance(data, RunPlan):
        outcome.plan = plan_document(data)
    elif isinstance(data, BatchResult):
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
