"""kill -9 of the process running a batch, mid-way, then a rerun: the rerun generates only what is
missing and stores everything; exactly the calls in flight at the kill were billed without being
stored (the sandbox ledger says so with ``delivered=False``) and are made again; the dead process's
locks on those calls expire (hold timeout) instead of blocking the rerun for ever."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client

from prefect_gpt_image.flows import BatchResult, batch_generate

from . import crash_batch
from .conftest import CANARY_KEY, fast_settings, image_files, save_block, walk_files

ROWS = 8
LATENCY = 2.0
"""Seconds each image takes: long enough to kill the process with calls surely in the middle."""
HOLD = 5.0
"""The crashed process's lock hold timeout (see crash_batch.py)."""
PARALLEL = 2


def _image_requests(sandbox: Any) -> list[dict[str, Any]]:
    return [r for r in sandbox.ledger.requests if r["endpoint"] == "/images/generations"]


def _kill_moment(sandbox: Any, storage: Path, locks: Path, process: subprocess.Popen[bytes]) -> None:
    """Wait until some rows are done and ``PARALLEL`` calls are in the middle of their latency, with
    every delivered answer already stored: then no call is between "answered" and "stored"."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert process.poll() is None, "the batch process ended before it could be killed"
        now = time.time()
        in_flight = [r for r in _image_requests(sandbox) if r["finished"] is None]
        delivered = [e for e in sandbox.ledger.entries if e["delivered"]]
        stored = {p.stem for p in image_files(storage / "images")}
        records = list((storage / "cache").glob("*.json")) if (storage / "cache").exists() else []
        if (
            len(delivered) >= 4
            and len(in_flight) == PARALLEL
            and all(now - r["started"] < LATENCY - 0.8 for r in in_flight)
            and {img["sha256"] for e in delivered for img in e["images"]} <= stored
            and len(records) == len(delivered)
            and len(list(locks.glob("*.lock"))) == PARALLEL
        ):
            return
        time.sleep(0.02)
    pytest.fail("no moment to kill the batch came")


def test_kill_9_mid_batch_then_the_rerun_pays_only_for_what_is_missing(
    rel_env: Path, make_sandbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = make_sandbox(latency=LATENCY)
    monkeypatch.setenv("GPT_IMAGE_API_KEY", CANARY_KEY)
    monkeypatch.setenv("GPT_IMAGE_BASE_URL", sandbox.base_url)
    locks = Path(os.environ["GPT_IMAGE_LOCK_DIR"])
    spool = Path(os.environ["GPT_IMAGE_SPOOL"])
    storage = tmp_path / "images"
    # 4 slots: the dead process's leases of the global limit (PARALLEL of them) stay taken until
    # they expire; the rerun uses the other slots meanwhile.
    settings = fast_settings(concurrency_limit=4)
    settings_block = save_block(settings, "rel-crash")
    prompts = [f"crash row {i:02d}: a windmill at dusk" for i in range(ROWS)]
    prompts_file = tmp_path / "prompts.json"
    prompts_file.write_text(json.dumps(prompts))

    log_path = tmp_path / "crashed-batch.log"
    process = crash_batch.start(prompts_file, storage, settings_block, PARALLEL, HOLD, log_path)
    try:
        _kill_moment(sandbox, storage, locks, process)
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(10) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
    in_flight_at_kill = {r["request_id"] for r in _image_requests(sandbox) if r["finished"] is None}
    assert len(in_flight_at_kill) == PARALLEL
    deadline = time.monotonic() + LATENCY + 10
    while sandbox.ledger.in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    before = sandbox.ledger.entries

    # the calls in flight at the kill were billed, and the ledger knows they were never delivered
    assert {e["request_id"] for e in before if not e["delivered"]} == in_flight_at_kill
    delivered_before = {e["request_id"] for e in before if e["delivered"]}
    assert len(delivered_before) >= 4
    # the dead process still holds their locks: taken with a hold timeout, so they expire
    stale = [json.loads(p.read_text()) for p in locks.glob("*.lock")]
    assert len(stale) == PARALLEL and {lock["pid"] for lock in stale} == {process.pid}
    expires = max(lock["expires"] for lock in stale)
    assert time.time() < expires <= time.time() + HOLD
    with get_client(sync_client=True) as client:
        leaked = client.read_global_concurrency_limit_by_name(settings.concurrency_limit_name).active_slots

    started = time.time()
    result: BatchResult = batch_generate(prompts=prompts, storage=str(storage), settings_block=settings_block)  # type: ignore[assignment]
    finished = time.time()

    assert result.stored == ROWS
    assert finished >= expires, "the rerun cannot have made the locked calls before their locks expired"
    assert finished - started < HOLD + 60
    # billing: each prompt once, except the calls in flight at the kill, made once more
    prompt_of = {r["request_id"]: r["fields"]["prompt"] for r in _image_requests(sandbox)}
    by_prompt: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in sandbox.ledger.entries:
        by_prompt[prompt_of[entry["request_id"]]].append(entry)
    assert set(by_prompt) == set(prompts)
    twice = {p for p, entries in by_prompt.items() if len(entries) == 2}
    assert twice == {prompt_of[rid] for rid in in_flight_at_kill}
    assert all(len(entries) in (1, 2) for entries in by_prompt.values())
    for prompt, entries in by_prompt.items():
        assert entries[-1]["delivered"], prompt
        if prompt in twice:
            assert entries[0]["request_id"] in in_flight_at_kill and not entries[0]["delivered"]
    new_requests = [
        e for e in sandbox.ledger.entries if e["request_id"] not in {x["request_id"] for x in before}
    ]
    assert len(new_requests) == ROWS - len(delivered_before)
    # everything is stored, nothing is left in the spool or the lock folder
    assert len(image_files(storage / "images")) == ROWS
    assert list(walk_files(spool)) == [] and list(locks.glob("*.lock")) == []
    print(f"leaked global-limit slots after the kill: {leaked}; rerun took {finished - started:.1f} s")
