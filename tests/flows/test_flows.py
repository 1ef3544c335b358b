"""The flows on a real Prefect server, with the sandbox and a real S3 server (SeaweedFS)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from prefect_gpt_image.flows import (
    BatchResult,
    BlendStep,
    EditStep,
    ImageOptions,
    MaskRegion,
    PipelineResult,
    batch_generate,
    image_pipeline,
)
from tests.support.images import decode, png_bytes
from tests.support.prefect import flow_run_artifacts, flow_run_logs
from tests.support.s3 import manifest_in_bucket
from tests.support.sandbox import billed_images, sandbox_requests

from .conftest import KEY, run


def bucket_keys(local_s3: Any, uri: str) -> set[str]:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    listing = local_s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return {obj["Key"] for obj in listing.get("Contents", [])}


def test_pipeline_generate_edit_blend_into_s3(env: Any, tmp_path: Path) -> None:
    sandbox, local_s3, storage = env
    reference = tmp_path / "style.png"
    reference.write_bytes(png_bytes((512, 512), "orange"))
    state = run(
        image_pipeline(
            "a lighthouse at dawn",
            options=ImageOptions(size="1024x1024", quality="low"),
            edit=EditStep(prompt="add a rainbow", region=MaskRegion(left=0, top=0, right=1.0, bottom=0.25)),
            blend=BlendStep(prompt="in the style of the reference", references=[str(reference)]),
            storage=storage,
            return_state=True,
        )
    )
    assert state.is_completed(), state.message
    result: PipelineResult = state.result()  # type: ignore[assignment]
    generated, edited, blended = result.generated[0], result.edited[0], result.blended[0]  # type: ignore[index]
    assert billed_images(sandbox) == 3
    # lineage: the edit came from the generated image and the mask; the blend from the edit and the reference
    assert edited.parents[0] == generated.sha256 and len(edited.parents) == 2
    assert blended.parents[0] == edited.sha256 and len(blended.parents) == 2
    # the mask the flow built: alpha 0 over the top quarter, the image's size
    edit_request = sandbox_requests(sandbox)[1]
    assert [f["field"] for f in edit_request["files"]] == ["image[]", "mask"]
    # edited pixels changed inside the region and kept outside it
    before = decode(local_s3.client().get_object(**_loc(generated.uri))["Body"].read()).convert("RGB")
    after = decode(local_s3.client().get_object(**_loc(edited.uri))["Body"].read()).convert("RGB")
    assert before.getpixel((512, 100)) != after.getpixel((512, 100))
    assert before.getpixel((512, 900)) == after.getpixel((512, 900))
    keys = bucket_keys(local_s3, storage)
    for ref in (generated, edited, blended):
        assert f"flows/images/{ref.sha256}.png" in keys
        manifest = manifest_in_bucket(local_s3, ref.uri)
        assert manifest is not None and manifest["sha256"] == ref.sha256, ref
        assert f"flows/cache/{manifest['cache_key']}.json" in keys
    assert manifest["prompt"] == "in the style of the reference"
    assert manifest["request_id"] == blended.request_id
    # artifacts: the chain card with every step's image, and loadable image links
    artifacts = flow_run_artifacts(state.state_details.flow_run_id)
    chain = [a for a in artifacts if a["key"] == "gpt-image-pipeline"]
    assert chain and all(ref.sha256[:16] in chain[0]["data"] for ref in (generated, edited, blended))
    images = [a for a in artifacts if a["type"] == "image"]
    assert sorted(a["key"] for a in images) == sorted(
        f"gpt-image-{ref.sha256[:16]}" for ref in (generated, edited, blended)
    )  # one image artifact per step's image, no more, no fewer
    for artifact in images:
        assert decode(httpx.get(artifact["data"]).content).size == (1024, 1024)
    assert KEY not in json.dumps(artifacts)


def _loc(uri: str) -> dict[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return {"Bucket": bucket, "Key": key}


def test_pipeline_rerun_pays_nothing(env: Any) -> None:
    sandbox, _, storage = env
    kwargs: dict[str, Any] = {
        "options": ImageOptions(size="1024x1024"),
        "edit": EditStep(prompt="make it night", region=MaskRegion(left=0.5, top=0.5, right=1, bottom=1)),
        "storage": storage,
    }
    first: PipelineResult = image_pipeline("a quiet harbour", **kwargs)
    paid = billed_images(sandbox)
    second: PipelineResult = image_pipeline("a quiet harbour", **kwargs)
    assert paid == 2 and billed_images(sandbox) == 2 and len(sandbox_requests(sandbox)) == 2
    assert second.generated == first.generated and second.edited == first.edited


@pytest.mark.parametrize(
    "kwargs,text",
    [
        ({"options": ImageOptions(output_format="png", output_compression=50)}, "output_compression"),
        (
            {
                "options": ImageOptions(size="1024x1024"),
                "edit": EditStep(prompt="x", region=MaskRegion(left=0, top=0, right=2000, bottom=10)),
            },
            "outside the 1024x1024 image",
        ),
        ({"edit": EditStep(prompt="x", mask_uri="/nowhere/mask.png")}, "No such file"),
        ({"blend": BlendStep(prompt="x", references=["gs://bucket/ref.png"])}, "blend.references[0]"),
    ],
    ids=["compression-with-png", "region-outside", "missing-mask", "bad-reference-uri"],
)
def test_pipeline_refuses_bad_input_before_paying(env: Any, kwargs: dict[str, Any], text: str) -> None:
    sandbox, _, storage = env
    state = run(image_pipeline("a cat", storage=storage, return_state=True, **kwargs))
    assert state.is_failed()
    assert text in (state.message or "") + str(state.result(raise_on_failure=False))
    assert sandbox_requests(sandbox) == []


def test_batch_from_s3_manifest_with_overrides_and_failures(env: Any) -> None:
    sandbox, local_s3, storage = env
    rows = [
        {"prompt": "a red kite", "size": "1536x1024", "id": "r1"},
        {"prompt": "a green kite", "quality": "low", "id": "r2"},
        {"prompt": "a kite [sandbox:block]", "id": "r3"},  # refused by moderation (API side)
        {"prompt": "a blue kite", "size": "1000x1000", "id": "r4"},  # invalid: never sent
        {"prompt": "two kites", "n": "2", "id": "r5"},
    ]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["prompt", "size", "quality", "n", "id"])
    writer.writeheader()
    writer.writerows(rows)
    bucket = storage.removeprefix("s3://").split("/")[0]
    local_s3.client().put_object(Bucket=bucket, Key="manifests/kites.csv", Body=buf.getvalue().encode())

    state = run(
        batch_generate(
            manifest=f"s3://{bucket}/manifests/kites.csv",
            options=ImageOptions(size="1024x1024"),
            storage=storage,
            return_state=True,
        )
    )
    assert state.is_failed()
    assert "2 of 5 rows failed" in (state.message or "")
    assert "ModerationError: 1" in (state.message or "") and "invalid: 1" in (state.message or "")
    result: BatchResult = state.result(raise_on_failure=False)  # type: ignore[assignment]
    by_id = {r.id: r for r in result.rows}
    assert [by_id[i].status for i in ("r1", "r2", "r3", "r4", "r5")] == [
        "stored",
        "stored",
        "failed",
        "invalid",
        "stored",
    ]
    assert (by_id["r1"].images[0].width, by_id["r1"].images[0].height) == (1536, 1024)
    assert len(by_id["r5"].images) == 2 and by_id["r3"].request_id
    assert "multiples of 16" in (by_id["r4"].error or "")
    assert billed_images(sandbox) == 4 and len(sandbox_requests(sandbox)) == 4  # r4 never sent
    artifacts = flow_run_artifacts(state.state_details.flow_run_id)
    table = next(a for a in artifacts if a["key"] == "gpt-image-batch")
    table_rows = json.loads(table["data"]) if isinstance(table["data"], str) else table["data"]
    assert [r["status"] for r in table_rows] == ["stored", "stored", "failed", "invalid", "stored"]
    assert table_rows[2]["request_id"] == by_id["r3"].request_id
    progress = next(a for a in artifacts if a["key"] == "gpt-image-batch-progress")
    assert float(progress["data"]) == 100.0


def test_batch_from_list_completes_and_rerun_is_free(env: Any) -> None:
    sandbox, local_s3, storage = env
    prompts = [f"lantern number {i}" for i in range(8)]
    options = ImageOptions(size="1024x1024")
    # half of the rows are in the store before the batch: they are served while the others run
    early = run(batch_generate(prompts=prompts[:4], options=options, storage=storage, return_state=True))
    assert early.is_completed() and "0 found in the store" in (early.message or "")
    state = run(batch_generate(prompts=prompts, options=options, storage=storage, return_state=True))
    assert state.is_completed() and "8 of 8 rows stored" in (state.message or "")
    assert "4 found in the store" in (state.message or "")
    assert billed_images(sandbox) == 8
    # rows log no success line each and publish no per-call artifacts: the table lists them
    logs = flow_run_logs(state.state_details.flow_run_id)
    assert any("8 of 8 rows stored" in m for m in logs)
    assert not any("gpt-image returned" in m for m in logs)
    keys = {a["key"] for a in flow_run_artifacts(state.state_details.flow_run_id)}
    assert keys == {"gpt-image-batch", "gpt-image-batch-progress", "gpt-image-batch-sheet"}
    again = run(batch_generate(prompts=prompts, options=options, storage=storage, return_state=True))
    assert again.is_completed() and "8 found in the store" in (again.message or "")
    assert billed_images(sandbox) == 8 and len(sandbox_requests(sandbox)) == 8
    first: BatchResult = state.result()  # type: ignore[assignment]
    second: BatchResult = again.result()  # type: ignore[assignment]
    assert [r.images for r in first.rows] == [r.images for r in second.rows]
    assert len({r.images[0].sha256 for r in first.rows}) == 8
    images = [k for k in bucket_keys(local_s3, storage) if k.endswith(".png")]
    assert len(images) == 8


def test_a_large_batch_lists_failures_first_and_reports_every_row(
    env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over TABLE_ROWS rows (2 here, 1,000 by default) the table shows the failed rows first, and
    the CSV report in the store, linked from the table's description, has every row."""
    from prefect_gpt_image.flows import batch_report

    sandbox, local_s3, storage = env
    monkeypatch.setattr(batch_report, "TABLE_ROWS", 2)
    prompts = ["a red lantern", "  ", "a blue lantern"]
    state = run(batch_generate(prompts=prompts, storage=storage, return_state=True))
    assert state.is_failed() and billed_images(sandbox) == 2
    flow_run_id = state.state_details.flow_run_id
    table = next(a for a in flow_run_artifacts(flow_run_id) if a["key"] == "gpt-image-batch")
    shown = json.loads(table["data"]) if isinstance(table["data"], str) else table["data"]
    assert [(r["row"], r["status"]) for r in shown] == [(2, "invalid"), (1, "stored")]
    assert "2 of 3 rows shown (failed first)" in table["description"]
    (report,) = [k for k in bucket_keys(local_s3, storage) if k.endswith(f"reports/batch-{flow_run_id}.csv")]
    link = table["description"].split("[CSV](", 1)[1].rstrip(")")
    assert report.split("/", 1)[1] in link.split("?", 1)[0]
    rows = list(csv.DictReader(io.StringIO(httpx.get(link).text)))
    assert [(r["row"], r["status"]) for r in rows] == [("1", "stored"), ("2", "invalid"), ("3", "stored")]
    assert rows[2]["request_id"] and rows[2]["image"].startswith("http")


def test_batch_needs_prompts_or_manifest(env: Any) -> None:
    sandbox, _, storage = env
    state = run(batch_generate(storage=storage, return_state=True))
    assert state.is_failed() and "either prompts or manifest" in str(state.result(raise_on_failure=False))
    assert sandbox_requests(sandbox) == []
