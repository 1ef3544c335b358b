"""Cost you can trust, judged by the sandbox's ledger: a rerun says it paid nothing and names the
rows the store served; on an endpoint billing tokens (the sandbox with token prices, as OpenAI's
API) the manifests hold what each image actually cost, from the answer's usage; a plan's estimate
is the sum of the price model's prices for each call's size, quality and n; and a cap between two
plans' estimates stops the larger before any request."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from prefect_gpt_image.api.pricing import OPENAI_GPT_IMAGE_2, price_model_for
from prefect_gpt_image.blocks import GptImageSettings
from prefect_gpt_image.calls import read_manifest
from prefect_gpt_image.flows import (
    BatchResult,
    EditStep,
    ImageOptions,
    MaskRegion,
    batch_generate,
    image_pipeline,
)
from prefect_gpt_image.flows.params import load_storage
from prefect_gpt_image.flows.plan import RunPlan
from tests.support.judge import ledger_cost
from tests.support.prefect import flow_run_artifacts
from tests.support.sandbox import billed_images, ledger, sandbox_requests

from .conftest import run, saved_settings

OPTIONS = ImageOptions(size="1024x1024", quality="low")
# Token prices of the sandbox playing OpenAI's API: not OpenAI's published ones, so a run priced
# with the published figures (or per image) instead of the settings' cannot match the ledger.
RATES = (3.0, 7.0, 25.0)


def _table(flow_run_id: Any, key: str) -> list[dict[str, Any]]:
    artifact = next(a for a in flow_run_artifacts(flow_run_id) if a["key"] == key)
    data = artifact["data"]
    return list(json.loads(data) if isinstance(data, str) else data)


def _artifact(flow_run_id: Any, key: str) -> dict[str, Any]:
    return next(a for a in flow_run_artifacts(flow_run_id) if a["key"] == key)


def test_a_rerun_pays_nothing_and_names_the_rows_the_store_served(env: Any) -> None:
    sandbox, _, storage = env
    prompts = ["a red tram", "a blue tram", "a green tram"]
    first = run(batch_generate(prompts=prompts, options=OPTIONS, storage=storage, return_state=True))
    assert first.is_completed(), first.message
    paid = ledger_cost(sandbox)
    assert paid > 0 and billed_images(sandbox) == 3
    assert f"paid ${paid:.4f} for 3 images; 0 served from the store" in (first.message or "")

    requests = len(sandbox_requests(sandbox))
    rerun = run(batch_generate(prompts=prompts, options=OPTIONS, storage=storage, return_state=True))
    assert rerun.is_completed(), rerun.message
    assert len(sandbox_requests(sandbox)) == requests  # nothing sent, nothing billed
    message = rerun.message or ""
    assert f"paid $0 for 0 images; 3 served from the store (worth ${paid:.4f})" in message
    result: BatchResult = rerun.result()  # type: ignore[assignment]
    assert result.cost == 0 and all(r.served and r.cost == 0 for r in result.rows)
    rows = _table(rerun.state_details.flow_run_id, "gpt-image-batch")
    assert [(r["prompt"], r["served"], r["cost"]) for r in rows] == [(p, True, 0) for p in prompts]
    description = _artifact(rerun.state_details.flow_run_id, "gpt-image-batch")["description"]
    assert "paid $0 for 0 images; 3 served from the store" in description and "estimated $0" in description

    # a rerun with one new row pays for that row only, and the table says which rows were served
    more = run(
        batch_generate(prompts=[*prompts, "a gold tram"], options=OPTIONS, storage=storage, return_state=True)
    )
    new_cost = ledger_cost(sandbox) - paid
    assert billed_images(sandbox) == 4
    assert f"paid ${new_cost:.4f} for 1 image; 3 served from the store" in (more.message or "")
    rows = _table(more.state_details.flow_run_id, "gpt-image-batch")
    assert [r["served"] for r in rows] == [True, True, True, False]
    assert rows[3]["cost"] == pytest.approx(new_cost, abs=1e-4)

    # the pipeline ends with the same sentence, and a cached rerun of it says it paid nothing
    edit = EditStep(prompt="add a moon", region=MaskRegion(left=0, top=0, right=1, bottom=0.3))
    before = ledger_cost(sandbox)
    made = image_pipeline("a night tram", options=OPTIONS, edit=edit, storage=storage, return_state=True)
    pipeline_paid = ledger_cost(sandbox) - before
    assert f"paid ${pipeline_paid:.4f} for 2 images; 0 served from the store" in (made.message or "")
    again = image_pipeline("a night tram", options=OPTIONS, edit=edit, storage=storage, return_state=True)
    assert ledger_cost(sandbox) == before + pipeline_paid
    assert f"paid $0 for 0 images; 2 served from the store (worth ${pipeline_paid:.4f})" in (
        again.message or ""
    )


def test_an_endpoint_billing_tokens_is_paid_by_usage_and_the_manifest_says_so(
    env: Any, make_sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, storage = env
    sandbox = make_sandbox(latency=0.05, token_prices=RATES)
    monkeypatch.setenv("GPT_IMAGE_BASE_URL", sandbox.base_url)
    settings = saved_settings(
        price_model="tokens",
        text_input_usd_per_million=RATES[0],
        image_input_usd_per_million=RATES[1],
        image_output_usd_per_million=RATES[2],
    )
    options = ImageOptions(size="1536x1024", quality="medium")
    edit = EditStep(prompt="add a red balloon", region=MaskRegion(left=0, top=0, right=1, bottom=0.3))
    state = image_pipeline(
        "a harbour at noon",
        options=options,
        edit=edit,
        storage=storage,
        settings_block=settings,
        return_state=True,
    )
    assert state.is_completed(), state.message
    entries = ledger(sandbox)["entries"]
    assert [e["billing"] for e in entries] == ["tokens", "tokens"]
    assert entries[1]["usage"]["input_tokens_details"]["image_tokens"] > 0  # the edit's input image
    total = ledger_cost(sandbox)
    assert f"paid ${total:.4f} for 2 images; 0 served from the store" in (state.message or "")

    result = state.result()
    store = run_store(storage)
    for entry, ref in zip(entries, [result.generated[0], result.edited[0]], strict=True):
        manifest = read_manifest(store, ref.sha256, ref.format)
        assert manifest is not None and manifest["request_id"] == entry["request_id"]
        # what was paid is what the ledger charged by the usage of the answer ...
        assert manifest["cost_source"] == "usage"
        assert manifest["cost"] == pytest.approx(entry["cost"], rel=1e-9) and ref.cost == manifest["cost"]
        assert manifest["usage"] == entry["usage"]
        assert manifest["price_model"] == "openai-gpt-image-2+settings@settings"
        # ... and the estimate stays the model's, which for this size differs from the usage
        assert manifest["cost_estimate"] != pytest.approx(manifest["cost"], rel=1e-3)
    first = read_manifest(store, result.generated[0].sha256, "png")
    assert first is not None
    prompt_tokens = math.ceil(len("a harbour at noon") / 4)
    assert first["cost_estimate"] == pytest.approx((prompt_tokens * RATES[0] + 1367 * RATES[2]) / 1e6)


def run_store(storage: str) -> Any:
    import asyncio

    return asyncio.run(load_storage(storage))


def test_the_price_model_follows_the_endpoint_and_the_settings() -> None:
    settings = GptImageSettings()
    openai = settings.prices("https://api.openai.com/v1")
    gateway = settings.prices("https://cn.crazyrouter.com/v1")
    assert openai.by_tokens and openai.label == "openai-gpt-image-2@2026-04-21"
    assert not gateway.by_tokens and gateway.label == "crazyrouter-gpt-image-2@2026-06"
    assert settings.prices("http://127.0.0.1:8099/v1") == gateway  # the sandbox stands in for the gateway
    assert price_model_for("https://api.openai.com/v1") == OPENAI_GPT_IMAGE_2
    # OpenAI's published examples: $0.006 / $0.053 / $0.211 for a 1024x1024 image
    for quality, dollars in (("low", 0.006), ("medium", 0.053), ("high", 0.211)):
        assert openai.estimate(size="1024x1024", quality=quality) == pytest.approx(dollars, abs=5e-4)
    assert gateway.estimate(n=3, size="1536x1024", quality="high") == pytest.approx(3 * 0.0377)
    forced = GptImageSettings(price_model="tokens", image_output_usd_per_million=60.0)
    doubled = forced.prices("https://cn.crazyrouter.com/v1")
    assert doubled.label == "openai-gpt-image-2+settings@settings"
    assert doubled.estimate(size="1024x1024", quality="high") == pytest.approx(7024 * 60 / 1e6)
    cheaper = GptImageSettings(price_per_image=0.02).prices("https://api.openai.com/v1")
    assert cheaper == openai  # a per-image price does not change a token model


# A manifest mixing sizes, qualities and n; quality auto is priced as high (an upper bound).
MIXED = [
    ("a low square kite", "1024x1024", "low", 1),
    ("a medium wide kite", "1536x1024", "medium", 2),
    ("a high tall kite", "1024x1536", "high", 1),
    ("an auto square kite", "1024x1024", "auto", 3),
    ("a big low kite", "2048x2048", "low", 1),
]
# OpenAI's output tokens per image (the figures of the price model, written out here)
TOKENS = {
    ("1024x1024", "low"): 196,
    ("1536x1024", "medium"): 1367,
    ("1024x1536", "high"): 5500,
    ("1024x1024", "auto"): 7024,
    ("2048x2048", "low"): 196 * 4,
}


def _manifest(tmp_path: Any, rows: list[tuple[str, str, str, int]]) -> str:
    path = tmp_path / "kites.csv"
    lines = ["prompt,size,quality,n"] + [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_a_plan_of_mixed_sizes_and_qualities_costs_the_sum_of_the_model_prices(
    env: Any, tmp_path: Any
) -> None:
    sandbox, _, storage = env
    manifest = _manifest(tmp_path, MIXED)
    settings = saved_settings(price_model="tokens")
    state = run(
        batch_generate(
            manifest=manifest, plan_only=True, storage=storage, settings_block=settings, return_state=True
        )
    )
    assert state.is_completed(), state.message
    plan: RunPlan = state.result()  # type: ignore[assignment]
    each = [
        (n * TOKENS[(size, quality)] * 30.0 + math.ceil(len(prompt) / 4) * 5.0) / 1e6
        for prompt, size, quality, n in MIXED
    ]
    assert [c.estimate for c in plan.calls] == pytest.approx(each)
    assert plan.cost == pytest.approx(sum(each))
    assert f"estimated ${sum(each):.4f}" in (state.message or "")
    rows = _table(state.state_details.flow_run_id, "gpt-image-plan")
    assert [r["cost"] for r in rows] == pytest.approx([round(c, 4) for c in each])
    # the gateway's flat price for the same manifest: the images times its price
    flat = run(batch_generate(manifest=manifest, plan_only=True, storage=storage, return_state=True))
    assert flat.result().cost == pytest.approx(8 * 0.0377)  # type: ignore[union-attr]
    assert sandbox_requests(sandbox) == []


def test_a_cap_between_two_plans_stops_the_larger_before_any_request(env: Any, tmp_path: Any) -> None:
    sandbox, _, storage = env
    prompts = ["a paper boat", "a paper crane", "a paper star"]
    cheap = [(p, "1024x1024", "low", 1) for p in prompts]
    dear = [(p, "1024x1024", "high", 1) for p in prompts]

    manifests = {}
    for name, rows in (("cheap", cheap), ("dear", dear)):
        (tmp_path / name).mkdir()
        manifests[name] = _manifest(tmp_path / name, rows)

    def batch(name: str, settings: str, plan_only: bool = False) -> Any:
        return run(
            batch_generate(
                manifest=manifests[name],
                plan_only=plan_only,
                storage=storage,
                settings_block=settings,
                return_state=True,
            )
        )

    tokens = saved_settings(price_model="tokens")
    low, high = (float(batch(name, tokens, plan_only=True).result().cost) for name in ("cheap", "dear"))
    assert low < high
    cap = saved_settings(price_model="tokens", max_cost_per_run=(low + high) / 2)
    refused = batch("dear", cap)
    assert sandbox_requests(sandbox) == []  # refused before any request
    assert refused.is_failed()
    assert "max_cost_per_run" in str(refused.result(raise_on_failure=False))
    allowed = batch("cheap", cap)
    assert allowed.is_completed(), allowed.message
    assert billed_images(sandbox) == 3
