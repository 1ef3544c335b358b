"""The S3 server goes away for a few seconds in the middle of a batch and comes back: nothing paid
for is lost (the spool keeps it), and a rerun pays for nothing already paid for."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from prefect_gpt_image.flows import BatchResult, batch_generate
from prefect_gpt_image.local_s3 import LocalS3Server
from tests.support.judge import assert_stored_equals_delivered
from tests.support.s3 import manifest_in_bucket

from .conftest import (
    CANARY_KEY,
    api_logs,
    bucket_objects,
    fast_settings,
    s3_storage_block,
    save_block,
    unique,
    walk_files,
)

ROWS = 30
DOWN_SECONDS = 1.0
"""How long the server stays stopped; stopping and starting it add 2-3 s more without S3. Short
enough that Prefect's first task retry (5 s after a failure) finds it back."""


class Outage(threading.Thread):
    """Stop ``s3`` once some images are paid for and more calls are in flight; start it again
    ``DOWN_SECONDS`` later (same ports, same data)."""

    def __init__(self, sandbox: Any, s3: LocalS3Server, after_billed: int) -> None:
        super().__init__(daemon=True)
        self.sandbox, self.s3, self.after_billed = sandbox, s3, after_billed
        self.billed_at_stop: int | None = None
        self.window: tuple[float, float] | None = None

    def run(self) -> None:
        deadline = time.monotonic() + 120
        ledger = self.sandbox.ledger
        while time.monotonic() < deadline:
            if ledger.billed_images >= self.after_billed and ledger.in_flight >= 2:
                break
            time.sleep(0.01)
        else:
            return
        self.billed_at_stop = ledger.billed_images
        started = time.monotonic()
        self.s3.stop()
        time.sleep(DOWN_SECONDS)
        self.s3.start()
        self.window = (started, time.monotonic())


def _run(prompts: list[str], storage: str, settings_block: str) -> Any:
    return batch_generate(prompts=prompts, storage=storage, settings_block=settings_block, return_state=True)


def test_s3_outage_mid_batch_loses_nothing_and_the_rerun_pays_nothing(
    rel_env: Path, make_sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = make_sandbox(latency=0.5)
    monkeypatch.setenv("GPT_IMAGE_API_KEY", CANARY_KEY)
    monkeypatch.setenv("GPT_IMAGE_BASE_URL", sandbox.base_url)
    spool = Path(os.environ["GPT_IMAGE_SPOOL"])
    prompts = [f"outage row {i:02d}: a lighthouse in the fog" for i in range(ROWS)]
    with LocalS3Server() as s3:
        bucket = s3.create_bucket(unique("outage"))
        # fail_fast: no botocore retries, so the outage is seen at once (and spooled at once)
        storage = "gpt-image-storage/" + save_block(
            s3_storage_block(s3, bucket, fail_fast=True), "rel-outage"
        )
        settings_block = save_block(fast_settings(concurrency_limit=4), "rel-outage")

        outage = Outage(sandbox, s3, after_billed=6)
        outage.start()
        first = _run(prompts, storage, settings_block)
        outage.join(60)
        assert outage.window is not None, "the outage never happened"
        assert s3.running
        paid_before_rerun = sandbox.ledger.entries
        first_result: BatchResult = first.result(raise_on_failure=False)  # type: ignore[assignment]

        # the outage hit paid images: they went to the spool, and were stored from it (no new call)
        messages = [log["message"] for log in api_logs([first.state_details.flow_run_id])]
        spooled = [m for m in messages if "The images are spooled at" in m]

        second = _run(prompts, storage, settings_block)
        assert second.is_completed(), second.message
        second_result: BatchResult = second.result()  # type: ignore[assignment]
        entries = sandbox.ledger.entries

        # nothing paid twice: each prompt billed once over both runs; the rerun paid only for
        # rows the first run never paid for
        prompt_of = {r["request_id"]: r["fields"]["prompt"] for r in sandbox.ledger.requests}
        billed = Counter(prompt_of[e["request_id"]] for e in entries)
        assert set(billed) == set(prompts) and set(billed.values()) == {1}, billed
        new_in_rerun = {prompt_of[e["request_id"]] for e in entries[len(paid_before_rerun) :]}
        first_stored = {r.prompt for r in first_result.rows if r.status == "stored"}
        assert not new_in_rerun & {prompt_of[e["request_id"]] for e in paid_before_rerun}
        assert not new_in_rerun & first_stored

        # nothing lost: every paid image is in the bucket, with its manifest; the spool is empty
        keys = set(bucket_objects(s3, bucket))
        for entry in entries:
            for image in entry["images"]:
                assert f"gpt/images/{image['sha256']}.png" in keys
                manifest = manifest_in_bucket(s3, f"s3://{bucket}/gpt/images/{image['sha256']}.png")
                assert manifest is not None and manifest["request_id"] == entry["request_id"]
        assert {ref.sha256 for r in second_result.rows for ref in r.images} == {
            image["sha256"] for e in entries for image in e["images"]
        }
        assert_stored_equals_delivered(sandbox, (s3, bucket))  # the bytes, hashed
        assert list(walk_files(spool)) == []
        # the outage did hit paid images (the scenario's precondition, checked last so that the
        # ledger and the bucket judge first): they were stored from the spool, not paid again
        assert spooled, "no paid image met the outage: nothing was spooled"
