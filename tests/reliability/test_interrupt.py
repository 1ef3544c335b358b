"""Ctrl-C (SIGINT to the process group, as a terminal sends it) of a script running
``batch_generate`` into a real S3 bucket, with calls in flight: the script stops (how fast is
bench/stops.py's figure, not a test's), every image the sandbox delivered is in the bucket
(its bytes, hashed) or the spool, and no lock or global-limit slot is left behind."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client

from prefect_gpt_image.local_prefect import stop_process
from prefect_gpt_image.local_s3 import LocalS3Server
from tests.support.judge import IMAGE_SUFFIXES, delivered_images, s3_image_hashes

from . import crash_batch
from .conftest import CANARY_KEY, fast_settings, s3_storage_block, save_block, walk_files

ROWS = 12
LATENCY = 1.0
PARALLEL = 4


STOP_TIMEOUT = 120.0
"""How long the test waits for the script to end after Ctrl-C before calling it hung."""


def spooled_images(spool: Path) -> set[str]:
    """The sha256 of the bytes of every image waiting in a spool folder."""
    return {
        hashlib.sha256(p.read_bytes()).hexdigest() for p in walk_files(spool) if p.suffix in IMAGE_SUFFIXES
    }


def test_ctrl_c_of_a_batch_script_stops_keeps_what_was_paid_and_leaves_nothing(
    rel_env: Path,
    make_sandbox: Any,
    local_s3: LocalS3Server,
    s3_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sandbox = make_sandbox(latency=LATENCY)
    monkeypatch.setenv("GPT_IMAGE_API_KEY", CANARY_KEY)
    monkeypatch.setenv("GPT_IMAGE_BASE_URL", sandbox.base_url)
    locks = Path(os.environ["GPT_IMAGE_LOCK_DIR"])
    spool = Path(os.environ["GPT_IMAGE_SPOOL"])
    storage = "gpt-image-storage/" + save_block(s3_storage_block(local_s3, s3_bucket), "rel-sigint")
    settings = fast_settings(concurrency_limit=PARALLEL)
    settings_block = save_block(settings, "rel-sigint")
    prompts_file = tmp_path / "prompts.json"
    prompts_file.write_text(json.dumps([f"sigint row {i:02d}: a kite over dunes" for i in range(ROWS)]))
    log_path = tmp_path / "batch.log"
    process = crash_batch.start(prompts_file, storage, settings_block, PARALLEL, 600, log_path)
    try:
        deadline = time.monotonic() + 60
        while not (
            len([e for e in sandbox.ledger.entries if e["delivered"]]) >= PARALLEL
            and sandbox.ledger.in_flight >= 2
        ):
            assert process.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "no calls in flight came"
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGINT)
        try:
            code = process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the script hung after Ctrl-C:\n{log_path.read_text()[-3000:]}")
    finally:
        stop_process(process)
    output = log_path.read_text(errors="replace")
    assert CANARY_KEY not in output
    assert code != 0, output[-3000:]

    # wait for the calls that were in flight to end on the sandbox side (billed or not)
    deadline = time.monotonic() + LATENCY + 5
    while sandbox.ledger.in_flight:
        assert time.monotonic() < deadline, "a call never ended on the sandbox"
        time.sleep(0.05)
    kept = set(s3_image_hashes(local_s3, s3_bucket)) | spooled_images(spool)
    delivered = {sha for shas in delivered_images(sandbox).values() for sha in shas}
    assert delivered and delivered <= kept, output[-3000:]
    assert list(locks.glob("*.lock")) == [], output[-3000:]
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(settings.concurrency_limit_name)
    assert limit.active_slots == 0, output[-3000:]

    print(f"exit code {code} after Ctrl-C; {len(delivered)} delivered images kept")
