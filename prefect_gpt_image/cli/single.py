"""One call from the command line (``generate``, ``edit`` and their plans), made by the call
engine itself (:func:`prefect_gpt_image.calls.run_image_call`: cache record, lock, spool, budget,
retries) outside any flow run, so it starts at once.

With no Prefect API configured, the call holds only this process's concurrency gate
(:func:`~prefect_gpt_image.calls.process_limits`): reading the global limit would start Prefect's
ephemeral server (about 10 s) for one call. With one configured, it holds a slot of the global
limit as every flow's call does.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from .report import Outcome, progress
from .session import Session, prefect_api_configured

if TYPE_CHECKING:
    from prefect_gpt_image.api import EditRequest, GenerateRequest
    from prefect_gpt_image.calls import CallResult

__all__ = ["make_call", "plan_call"]


def make_call(
    command: str, request: GenerateRequest | EditRequest, session: Session, *, variant: int, as_json: bool
) -> Outcome:
    """Make (or find in the store) ``request``'s images; the outcome lists them."""
    from prefect_gpt_image.calls import call_prices

    cost = call_prices(session.credentials, session.settings).estimate_request(request)
    what = f"{command}: {request.n} image{'s' if request.n != 1 else ''}, about ${cost:.4f}"
    with progress(what, as_json=as_json):
        result = asyncio.run(_call(request, session, variant))
    outcome = Outcome(command)
    for ref in result.refs:
        outcome.add_image(ref, cached=result.cached)
    return outcome


async def _call(request: GenerateRequest | EditRequest, session: Session, variant: int) -> CallResult:
    from prefect_gpt_image.calls import aclose_clients, process_limits, release_idle_leases, run_image_call

    server = prefect_api_configured()
    limits = contextlib.nullcontext() if server else process_limits()
    try:
        with limits:
            return await run_image_call(
                request,
                variant=variant,
                refresh_cache=False,
                credentials=session.credentials,
                settings=session.settings,
                store=session.store,
                on_partial=None,
            )
    finally:
        await aclose_clients()
        if server:
            await release_idle_leases(session.settings.concurrency_limit_name)


def plan_call(
    command: str, request: GenerateRequest | EditRequest, session: Session, *, variant: int
) -> Outcome:
    """The plan of one call: served from the store's cache record, or a call of ``n`` images at
    the endpoint's price model (:func:`~prefect_gpt_image.calls.call_prices`). Nothing is sent."""
    from prefect_gpt_image.calls import cache_key, call_prices, read_record
    from prefect_gpt_image.flows import PlannedCall, RunPlan

    prices = call_prices(session.credentials, session.settings)
    refs = read_record(session.store, cache_key(request, variant))
    step = command.split()[-1]
    status = "cached" if refs else "call"
    estimate = prices.estimate_request(request)
    call = PlannedCall(row=1, step=step, status=status, images=request.n, estimate=estimate)
    outcome = Outcome(command)
    outcome.plan = plan_document(RunPlan(calls=[call], price_model=prices.label))
    return outcome


def plan_document(plan: object) -> dict[str, object]:
    """A RunPlan as the ``plan`` of the JSON document."""
    from prefect_gpt_image.flows import RunPlan

    assert isinstance(plan, RunPlan)
    return {
        "calls": plan.to_make,
        "images": plan.images,
        "cache_hits": plan.cache_hits,
        "invalid": plan.invalid,
        "estimated_cost": round(plan.cost, 6),
        "price_model": plan.price_model,
        "summary": plan.summary(),
        "rows": plan.table(),
    }
