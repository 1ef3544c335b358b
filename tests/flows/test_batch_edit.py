"""``batch_edit``: one edit over an S3 prefix (listed page by page) or a folder; region masks built
at each image's size; inputs the API would refuse reported as invalid rows, never sent."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from prefect_gpt_image.flows import ChainResult, MaskRegion, RunPlan, batch_edit, build_mask
from prefect_gpt_image.flows import sources as image_sources_module
from tests.support.images import mask_bytes, png_bytes
from tests.support.markdown import cell_text
from tests.support.prefect import flow_run_artifacts
from tests.support.s3 import manifest_in_bucket
from tests.support.sandbox import billed_images, sandbox_requests

from .conftest import run

SIZES = [(64, 64), (96, 64), (64, 128)]
REGION = MaskRegion(left=0, top=0, right=0.5, bottom=0.5)


def _parts(request: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [f for f in request["files"] if f["field"] == name]


def test_batch_edit_over_an_s3_prefix_with_region_masks(env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox, local_s3, storage = env
    monkeypatch.setattr(image_sources_module, "S3_PAGE_SIZE", 10)  # 3 pages for 26 objects
    bucket = storage.removeprefix("s3://").split("/")[0]
    client = local_s3.client()
    sources: dict[str, tuple[int, int]] = {}
    for i in range(25):
        size = SIZES[i % 3]
        data = png_bytes(size, (i * 9 % 256, 80, 160))
        client.put_object(Bucket=bucket, Key=f"photos/p{i:02d}.png", Body=data)
        sources[hashlib.sha256(data).hexdigest()] = size
    client.put_object(Bucket=bucket, Key="photos/broken.png", Body=b"not an image at all")
    client.put_object(Bucket=bucket, Key="photos/notes.txt", Body=b"not listed")

    state = run(
        batch_edit(
            images=f"s3://{bucket}/photos/",
            prompt="replace the background with a white studio",
            region=REGION,
            storage=storage,
            return_state=True,
        )
    )
    assert state.is_failed() and "1 of 26 rows failed (InputImageError: 1)" in (state.message or "")
    result: ChainResult = state.result(raise_on_failure=False)  # type: ignore[assignment]
    invalid = [s for s in result.steps if s.status == "invalid"]
    assert len(invalid) == 1 and invalid[0].source == f"s3://{bucket}/photos/broken.png"
    assert "not a PNG, JPEG or WebP image" in (invalid[0].error or "")
    requests = sandbox_requests(sandbox)
    assert len(requests) == 25 and billed_images(sandbox) == 25  # the broken object was never sent
    for request in requests:
        (image,) = _parts(request, "image[]")
        (mask,) = _parts(request, "mask")
        width, height = sources[image["sha256"]]
        assert mask["sha256"] == hashlib.sha256(build_mask(width, height, REGION)).hexdigest()
    stored = [s for s in result.steps if s.status == "stored"]
    assert len({s.images[0].parents[0] for s in stored}) == 25
    for step in stored[:3]:
        assert step.source.startswith(f"s3://{bucket}/photos/p")
        manifest = manifest_in_bucket(local_s3, step.images[0].uri)
        assert manifest is not None and manifest["parents"][0] in sources
    artifacts = flow_run_artifacts(state.state_details.flow_run_id)
    table = next(a for a in artifacts if a["key"] == "gpt-image-batch-edit")
    rows = json.loads(table["data"]) if isinstance(table["data"], str) else table["data"]
    assert len(rows) == 26 and all(
        cell_text(r["source"]).startswith(f"s3://{bucket}/photos/") for r in rows if r["source"]
    )
    assert {"gpt-image-batch-edit-progress", "gpt-image-batch-edit-chains"} <= {a["key"] for a in artifacts}

    # the plan of a rerun: every edit is in the store, nothing to pay
    again = run(
        batch_edit(
            images=f"s3://{bucket}/photos/",
            prompt="replace the background with a white studio",
            region=REGION,
            storage=storage,
            plan_only=True,
            return_state=True,
        )
    )
    plan: RunPlan = again.result()  # type: ignore[assignment]
    assert (plan.to_make, plan.cache_hits, plan.invalid) == (0, 25, 1)
    assert len(sandbox_requests(sandbox)) == 25


def test_batch_edit_over_a_folder_reports_refused_inputs_before_paying(env: Any, tmp_path: Path) -> None:
    sandbox, _, storage = env
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(png_bytes((64, 64), "red"))
    (folder / "sub" / "b.png").write_bytes(png_bytes((64, 64), "blue"))
    (folder / "wide.png").write_bytes(png_bytes((96, 64), "green"))  # the mask is 64x64: refused
    (folder / "fake.webp").write_bytes(b"RIFF....WEBPnot really")  # not an image: refused
    with (folder / "huge.jpeg").open("wb") as f:  # 50 MB (sparse): refused before it is read
        f.truncate(50 * 1024 * 1024)
    mask = tmp_path / "mask.png"
    mask.write_bytes(mask_bytes((64, 64), (0, 0, 32, 32)))

    state = run(
        batch_edit(
            images=str(folder),
            prompt="add a brand frame",
            mask_uri=str(mask),
            storage=storage,
            return_state=True,
        )
    )
    assert state.is_failed() and "3 of 5 rows failed" in (state.message or "")
    result: ChainResult = state.result(raise_on_failure=False)  # type: ignore[assignment]
    by_source = {Path(s.source).name: s for s in result.steps}
    assert by_source["a.png"].status == by_source["b.png"].status == "stored"
    assert "first image's size 96x64" in (by_source["wide.png"].error or "")
    assert "must be under 52428800 bytes" in (by_source["huge.jpeg"].error or "")
    assert "does not decode" in (by_source["fake.webp"].error or "")
    requests = sandbox_requests(sandbox)
    assert len(requests) == 2 and billed_images(sandbox) == 2
    assert all(
        _parts(r, "mask")[0]["sha256"] == hashlib.sha256(mask.read_bytes()).hexdigest() for r in requests
    )
