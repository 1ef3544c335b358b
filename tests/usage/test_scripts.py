"""The scripts of ``tests/usage/scripts`` (the README's examples) do what a user expects: they
run, pay once per distinct request (the sandbox's ledger), store every image (the store folder),
serve repeats from the store, also in a new process, and leave the states Prefect shows."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.support.judge import held_requests, s3_image_hashes, unheld_answers_stored
from tests.support.sandbox import sandbox_requests

from .conftest import EphemeralRun, Usage


@pytest.fixture(scope="module", autouse=True)
def _ephemeral_first_run_starts_first(ephemeral_first_run: EphemeralRun) -> EphemeralRun:
    """The ephemeral first run starts with this file's first test, in the background, and
    ``test_first_run_on_the_ephemeral_prefect`` checks it (see ``ephemeral_first_run``)."""
    return ephemeral_first_run


def _billed_by_endpoint(sandbox: Any) -> Counter[str]:
    """Images billed per endpoint (``generations`` / ``edits``)."""
    billed: Counter[str] = Counter()
    for entry in sandbox.ledger.entries:
        billed[entry["endpoint"].rsplit("/", 1)[-1]] += entry["n"]
    return billed


def _request(requests: list[dict[str, Any]], prompt: str) -> dict[str, Any]:
    """The one logged request with ``prompt``."""
    found = [r for r in requests if r["fields"].get("prompt") == prompt]
    assert len(found) == 1, f"{len(found)} requests with prompt {prompt!r}"
    return found[0]


def _parts(request: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [f for f in request["files"] if f["field"] == name]


def _assert_stored(usage: Usage, shas: list[str], run: Any) -> None:
    for sha in shas:
        path = usage.stored(sha)
        assert path is not None, f"image {sha} is not in the store\n{run.tail()}"
        with Image.open(path) as img:
            assert img.size == (1024, 1024)


def test_sync_flow_pays_once_per_request_and_a_new_process_pays_nothing(usage: Usage) -> None:
    first = usage.run("sync_flow.py")
    shas = first.result()
    sandbox = usage.sandbox
    # generate 1 + edit 1 + blend 1; the second identical generate came from the store
    assert sandbox.ledger.billed_images == 3, first.tail()
    assert _billed_by_endpoint(sandbox) == {"generations": 1, "edits": 2}
    assert shas["again"] == shas["generated"]
    assert len({shas["generated"], shas["edited"], shas["blended"]}) == 3
    _assert_stored(usage, [shas["generated"], shas["edited"], shas["blended"]], first)
    assert len(usage.image_files()) == 3

    requests = sandbox.ledger.requests
    assert [r["endpoint"].rsplit("/", 1)[-1] for r in requests] == ["generations", "edits", "edits"]
    edit = _request(requests, "add a rainbow in the sky")
    assert [p["sha256"] for p in _parts(edit, "image[]")] == [shas["generated"]]
    assert len(_parts(edit, "mask")) == 1, edit["files"]
    blend = _request(requests, "the two lighthouses side by side")
    assert [p["sha256"] for p in _parts(blend, "image[]")] == [shas["generated"], shas["edited"]]
    assert _parts(blend, "mask") == []

    # the same script in a new process: everything comes from the store, nothing is paid
    second = usage.run("sync_flow.py")
    assert second.result() == shas
    assert sandbox.ledger.billed_images == 3, second.tail()
    assert len(sandbox.ledger.requests) == 3
    assert len(usage.image_files()) == 3


def _assert_distinct_prompts_paid(usage: Usage, name: str, prompts: int, results: int) -> None:
    run = usage.run(name)
    shas = run.result()
    assert len(shas) == results, run.tail()
    assert len(set(shas)) == prompts
    assert usage.sandbox.ledger.billed_images == prompts, run.tail()
    assert usage.sandbox.ledger.billed_requests == prompts
    _assert_stored(usage, shas, run)
    assert len(usage.image_files()) == prompts


def test_async_flow_awaits_and_gathers(usage: Usage) -> None:
    # 1 awaited + 4 gathered, one of them a prompt given twice at once: 4 prompts, 4 images paid
    _assert_distinct_prompts_paid(usage, "async_flow.py", prompts=4, results=5)


def test_sync_flow_submit_and_map(usage: Usage) -> None:
    # 1 submitted + 3 mapped, one prompt twice: 3 distinct prompts
    _assert_distinct_prompts_paid(usage, "sync_submit_map.py", prompts=3, results=4)


def test_async_flow_submit_and_map(usage: Usage) -> None:
    _assert_distinct_prompts_paid(usage, "async_submit_map.py", prompts=3, results=4)


def test_submitted_calls_wait_for_the_futures_they_are_given(usage: Usage) -> None:
    # a future as a parameter and wait_for go Prefect's own way (their engine waits in its thread)
    run = usage.run("chained_submit.py")
    shas = run.result()
    requests = usage.sandbox.ledger.requests
    assert [r["fields"]["prompt"] for r in requests] == [
        "a lighthouse on a rock",
        "the lighthouse in winter",
        "a boat",
    ], run.tail()
    blend = _request(requests, "the lighthouse in winter")
    assert [p["sha256"] for p in _parts(blend, "image[]")] == [shas["generated"]]
    _assert_stored(usage, list(shas.values()), run)


def test_a_flow_waits_for_mapped_calls_it_never_reads(usage: Usage) -> None:
    # the unread calls are still running at the end, and the last two start long after it
    usage.sandbox.script_faults(["slow"] * 4)
    run = usage.run("unawaited_map.py")
    result = run.result()
    assert result["stored_when_the_flow_ended"] == 10, run.tail()
    assert "Crashed" not in run.stderr, run.tail()
    bounded = result["bounded"]
    prompts = [r["fields"]["prompt"] for r in usage.sandbox.ledger.requests]
    cranes = [f"a paper crane, number {i}" for i in range(8)]
    assert sorted(prompts[:10]) == sorted(["a paper boat", "a glass of lemonade", *cranes]), run.tail()
    assert sorted(prompts[10:]) == ["a blue door", "a green door", "a red door"]
    # max_workers=2 ran the others (Prefect's own way)
    assert len(usage.image_files()) == 13, run.tail()
    _assert_stored(usage, bounded, run)


def test_tasks_called_with_no_flow(usage: Usage) -> None:
    run = usage.run("outside_flow.py")
    shas = run.result()
    assert shas["again"] == shas["generated"] != shas["edited"]
    assert usage.sandbox.ledger.billed_images == 2, run.tail()
    assert _billed_by_endpoint(usage.sandbox) == {"generations": 1, "edits": 1}
    edit = _request(usage.sandbox.ledger.requests, "make the sea stormy")
    assert [p["sha256"] for p in _parts(edit, "image[]")] == [shas["generated"]]
    assert len(_parts(edit, "mask")) == 1
    _assert_stored(usage, [shas["generated"], shas["edited"]], run)


def _flow_runs_since(after: float, flow_name: str) -> list[Any]:
    from datetime import UTC, datetime

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterStartTime,
    )

    with get_client(sync_client=True) as client:
        return list(
            client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                flow_run_filter=FlowRunFilter(
                    start_time=FlowRunFilterStartTime(after_=datetime.fromtimestamp(after, UTC))
                ),
            )
        )


def test_flows_called_from_a_script_and_as_a_subflow(usage: Usage) -> None:
    from prefect.client.orchestration import get_client

    reference = usage.root / "reference.png"
    Image.new("RGB", (512, 512), (30, 90, 200)).save(reference)
    started = time.time() - 1
    run = usage.run("flows_from_script.py", str(reference))
    out = run.result()
    assert out["batch_state"] == "COMPLETED" and out["batch_stored"] == 3 and out["nightly_stored"] == 2
    generated, edited, blended = out["pipeline"]
    sandbox = usage.sandbox
    # pipeline 3 (generate, edit, blend) + batch 3 + the subflow's batch 2, one image each
    assert sandbox.ledger.billed_images == 8, run.tail()

    requests = sandbox_requests(sandbox)  # over HTTP, as any client would read it
    edit = _request(requests, "add a rainbow")
    assert [p["sha256"] for p in _parts(edit, "image[]")] == [generated]
    masks = _parts(edit, "mask")
    assert len(masks) == 1 and masks[0]["content_type"] == "image/png" and masks[0]["size"] > 0
    blend = _request(requests, "repaint it in the colours of the reference")
    blend_parts = _parts(blend, "image[]")
    assert len(blend_parts) == 2 and _parts(blend, "mask") == []
    assert blend_parts[0]["sha256"] == edited
    assert blend_parts[1]["sha256"] == hashlib.sha256(reference.read_bytes()).hexdigest()
    for prompt in ("a red kite", "a green hill", "a blue lake", "a yellow tram", "an orange cat"):
        assert _request(requests, prompt)["endpoint"].endswith("/generations")
    _assert_stored(usage, [generated, edited, blended], run)
    assert len(usage.image_files()) == 8

    # the batch called inside the user's flow is a subflow of it; the other one is not
    nightly = _flow_runs_since(started, "nightly")
    batches = _flow_runs_since(started, "gpt-image-batch")
    assert len(nightly) == 1 and len(batches) == 2, (nightly, batches)
    assert len(_flow_runs_since(started, "gpt-image-pipeline")) == 1
    children = [b for b in batches if b.parent_task_run_id is not None]
    assert len(children) == 1
    with get_client(sync_client=True) as client:
        parent = client.read_task_run(children[0].parent_task_run_id)
    assert parent.flow_run_id == nightly[0].id
    assert all(r.state is not None and r.state.is_completed() for r in [*nightly, *batches])


def test_clients_never_closed_let_the_script_exit(usage: Usage) -> None:
    # a client left open must not keep the interpreter alive: a hang fails here (the timeout);
    # how soon it exits is a benchmark's figure (bench/stops.py), not a test's
    run = usage.run("unclosed_clients.py", timeout=60)
    shas = run.result()
    assert shas["sync"] != shas["async"]
    entries = usage.sandbox.ledger.entries
    assert [e["endpoint"].rsplit("/", 1)[-1] for e in entries] == ["generations", "generations"]
    assert all(e["delivered"] for e in entries)
    assert "Traceback" not in run.stderr, run.tail()


def test_a_cache_hit_is_a_cached_state_in_prefect(usage: Usage) -> None:
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.objects import StateType

    run = usage.run("cached_state.py")
    flow_run_id = UUID(run.result()["flow_run_id"])
    assert usage.sandbox.ledger.billed_images == 1, run.tail()
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
        flow_run = client.read_flow_run(flow_run_id)
    assert flow_run.state is not None and flow_run.state.type == StateType.COMPLETED
    states = [t.state for t in task_runs]
    assert all(s is not None for s in states)
    assert sorted(s.name for s in states if s is not None) == ["Cached", "Completed"], run.tail()
    assert {s.type for s in states if s is not None} == {StateType.COMPLETED}
    assert len(task_runs) == 2 and all(t.name.startswith("generate-image") for t in task_runs)


def test_first_run_on_the_ephemeral_prefect(ephemeral_first_run: EphemeralRun) -> None:
    """No PREFECT_API_URL: Prefect starts its ephemeral server (a fresh home, SQLite) for the run,
    which succeeds and is paid once, with no traceback and no locked database on the way."""
    run = ephemeral_first_run.script.wait(timeout=240)
    sha = run.result()["sha256"]
    assert ephemeral_first_run.sandbox.ledger.billed_images == 1, run.tail()
    assert (ephemeral_first_run.root / "store" / "images" / f"{sha}.png").is_file()
    output = run.stdout + run.stderr
    assert "Traceback" not in output, run.tail()
    assert "database is locked" not in output, run.tail()


def _photos(usage: Usage) -> list[Path]:
    folder = usage.root / "photos"
    folder.mkdir()
    paths = []
    for i, size in enumerate([(64, 64), (96, 64), (64, 128)]):
        path = folder / f"p{i}.png"
        Image.new("RGB", size, (40 * i, 90, 200)).save(path)
        paths.append(path)
    return paths


def test_batch_edit_from_a_script(usage: Usage) -> None:
    photos = _photos(usage)
    run = usage.run("readme_batch_edit.py", str(photos[0].parent))
    assert run.result() == {"planned": 3, "stored": 3, "rerun": 0}, run.tail()
    requests = usage.sandbox.ledger.requests
    assert len(requests) == 3 and usage.sandbox.ledger.billed_images == 3
    sources = {hashlib.sha256(p.read_bytes()).hexdigest() for p in photos}
    assert {_parts(r, "image[]")[0]["sha256"] for r in requests} == sources
    assert all(len(_parts(r, "mask")) == 1 for r in requests)


def _pipeline_manifest(usage: Usage, rows: int) -> Path:
    frame = usage.root / "frame.png"
    Image.new("RGB", (96, 96), (10, 10, 10)).save(frame)
    manifest = usage.root / "products.csv"
    lines = ["product,surface,backdrop,frame"]
    lines += [f"mug {i},oak desk,blue,{frame}" for i in range(rows)]
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def _step(request: dict[str, Any]) -> tuple[str, str, tuple[str, ...]]:
    """What a pipeline step asked, from the sandbox's request log: its endpoint, prompt and the
    hashes of its input images (an edit's or blend's inputs are the earlier steps' images)."""
    inputs = tuple(sorted(part["sha256"] for part in _parts(request, "image[]")))
    return request["endpoint"], request["fields"]["prompt"], inputs


def _wait_for(what: str, predicate: Callable[[], bool], script: Any) -> None:
    """Poll the sandbox's and the bucket's state until ``predicate``; fail if the script ended."""
    deadline = time.monotonic() + 120
    while not predicate():
        assert script.process.poll() is None, f"the script ended before {what}\n{script.wait().tail()}"
        assert time.monotonic() < deadline, f"never came: {what}"
        time.sleep(0.02)


def test_batch_pipeline_killed_mid_run_then_rerun_pays_only_the_missing_steps(
    usage: Usage, make_sandbox: Any, local_s3: Any, s3_bucket: str
) -> None:
    """6 rows x 3 steps stored in a real S3 bucket; the sandbox holds every result download once
    some steps are stored, and the script is killed (SIGKILL, no grace) when each unfinished row
    waits in a held download and every other answer is stored. The rerun pays once for each step
    whose images the bucket did not hold (by hash), and for nothing it held."""
    from dataclasses import replace

    from prefect.client.orchestration import get_client

    from .conftest import RunningScript

    slow = make_sandbox(latency=0.3)  # the rows spend their time in the call, not storing
    env = {**usage.env, **local_s3.env(), "GPT_IMAGE_BASE_URL": slow.base_url}
    env["GPT_IMAGE_STORAGE"] = f"s3://{s3_bucket}/gpt"
    slow_usage = replace(usage, sandbox=slow, env=env)
    manifest = _pipeline_manifest(slow_usage, rows=6)
    ledger = slow.ledger

    def answered_unheld_all_stored() -> bool:
        return unheld_answers_stored(slow, local_s3, s3_bucket, "gpt")

    script = RunningScript("readme_batch_pipeline.py", slow_usage.env, slow_usage.root, str(manifest))
    try:
        _wait_for(
            "5 steps stored", lambda: ledger.billed_requests >= 5 and answered_unheld_all_stored(), script
        )
        slow.hold.hold()  # every download from now on waits
        _wait_for(
            "every unfinished row waiting in a held download, every other answer stored",
            lambda: bool(slow.hold.held) and ledger.in_flight == 0 and answered_unheld_all_stored(),
            script,
        )
        held = held_requests(slow)
        os.killpg(script.process.pid, signal.SIGKILL)
        assert script.process.wait(10) == -signal.SIGKILL
    finally:
        script.stop()
        slow.hold.release()

    requests = {r["request_id"]: r for r in ledger.requests}
    first = ledger.entries
    stored = set(s3_image_hashes(local_s3, s3_bucket))
    stored_steps = {
        _step(requests[e["request_id"]]) for e in first if {i["sha256"] for i in e["images"]} <= stored
    }
    held_steps = {_step(requests[rid]) for rid in held}
    assert held and all(e["delivered"] for e in first if e["request_id"] in held)
    assert stored_steps and not held_steps & stored_steps and len(stored_steps) < 18
    # The killed run's slots of the global limit stay taken until their leases expire (a known
    # limit): free them as an operator would (`prefect gcl delete gpt-image`); the rerun creates
    # the limit again.
    with get_client(sync_client=True) as client:
        client.delete_global_concurrency_limit_by_name("gpt-image")

    rerun = slow_usage.run("readme_batch_pipeline.py", str(manifest))
    out = rerun.result()
    assert out["stored"] == 6 and len(out["chains"]) == 6 and all(len(c) == 3 for c in out["chains"])
    requests = {r["request_id"]: r for r in ledger.requests}
    everything = ledger.entries
    all_steps = {_step(requests[e["request_id"]]) for e in everything if e["delivered"]}
    assert len(all_steps) == 18, all_steps
    # the rerun's bill: each step the bucket did not hold, once (the held ones among them)
    paid_again = Counter(_step(requests[e["request_id"]]) for e in everything[len(first) :])
    assert paid_again == Counter(all_steps - stored_steps), rerun.tail()
    assert held_steps <= set(paid_again)
    # every chain's images are in the bucket, as delivered
    final = set(s3_image_hashes(local_s3, s3_bucket))
    assert {sha for chain in out["chains"] for sha in chain} <= final
    assert {i["sha256"] for e in everything[len(first) :] for i in e["images"]} <= final
    blends = [r for r in requests.values() if r["fields"].get("prompt") == "add the brand frame"]
    assert blends and all(len(_parts(r, "image[]")) == 2 for r in blends)


def test_a_failed_batch_raises_a_short_error_with_the_stored_rows(usage: Usage) -> None:
    rows = 120
    run = usage.run("failed_batch.py", str(rows))
    out = run.result()
    sandbox = usage.sandbox
    # the batch: every other row refused by moderation (sent, not billed), one refused before
    # sending, the others stored; the message stays a few lines at any size
    message = out["batch_message"]
    statuses = Counter(out["statuses"])
    assert statuses == {"stored": rows // 2 - 1, "failed": rows // 2, "invalid": 1}, statuses
    assert len(message) < 2000 and len(message.splitlines()) <= 10, message
    assert message.startswith(
        f"{rows // 2 + 1} of {rows} rows failed (ModerationError: {rows // 2}, invalid: 1)"
    )
    assert (
        "row 2: ModerationError: HTTP 400" in message
        and "row 3: invalid: prompt must not be empty" in message
    )
    assert f"... and {rows // 2 + 1 - 5} more" in message
    assert "table artifact 'gpt-image-batch' of flow run '" in message
    assert "BatchResult(" not in message and "Unexpected result" not in run.stderr
    # what exc.result holds is what was billed, once each, and stored
    stored = out["stored"]
    assert len(stored) == rows // 2 - 1
    batch_entries = [e for e in sandbox.ledger.entries if e["endpoint"].endswith("/generations")]
    billed = Counter(image["sha256"] for e in batch_entries for image in e["images"])
    assert set(stored.values()) <= set(billed) and all(billed[sha] == 1 for sha in stored.values())
    _assert_stored(usage, list(stored.values()), run)

    # the pipeline: the generated image is stored and billed once, the edit refused
    (generate, generated_status, generated), (edit, edit_status, _) = out["pipeline_steps"]
    assert (generate, generated_status, edit, edit_status) == ("generate", "stored", "edit", "failed")
    assert billed[generated] == 1 and sandbox.ledger.billed_images == len(stored) + 1
    _assert_stored(usage, [generated], run)
    pipeline = out["pipeline_message"]
    assert pipeline.startswith(
        "the pipeline failed at step 'edit' (ModerationError: 1); 1 of 2 step(s) stored"
    )
    assert "row 1, step edit: ModerationError: HTTP 400" in pipeline and len(pipeline) < 2000
