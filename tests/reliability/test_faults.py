"""A batch of 200 against a sandbox that fails like the vendor: every image paid for is stored,
every retry is accounted for, and a request that may have been billed is never retried silently.

Faults (seeded): 20% 429 without Retry-After, 5% each of 500/502/503, 2% media URLs that fail
once; optionally 3% connections dropped after the request was sent (billed, answer lost).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from prefect_gpt_image.flows import BatchResult, batch_generate
from prefect_gpt_image.sandbox import FaultConfig
from prefect_gpt_image.storage import LocalImageStore
from prefect_gpt_image.tasks import read_manifest

from .conftest import (
    CANARY_KEY,
    api_logs,
    fast_settings,
    image_files,
    save_block,
    table_rows,
)

ROWS = 200
FAULTS = {"429": 0.20, "500": 0.05, "502": 0.05, "503": 0.05, "media_fail_once": 0.02}
DROP = 0.03
_RETRY_LINE = re.compile(r"gpt-image attempt (\d+) failed \(request id ([A-Za-z0-9_-]+)\)")
_TASK_RETRY = re.compile(r"(Task run|Batch row \d+) failed with .* - Retry \d+/\d+ will start")
_DOWNLOAD_RETRY = re.compile(r"download of \S+/media/([A-Za-z0-9]+)-\d+\.\w+ failed")


def _run(prompts: list[str], storage: Path, settings_block: str) -> Any:
    return batch_generate(
        prompts=prompts, storage=str(storage), settings_block=settings_block, return_state=True
    )


@pytest.mark.parametrize(
    "mode",
    ["vendor-faults", "drops-default", "drops-opt-in"],
)
def test_batch_of_200_under_faults(
    mode: str,
    rel_env: Path,
    make_sandbox: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="prefect_gpt_image.api")
    probabilities = dict(FAULTS)
    if mode != "vendor-faults":
        probabilities["drop"] = DROP
    sandbox = make_sandbox(latency=0.02, faults=FaultConfig(probabilities=probabilities, seed=20260517))
    monkeypatch.setenv("GPT_IMAGE_API_KEY", CANARY_KEY)
    monkeypatch.setenv("GPT_IMAGE_BASE_URL", sandbox.base_url)
    opt_in = mode == "drops-opt-in"
    # 10 attempts: a row failing 10 times in a row at 35% is a 3e-5 event; no Prefect task retry
    # (5 s later) is then needed for the transient faults.
    settings = fast_settings(max_attempts=10, retry_outcome_unknown=opt_in)
    storage = tmp_path / "images"
    prompts = [f"reliability row {i:03d}: a paper boat on a pond" for i in range(ROWS)]

    state = _run(prompts, storage, save_block(settings, "rel-faults"))
    result: BatchResult = state.result(raise_on_failure=False)  # type: ignore[assignment]
    flow_run_id = state.state_details.flow_run_id
    entries = sandbox.ledger.entries
    requests = [r for r in sandbox.ledger.requests if r["endpoint"] == "/images/generations"]
    store = LocalImageStore(storage)
    stored = {p.stem: p.suffix[1:] for p in image_files(storage / "images")}

    # -- what was paid for is stored, or reported ---------------------------------------------
    delivered = [e for e in entries if e["delivered"]]
    undelivered = [e for e in entries if not e["delivered"]]
    assert {e["fault"] for e in undelivered} <= {"drop"}
    assert {img["sha256"] for e in delivered for img in e["images"]} <= set(stored)
    assert all(read_manifest(store, sha, fmt) is not None for sha, fmt in stored.items())
    outcome_unknown = [r for r in result.rows if r.error_type == "OutcomeUnknownError"]
    billed = sandbox.ledger.billed_images
    # the batch table reports every attempt that may have been billed without an image: a failed
    # row (default) or, when such attempts are retried (opt-in), its maybe_billed column
    table = table_rows(flow_run_id)
    failed = {t["request_id"] for t in table if t["status"] == "failed"}
    retried_paid = {rid for t in table for rid in t["maybe_billed"].split(", ") if rid}
    assert failed | retried_paid == {e["request_id"] for e in undelivered}
    assert billed == len(stored) + len(failed) + len(retried_paid)  # the ledger and the table agree
    if mode == "drops-default":
        assert undelivered, "the seed should drop some connections"
        assert {r.request_id for r in outcome_unknown} == failed and not retried_paid
        assert all("may have been billed" in t["error"] for t in table if t["status"] == "failed")
        assert state.is_failed() and f"OutcomeUnknownError: {len(undelivered)}" in (state.message or "")
        assert result.stored == ROWS - len(undelivered) == len(stored)
    else:
        assert state.is_completed(), state.message
        assert result.stored == ROWS == len(stored) and not outcome_unknown and not failed
        if mode == "drops-opt-in":
            assert undelivered, "the seed should drop some connections"
            assert {rid for r in result.rows for rid in r.maybe_billed} == retried_paid
            message = state.message or ""
            assert f"{len(retried_paid)} retried attempt(s) may also have been billed" in message
        else:
            assert not undelivered and billed == ROWS
    assert {ref.sha256 for r in result.rows for ref in r.images} == set(stored)

    # -- every request is a first attempt or a logged retry ------------------------------------
    messages = [log["message"] for log in api_logs([flow_run_id])]
    retried = [m.group(2) for m in map(_RETRY_LINE.search, messages) if m]
    assert len(retried) == len(set(retried))
    # a Prefect task retry (after the client gave up) is logged by Prefect's task engine
    prefect_reruns = sum(bool(_TASK_RETRY.search(m)) for m in messages)
    assert len(requests) == ROWS + len(retried) + prefect_reruns
    by_id = {r["request_id"]: r for r in requests}
    assert set(retried) <= set(by_id)
    for rid in retried:  # a retry follows a transient status, or (opted in) a dropped connection
        entry = by_id[rid]
        assert entry["status"] in (429, 500, 502, 503) or (opt_in and entry["fault"] == "drop"), entry
    statuses = Counter(r["status"] for r in requests)
    transient = sum(statuses[s] for s in (429, 500, 502, 503))
    assert transient == sum(by_id[rid]["status"] in (429, 500, 502, 503) for rid in retried)
    if mode == "drops-default":
        # a dropped request is never retried: not by the client, not by Prefect
        assert not {e["request_id"] for e in undelivered} & set(retried)
        assert prefect_reruns == 0
        for row in outcome_unknown:
            last = [r for r in requests if r["fields"].get("prompt") == row.prompt][-1]
            assert last["request_id"] == row.request_id
    if mode == "drops-opt-in":
        assert {e["request_id"] for e in undelivered} <= set(retried)
    # each media URL that failed once was fetched again (logged by the client), and nothing else
    media_once = {e["request_id"] for e in entries if e["fault"] == "media_fail_once"}
    assert media_once, "the seed should make some media URLs fail once"
    download_retries = [m.group(1) for m in map(_DOWNLOAD_RETRY.search, caplog.messages) if m]
    assert sorted(download_retries) == sorted(media_once)
