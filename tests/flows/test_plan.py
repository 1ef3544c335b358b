"""``plan_only`` and the per-run budget checked against the plan: zero requests for a plan, its
estimate equal to what the real run bills, a budget below the plan refused before the first request."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from prefect_gpt_image.flows import BatchResult, ImageOptions, batch_generate
from prefect_gpt_image.flows.plan import RunPlan
from tests.support.judge import ledger_cost
from tests.support.prefect import flow_run_artifacts
from tests.support.sandbox import billed_images, ledger, sandbox_requests

from .conftest import run, saved_settings

OPTIONS = ImageOptions(size="1024x1024", quality="low")


def test_batch_plan_pays_nothing_and_matches_the_real_run(env: Any) -> None:
    sandbox, _, storage = env
    prompts = ["a red boat", "a blue boat", "a green boat", "   "]
    early = run(batch_generate(prompts=prompts[:1], options=OPTIONS, storage=storage, return_state=True))
    assert early.is_completed() and billed_images(sandbox) == 1

    planned = run(
        batch_generate(
            prompts=prompts, options=OPTIONS, n=2, plan_only=True, storage=storage, return_state=True
        )
    )
    # one row is cached with n=1 only: with n=2 it is a new request; the empty prompt is invalid
    assert planned.is_completed(), planned.message
    plan: RunPlan = planned.result()  # type: ignore[assignment]
    assert (plan.to_make, plan.images, plan.cache_hits, plan.invalid) == (3, 6, 0, 1)
    assert len(sandbox_requests(sandbox)) == 1  # the plan sent nothing
    again = run(
        batch_generate(
            prompts=prompts[:3], options=OPTIONS, plan_only=True, storage=storage, return_state=True
        )
    )
    plan = again.result()  # type: ignore[assignment]
    assert (plan.to_make, plan.images, plan.cache_hits, plan.invalid) == (2, 2, 1, 0)
    assert "2 call(s) to make" in (again.message or "")
    table = next(
        a for a in flow_run_artifacts(again.state_details.flow_run_id) if a["key"] == "gpt-image-plan"
    )
    rows = json.loads(table["data"]) if isinstance(table["data"], str) else table["data"]
    assert [r["status"] for r in rows] == ["cached", "call", "call"]
    assert len(sandbox_requests(sandbox)) == 1

    before = {e["request_id"] for e in ledger(sandbox)["entries"]}
    real = run(batch_generate(prompts=prompts[:3], options=OPTIONS, storage=storage, return_state=True))
    result: BatchResult = real.result()  # type: ignore[assignment]
    assert result.stored == 3 and billed_images(sandbox) == 1 + plan.images
    # the plan's estimate is what the sandbox charged the run, at the sandbox's own price
    charged = {e["request_id"] for e in ledger(sandbox)["entries"]} - before
    assert abs(ledger_cost(sandbox, charged) - plan.cost) < 1e-9


def test_batch_over_budget_fails_before_the_first_request(
    env: Any, make_sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox, _, storage = env
    prompts = [f"a kite number {i}" for i in range(4)]
    state = run(
        batch_generate(
            prompts=prompts,
            options=OPTIONS,
            storage=storage,
            settings_block=saved_settings(max_images_per_run=3),
            return_state=True,
        )
    )
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert "max_images_per_run=3" in message and "4 call(s) to make for 4 image(s)" in message
    assert sandbox_requests(sandbox) == []
    keys = {a["key"] for a in flow_run_artifacts(state.state_details.flow_run_id)}
    assert "gpt-image-plan" in keys

    # within the cost cap (4 x $0.01 <= $0.05, at a gateway charging $0.01) the batch runs, pays
    # the planned images, and the gateway's charge stays under the cap
    sandbox = make_sandbox(latency=0.05, price_per_image=0.01)
    monkeypatch.setenv("GPT_IMAGE_BASE_URL", sandbox.base_url)
    within = run(
        batch_generate(
            prompts=prompts,
            options=OPTIONS,
            storage=storage,
            settings_block=saved_settings(price_per_image=0.01, max_cost_per_run=0.05),
            return_state=True,
        )
    )
    assert within.is_completed(), within.message
    assert billed_images(sandbox) == 4 and ledger_cost(sandbox) <= 0.05 + 1e-9


def test_a_cap_crossed_mid_run_by_paid_retries_never_lets_spend_pass_it(env: Any) -> None:
    """The plan fits the cap exactly (8 rows, 8 images' price), then concurrent rows cross it
    mid-run: their first attempts are billed and cut off (dropped connections), and with
    ``retry_outcome_unknown`` each retry would pay again. A retry that would pass the cap is
    refused before it is sent; the ledger (the sandbox's own prices) never passes the cap."""
    sandbox, _, storage = env
    prompts = [f"a lantern number {i}" for i in range(8)]
    cap = 8 * 0.0377
    sandbox.script_faults(["drop", "drop", "drop"])  # billed, never delivered
    state = run(
        batch_generate(
            prompts=prompts,
            options=OPTIONS,
            storage=storage,
            settings_block=saved_settings(
                max_cost_per_run=cap,
                retry_outcome_unknown=True,
                initial_backoff_seconds=0.01,
                concurrency_limit=4,
            ),
            return_state=True,
        )
    )
    assert ledger_cost(sandbox) <= cap + 1e-9, (ledger_cost(sandbox), cap)
    # the cap was reached, not stepped around: every image it allows was billed, and the three
    # rows whose retries it refused failed naming it
    entries = ledger(sandbox)["entries"]
    assert len(entries) == 8 and sum(not e["delivered"] for e in entries) == 3
    assert state.is_failed()
    result: BatchResult = state.result(raise_on_failure=False)  # type: ignore[assignment]
    failed = [row for row in result.rows if row.status != "stored"]
    assert len(failed) == 3 and all("max_cost_per_run" in (row.error or "") for row in failed), failed
    # Which rows the cap stops depends on timing (a dropped row's retry may reserve the last of
    # the budget before a later row's first attempt): every stored row got exactly one delivered
    # image, a failed row none, and no prompt was billed more than its first attempt and one retry.
    prompt_of = {r["request_id"]: r["fields"].get("prompt") for r in sandbox_requests(sandbox)}
    delivered = Counter(str(prompt_of.get(e["request_id"])) for e in entries if e["delivered"])
    billed = Counter(str(prompt_of.get(e["request_id"])) for e in entries)
    assert {row.prompt: delivered[row.prompt] for row in result.rows} == {
        row.prompt: 1 if row.status == "stored" else 0 for row in result.rows
    }, (delivered, [(row.prompt, row.status) for row in result.rows])
    assert set(billed) <= set(prompts) and max(billed.values()) <= 2, billed
