"""The shipped deployments, deployed with ``prefect deploy`` and run by a process worker.

Real parts only: ``prefect server start``, a process worker, the sandbox (HTTP), SeaweedFS (S3).
The runs are triggered through the API with the deployment's own block parameters, so the worker
finds the key, the settings and the bucket in the blocks alone.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import PurePosixPath
from typing import Any

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)

from prefect_gpt_image.flows.manifest import BatchRow, parse_manifest
from tests.support.markdown import cell_text
from tests.support.s3 import manifest_in_bucket

from .conftest import (
    BUCKET_FOLDER,
    REPO_ROOT,
    E2ERuns,
    E2EStack,
    FinishedRun,
    deployment_specs,
    flow_name_of,
    start_run,
    wait_for_runs,
)

_IMAGE_KEY = re.compile(r"/images/([0-9a-f]{64})\.(png|jpeg|webp)$")


def _bucket_objects(stack: E2EStack) -> dict[str, bytes]:
    """Every object under the storage block's folder, by key."""
    client = stack.s3.client()
    listing = client.list_objects_v2(Bucket=stack.bucket, Prefix=f"{BUCKET_FOLDER}/")
    return {
        obj["Key"]: client.get_object(Bucket=stack.bucket, Key=obj["Key"])["Body"].read()
        for obj in listing.get("Contents", [])
    }


def _artifacts(stack: E2EStack, run: FinishedRun) -> list[Any]:
    with stack.api(), get_client(sync_client=True) as client:
        return list(
            client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
            )
        )


def _table(stack: E2EStack, run: FinishedRun, key: str) -> list[dict[str, Any]]:
    """The rows of run ``run``'s table artifact ``key``."""
    (table,) = [a for a in _artifacts(stack, run) if a.key == key and a.type == "table"]
    rows: list[dict[str, Any]] = json.loads(table.data) if isinstance(table.data, str) else table.data
    return rows


def _run_logs(stack: E2EStack, run: FinishedRun) -> str:
    with stack.api(), get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
    return "\n".join(log.message for log in logs)


def _nightly_requests() -> tuple[int, int]:
    """Requests and images the shipped nightly manifest asks for (rows, and ``n`` per row or the
    deployment's ``n``)."""
    spec = deployment_specs()["nightly"]
    manifest = REPO_ROOT / spec["parameters"]["manifest"]
    rows = parse_manifest(manifest.read_text(encoding="utf-8"), name=manifest.name)
    assert rows and all(isinstance(row, BatchRow) for row in rows), rows
    default_n = int(spec["parameters"].get("n", 1))
    return len(rows), sum((row.n or default_n) for row in rows if isinstance(row, BatchRow))


def test_prefect_deploy_registers_the_yaml(e2e_stack: E2EStack) -> None:
    """`prefect deploy --all` from the repo root made every deployment as the yaml says, its
    schedules active or paused as there."""
    specs = deployment_specs()
    with e2e_stack.api(), get_client(sync_client=True) as client:
        for name, spec in specs.items():
            deployment = client.read_deployment_by_name(f"{flow_name_of(spec['entrypoint'])}/{name}")
            assert deployment.entrypoint == spec["entrypoint"]
            assert deployment.work_pool_name == e2e_stack.pool
            # No pull section in the yaml: prefect deploy recorded the folder it ran in.
            assert deployment.pull_steps == [
                {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO_ROOT)}}
            ]
            assert deployment.parameters == spec["parameters"]
            for parameter in ("credentials_block", "settings_block", "storage"):
                assert deployment.parameters[parameter], f"{name} must name a block in {parameter}"
            schedules = spec.get("schedules") or []
            crons = [(s["cron"], s.get("timezone"), s.get("active", True)) for s in schedules]
            assert [
                (s.schedule.cron, s.schedule.timezone, s.active)  # type: ignore[union-attr]
                for s in deployment.schedules
            ] == crons
            assert (
                f"'{flow_name_of(spec['entrypoint'])}/{name}' successfully created" in e2e_stack.deploy_output
            )
    assert specs["nightly"].get("schedules"), "the nightly deployment must be scheduled"


def test_no_deployment_is_scheduled_to_fail(e2e_stack: E2EStack, e2e_runs: E2ERuns) -> None:
    """Every deployment whose schedule is active on the server completes when run with its own
    parameters, as the schedule will run it; ``backgrounds``, whose ``images`` is a placeholder
    (a bucket the worker cannot read), ships paused."""
    scheduled = []
    with e2e_stack.api(), get_client(sync_client=True) as client:
        for name, spec in deployment_specs().items():
            deployment = client.read_deployment_by_name(f"{flow_name_of(spec['entrypoint'])}/{name}")
            if any(schedule.active for schedule in deployment.schedules):
                scheduled.append(name)
    assert "nightly" in scheduled, scheduled
    runs = {"nightly": e2e_runs.nightly}  # already run with the deployment's own parameters
    others = [name for name in scheduled if name not in runs]
    finished = wait_for_runs(e2e_stack, [start_run(e2e_stack, name) for name in others])
    runs.update(zip(others, finished, strict=True))
    for name in scheduled:
        run = runs[name]
        assert run.state_type == "COMPLETED", f"{name} is scheduled to fail: {run.state_message}"
    assert "backgrounds" not in scheduled


def test_worker_runs_pipeline_and_nightly_into_the_bucket(e2e_stack: E2EStack, e2e_runs: E2ERuns) -> None:
    """Both runs complete on the worker; the sandbox billed exactly the images the bucket holds,
    the artifacts point at them, and the key never shows in a log."""
    tail = e2e_stack.log_tail
    for run in (e2e_runs.pipeline, e2e_runs.nightly):
        assert run.state_type == "COMPLETED", f"{run.state_message}\n{tail()}"

    # -- the sandbox: who asked, what was billed --------------------------------------------------
    ledger = e2e_stack.sandbox.ledger
    requests = ledger.requests
    assert requests, "the sandbox saw no request"
    assert all(r["auth_ok"] for r in requests), "a request did not carry the credentials block's key"
    entries = ledger.entries
    assert all(e["delivered"] and e["fault"] is None for e in entries)
    by_endpoint = Counter(e["endpoint"].rsplit("/", 1)[-1] for e in entries)
    nightly_rows, nightly_images = _nightly_requests()
    # pipeline: 1 generation, then edit and blend (both /images/edits); nightly: one generation per row
    assert by_endpoint == {"generations": 1 + nightly_rows, "edits": 2}, by_endpoint
    billed = {image["sha256"] for e in entries for image in e["images"]}
    assert ledger.billed_images == 3 + nightly_images == len(billed)

    # the blend request carried the reference read from the bucket through the storage block
    reference = (
        e2e_stack.s3.client()
        .get_object(Bucket=e2e_stack.bucket, Key=e2e_runs.reference_uri.split("/", 3)[3])["Body"]
        .read()
    )
    blend = [r for r in requests if r["endpoint"].endswith("/edits") and len(r["files"]) >= 2]
    assert any(f["sha256"] == hashlib.sha256(reference).hexdigest() for r in blend for f in r["files"])

    # -- the bucket: every billed image, intact, with its manifest ---------------------------------
    objects = _bucket_objects(e2e_stack)
    stored = {m.group(1): key for key in objects if (m := _IMAGE_KEY.search(key))}
    assert set(stored) == billed
    for sha, key in stored.items():
        assert hashlib.sha256(objects[key]).hexdigest() == sha
        manifest = manifest_in_bucket(e2e_stack.s3, f"s3://{e2e_stack.bucket}/{key}")
        assert manifest is not None and manifest["sha256"] == sha, f"no manifest of {key}"
    formats = Counter(PurePosixPath(key).suffix for key in stored.values())
    assert formats[".webp"] >= 1, "the manifest's webp row was not stored as webp"

    # -- the artifacts: images linked to the stored objects, the pipeline card, the batch table ----
    pipeline_artifacts = _artifacts(e2e_stack, e2e_runs.pipeline)
    keys = Counter(a.key for a in pipeline_artifacts)
    assert keys["gpt-image-pipeline"] == 1
    images = [a for a in pipeline_artifacts if a.type == "image"]
    assert len(images) == 3, keys
    for artifact in images:
        sha16 = artifact.key.removeprefix("gpt-image-")
        (sha,) = [s for s in stored if s.startswith(sha16)]
        response = httpx.get(str(artifact.data), timeout=10)  # the presigned link the UI shows
        assert response.status_code == 200
        assert hashlib.sha256(response.content).hexdigest() == sha
    card = next(a for a in pipeline_artifacts if a.key == "gpt-image-pipeline")
    assert all(step in str(card.data) for step in ("1. generate", "2. edit", "3. blend"))

    nightly_keys = {a.key for a in _artifacts(e2e_stack, e2e_runs.nightly)}
    assert {"gpt-image-batch", "gpt-image-batch-progress"} <= nightly_keys

    # -- no secret anywhere a user could read it ---------------------------------------------------
    for run in (e2e_runs.pipeline, e2e_runs.nightly):
        logs = _run_logs(e2e_stack, run)
        assert logs, "the run wrote no logs"
        assert e2e_stack.api_key not in logs
    assert e2e_stack.api_key not in e2e_stack.worker_log.read_text(errors="replace")


def test_worker_runs_backgrounds_and_catalogue(e2e_stack: E2EStack, e2e_runs: E2ERuns) -> None:
    """The batch deployments run on the worker as shipped: ``backgrounds`` edits every photo under
    an S3 prefix (one paid edit each, the output linked to its source), ``catalogue`` runs the
    shipped manifest's chains (a generation, a box edit with its mask, a blend with two images per
    row); the sandbox billed exactly those calls, and the table artifacts list every step."""
    from tests.support.images import png_bytes

    del e2e_runs  # the first runs' requests are in the ledger before these
    s3 = e2e_stack.s3.client()
    photos = {f"photos/incoming/{name}.png": png_bytes((1024, 1024), name) for name in ("teal", "salmon")}
    for key, body in photos.items():
        s3.put_object(Bucket=e2e_stack.bucket, Key=key, Body=body, ContentType="image/png")
    seen = len(e2e_stack.sandbox.ledger.requests)
    runs = [
        start_run(e2e_stack, "backgrounds", {"images": f"s3://{e2e_stack.bucket}/photos/incoming/"}),
        start_run(e2e_stack, "catalogue"),
    ]
    backgrounds, catalogue = wait_for_runs(e2e_stack, runs)
    for run in (backgrounds, catalogue):
        assert run.state_type == "COMPLETED", f"{run.state_message}\n{e2e_stack.log_tail()}"

    spec = deployment_specs()["catalogue"]
    rows = len((REPO_ROOT / spec["parameters"]["manifest"]).read_text().strip().splitlines()) - 1
    assert rows >= 2
    requests = e2e_stack.sandbox.ledger.requests[seen:]
    assert all(r["status"] == 200 for r in requests), [r["status"] for r in requests]
    by_endpoint = Counter(r["endpoint"].rsplit("/", 1)[-1] for r in requests)
    # backgrounds: one edit per photo; catalogue: per row a generation, a box edit and a blend
    assert by_endpoint == {"generations": rows, "edits": len(photos) + 2 * rows}, by_endpoint
    edits = [r for r in requests if r["endpoint"].endswith("/edits")]
    sources = {hashlib.sha256(body).hexdigest() for body in photos.values()}
    photo_edits = [r for r in edits if r["files"][0]["sha256"] in sources]
    assert {r["files"][0]["sha256"] for r in photo_edits} == sources and len(photo_edits) == len(photos)
    chain_edits = [r for r in edits if r not in photo_edits]
    masked = [r for r in chain_edits if [f["field"] for f in r["files"]][-1] == "mask"]
    blends = [r for r in chain_edits if [f["field"] for f in r["files"]] == ["image[]", "image[]"]]
    assert len(masked) == len(blends) == rows, [[f["field"] for f in r["files"]] for r in chain_edits]

    edited = _table(e2e_stack, backgrounds, "gpt-image-batch-edit")
    uris = {f"s3://{e2e_stack.bucket}/{key}" for key in photos}
    assert {cell_text(row["source"]) for row in edited} == uris  # each cell is markdown
    assert all(row["status"] == "stored" and row["image"] for row in edited)
    chained = _table(e2e_stack, catalogue, "gpt-image-batch-pipeline")
    assert len(chained) == 3 * rows and all(row["status"] == "stored" for row in chained)
