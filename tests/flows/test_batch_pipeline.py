"""``batch_pipeline``: a manifest's rows each run generate → mask edit → blend; exactly one call
per row and step, masks and every reference sent, lineage from each final image back to its
generation; bad rows refused before any spend; the plan's estimate is what the run bills."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

from prefect_gpt_image.flows import ChainResult, MaskRegion, RunPlan, batch_pipeline, build_mask
from tests.support.images import png_bytes
from tests.support.prefect import flow_run_artifacts
from tests.support.sandbox import billed_images, sandbox_requests

from .conftest import run

REGION = {"left": 0, "top": 0, "right": 1, "bottom": 0.25}


def _steps(logo: str) -> list[dict[str, Any]]:
    return [
        {"kind": "generate", "prompt": "{product} on a {surface}", "options": {"size": "1024x1024"}},
        {"kind": "edit", "name": "backdrop", "prompt": "a {backdrop} backdrop", "region": REGION},
        {"kind": "blend", "prompt": "add the frame and the logo", "references": ["frame", logo]},
    ]


def _manifest(tmp_path: Path, rows: list[dict[str, str]]) -> Path:
    path = tmp_path / "products.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _parts(request: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [f for f in request["files"] if f["field"] == name]


def test_batch_pipeline_ten_rows_three_steps(env: Any, tmp_path: Path) -> None:
    sandbox, _, storage = env
    logo = tmp_path / "logo.png"
    logo.write_bytes(png_bytes((64, 64), "gold"))
    frames = []
    for i in range(2):
        frame = tmp_path / f"frame{i}.png"
        frame.write_bytes(png_bytes((96, 96), ("black", "white")[i]))
        frames.append(frame)
    rows = [
        {
            "id": f"sku{i}",
            "product": f"mug {i}",
            "surface": "desk",
            "backdrop": "blue",
            "frame": str(frames[i % 2]),
        }
        for i in range(10)
    ]
    manifest = _manifest(tmp_path, rows)
    kwargs: dict[str, Any] = {"manifest": str(manifest), "steps": _steps(str(logo)), "storage": storage}
    kwargs["options"] = {"quality": "low"}

    planned = run(batch_pipeline(**kwargs, plan_only=True, return_state=True))
    plan: RunPlan = planned.result()  # type: ignore[assignment]
    assert (plan.to_make, plan.images, plan.cache_hits, plan.invalid) == (30, 30, 0, 0)
    assert sandbox_requests(sandbox) == []

    state = run(batch_pipeline(**kwargs, return_state=True))
    assert state.is_completed(), state.message
    result: ChainResult = state.result()  # type: ignore[assignment]
    assert billed_images(sandbox) == plan.images == 30
    requests = sandbox_requests(sandbox)
    assert len(requests) == 30
    by_endpoint = [r["endpoint"].rsplit("/", 1)[-1] for r in requests]
    assert by_endpoint.count("generations") == 10 and by_endpoint.count("edits") == 20
    mask_sha = hashlib.sha256(build_mask(1024, 1024, MaskRegion(**REGION))).hexdigest()
    edits = [r for r in requests if r["fields"]["prompt"] == "a blue backdrop"]
    assert len(edits) == 10 and all(_parts(r, "mask")[0]["sha256"] == mask_sha for r in edits)
    blends = [r for r in requests if r["fields"]["prompt"] == "add the frame and the logo"]
    logo_sha = hashlib.sha256(logo.read_bytes()).hexdigest()
    frame_shas = {hashlib.sha256(f.read_bytes()).hexdigest() for f in frames}
    for blend in blends:
        images = _parts(blend, "image[]")
        assert len(images) == 3 and _parts(blend, "mask") == []
        assert images[1]["sha256"] in frame_shas and images[2]["sha256"] == logo_sha
    # lineage: final image -> its edit -> its generation, for every row
    for number, steps in result.rows().items():
        generated, edited, blended = (s.images[0] for s in steps)
        assert [s.step for s in steps] == ["generate", "backdrop", "blend"]
        assert blended.parents[0] == edited.sha256 and edited.parents[0] == generated.sha256
        assert result.final(number) == blended and steps[0].id == f"sku{number - 1}"
        assert generated.prompt == f"mug {number - 1} on a desk"
    artifacts = flow_run_artifacts(state.state_details.flow_run_id)
    table = next(a for a in artifacts if a["key"] == "gpt-image-batch-pipeline")
    table_rows = json.loads(table["data"]) if isinstance(table["data"], str) else table["data"]
    assert len(table_rows) == 30 and {r["status"] for r in table_rows} == {"stored"}
    chains = next(a for a in artifacts if a["key"] == "gpt-image-batch-pipeline-chains")
    assert "## row 1 (sku0)" in chains["data"] and "### 3. blend" in chains["data"]

    again = run(batch_pipeline(**kwargs, return_state=True))
    assert again.is_completed() and "0 step(s) made, 30 found in the store" in (again.message or "")
    assert len(sandbox_requests(sandbox)) == 30


def test_batch_pipeline_refuses_bad_rows_before_any_spend(env: Any, tmp_path: Path) -> None:
    sandbox, _, storage = env
    logo = tmp_path / "logo.png"
    logo.write_bytes(png_bytes((64, 64), "gold"))
    rows = [
        {"product": "a lamp", "surface": "shelf", "backdrop": "red", "frame": str(logo)},
        {"product": "a vase", "surface": "shelf", "frame": str(logo)},  # no backdrop: step 2's template
        {"product": "x" * 32_000, "surface": "y", "backdrop": "red", "frame": str(logo)},  # over-long
        {"product": "a cup", "surface": "shelf", "backdrop": "red", "frame": str(tmp_path / "none.png")},
        {"product": "a kite [sandbox:block]", "surface": "shelf", "backdrop": "red", "frame": str(logo)},
    ]
    manifest = _manifest(tmp_path, rows)
    state = run(
        batch_pipeline(
            manifest=str(manifest),
            steps=_steps(str(logo)),
            options={"quality": "low"},
            storage=storage,
            return_state=True,
        )
    )
    assert state.is_failed() and "4 of 5 rows failed" in (state.message or "")
    result: ChainResult = state.result(raise_on_failure=False)  # type: ignore[assignment]
    invalid = {s.row: s for s in result.steps if s.status == "invalid"}
    assert invalid[2].step == "backdrop" and "row 2 has no column 'backdrop'" in (invalid[2].error or "")
    assert invalid[3].step == "generate" and "at most 32000" in (invalid[3].error or "")
    assert invalid[4].step == "blend" and "blend.references[0]" in (invalid[4].error or "")
    # row 5 passed the plan; its generation was refused by the API: its row fails, the others run
    row5 = [s for s in result.steps if s.row == 5]
    assert [s.status for s in row5] == ["failed", "skipped", "skipped"] and row5[
        0
    ].error_type == "ModerationError"
    assert [s.status for s in result.steps if s.row == 1] == ["stored"] * 3
    assert len(sandbox_requests(sandbox)) == 4 and billed_images(sandbox) == 3  # row 1, and row 5's refusal
    unknown = run(
        batch_pipeline(
            manifest=str(manifest),
            steps=[{"kind": "edit", "prompt": "x", "image": "nowhere-step"}],
            storage=storage,
            return_state=True,
        )
    )
    assert unknown.is_failed() and len(sandbox_requests(sandbox)) == 4


def test_the_shipped_catalogue_deployment_runs_its_sample_manifest(env: Any) -> None:
    import yaml  # type: ignore[import-untyped]

    sandbox, _, storage = env
    root = Path(__file__).resolve().parents[2]
    specs = yaml.safe_load((root / "deployments" / "prefect.yaml").read_text())["deployments"]
    params = dict(next(s for s in specs if s["name"] == "catalogue")["parameters"])
    for block in ("credentials_block", "settings_block", "storage"):
        params.pop(block)
    params["manifest"] = str(root / params["manifest"])
    plan: RunPlan = batch_pipeline(**{**params, "plan_only": True}, storage=storage)  # type: ignore[assignment]
    state = run(batch_pipeline(**params, storage=storage, return_state=True))
    assert state.is_completed(), state.message
    assert billed_images(sandbox) == plan.images == 6
