"""A batch of 200 against a sandbox that fails like the vendor: every image paid for is stored in
the bucket, every retry is accounted for, and a request that may have been billed is never retried
silently. Judged by the sandbox (its ledger, request log, prices and media GET counts) and by the
bytes in the real S3 bucket (tests/support/judge.py), never by the plugin's own log of itself.

Faults (seeded): 20% 429 without Retry-After, 5% each of 500/502/503, media URLs that fail before
they serve (2% once with 503, 2% three times with 404, 2% twice with 403, 1% twice each with a
reset and a cut body); optionally 3% connections dropped after the request was sent (billed,
answer lost). And a result URL that never serves within the media retry window: billed, not
delivered, and said so.
"""

from __future__ import annotations

import asyncio
import pickle
import re
from collections import Counter
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from prefect import flow

from prefect_gpt_image.api import DownloadError
from prefect_gpt_image.blocks import GptImageSettings, GptImageStorage
from prefect_gpt_image.flows import BatchResult, ChainResult, batch_generate, batch_pipeline
from prefect_gpt_image.local_s3 import LocalS3Server
from prefect_gpt_image.sandbox import FaultConfig
from prefect_gpt_image.sandbox.config import media_flake
from prefect_gpt_image.tasks import ImageRef, PartialDeliveryError, generate_image
from tests.support.judge import (
    assert_billed_once,
    assert_stored_equals_delivered,
    ledger_cost,
    media_counts,
    media_gets,
)

from .conftest import (
    CANARY_KEY,
    api_logs,
    fast_settings,
    s3_storage_block,
    save_block,
    table_rows,
)

pytestmark = pytest.mark.usefixtures("rel_env")

ROWS = 200
MEDIA_FAULTS = {
    "media_fail_once": 0.02,
    "media_flaky:404:3": 0.02,
    "media_flaky:403:2": 0.02,
    "media_flaky:reset:2": 0.01,
    "media_flaky:truncated:2": 0.01,
}
FAULTS = {"429": 0.20, "500": 0.05, "502": 0.05, "503": 0.05, **MEDIA_FAULTS}
DROP = 0.03
_RETRY_LINE = re.compile(r"gpt-image attempt (\d+) failed \(request id ([A-Za-z0-9_-]+)\)")
_TASK_RETRY = re.compile(r"(Task run|Batch row \d+) failed with .* - Retry \d+/\d+ will start")
_ROW_RETRY = re.compile(
    r"Batch row \d+ failed with .*\(request id: ([A-Za-z0-9_-]+)\)\S* - Retry \d+/\d+ will start"
)


@pytest.fixture
def bucket(local_s3: LocalS3Server, s3_bucket: str) -> tuple[LocalS3Server, str, str]:
    """The S3 bucket the batch stores into: (server, bucket, the storage block's slug)."""
    slug = "gpt-image-storage/" + save_block(s3_storage_block(local_s3, s3_bucket), "rel-faults-store")
    return local_s3, s3_bucket, slug


def _run(prompts: list[str], storage: str, **settings: Any) -> Any:
    block = save_block(fast_settings(**settings), "rel-faults")
    return batch_generate(prompts=prompts, storage=storage, settings_block=block, return_state=True)


def _expected_gets(fault: str | None) -> int:
    """GETs a delivered answer's result URL gets from a client that retries it: one, plus one for
    every failure the URL's fault serves first."""
    flake = media_flake(fault)
    return 1 + (flake.times if flake is not None else 0)


@pytest.mark.parametrize("mode", ["vendor-faults", "drops-default", "drops-opt-in"])
def test_batch_of_200_under_faults(
    mode: str,
    make_sandbox: Any,
    bucket: tuple[LocalS3Server, str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, name, storage = bucket
    probabilities = dict(FAULTS)
    if mode != "vendor-faults":
        probabilities["drop"] = DROP
    sandbox = make_sandbox(latency=0.02, faults=FaultConfig(probabilities=probabilities, seed=20260517))
    monkeypatch.setenv("GPT_IMAGE_API_KEY", CANARY_KEY)
    monkeypatch.setenv("GPT_IMAGE_BASE_URL", sandbox.base_url)
    opt_in = mode == "drops-opt-in"
    prompts = [f"reliability row {i:03d}: a paper boat on a pond" for i in range(ROWS)]
    # 10 attempts: a row failing 10 times in a row at 35% is a 3e-5 event; no Prefect task retry
    # (5 s later) is then needed for the transient faults.
    state = _run(prompts, storage, max_attempts=10, retry_outcome_unknown=opt_in)
    result: BatchResult = state.result(raise_on_failure=False)  # type: ignore[assignment]
    flow_run_id = state.state_details.flow_run_id
    entries = sandbox.ledger.entries
    requests = [r for r in sandbox.ledger.requests if r["endpoint"] == "/images/generations"]
    prompt_of = {r["request_id"]: r["fields"]["prompt"] for r in requests}
    undelivered = {e["request_id"] for e in entries if not e["delivered"]}

    # -- what was paid for is in the bucket (its bytes hashed), or reported ----------------------
    assert {e["fault"] for e in entries if not e["delivered"]} <= {"drop"}
    stored = assert_stored_equals_delivered(sandbox, (server, name))
    table = table_rows(flow_run_id)
    failed = {t["request_id"] for t in table if t["status"] == "failed"}
    retried_paid = {rid for t in table for rid in t["maybe_billed"].split(", ") if rid}
    assert failed | retried_paid == undelivered  # every paid answer without an image is named
    assert sandbox.ledger.billed_images == len(stored) + len(undelivered)
    assert {ref.sha256 for r in result.rows for ref in r.images} == set(stored)
    # billed once per prompt, except where the settings allow paying twice (a dropped answer retried)
    assert_billed_once(sandbox, prompts + ([prompt_of[rid] for rid in undelivered] if opt_in else []))
    # the run's cost is what the ledger charged for what was delivered (at the ledger's prices)
    delivered_ids = [e["request_id"] for e in entries if e["delivered"]]
    assert result.cost == pytest.approx(ledger_cost(sandbox, delivered_ids))
    if mode == "drops-default":
        assert undelivered, "the seed should drop some connections"
        outcome_unknown = {r.request_id for r in result.rows if r.error_type == "OutcomeUnknownError"}
        assert outcome_unknown == failed == undelivered and not retried_paid
        assert all("may have been billed" in t["error"] for t in table if t["status"] == "failed")
        assert state.is_failed() and f"OutcomeUnknownError: {len(undelivered)}" in (state.message or "")
        assert result.stored == ROWS - len(undelivered) == len(stored)
    else:
        assert state.is_completed(), state.message
        assert result.stored == ROWS == len(stored) and not failed
        if opt_in:
            assert undelivered, "the seed should drop some connections"
            assert {rid for r in result.rows for rid in r.maybe_billed} == retried_paid == undelivered
            message = state.message or ""
            assert f"{len(retried_paid)} retried attempt(s) may also have been billed" in message
        else:
            assert not undelivered and sandbox.ledger.billed_images == ROWS

    # -- every result URL was fetched exactly as often as it failed, plus once -------------------
    gets = media_gets(sandbox)
    faulted = Counter(e["fault"] for e in entries if e["fault"] in MEDIA_FAULTS)
    assert set(faulted) == set(MEDIA_FAULTS), f"the seed should give every media fault: {faulted}"
    wrong = {
        e["request_id"]: (e["fault"], gets.get(e["request_id"], 0))
        for e in entries
        if gets.get(e["request_id"], 0) != (_expected_gets(e["fault"]) if e["delivered"] else 0)
    }
    assert not wrong, f"media GETs other than the URL's failures + 1 (request: (fault, GETs)): {wrong}"

    # -- every API request is a first attempt or a logged retry ----------------------------------
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
    # A row whose client gave up (10 transient answers in a row, rare but possible) is run again
    # by the row's own retry, which names the last request.
    row_retried = [m.group(1) for m in map(_ROW_RETRY.search, messages) if m]
    assert len(row_retried) <= prefect_reruns and set(row_retried) <= set(by_id)
    for rid in row_retried:
        assert by_id[rid]["status"] in (429, 500, 502, 503), by_id[rid]
    statuses = Counter(r["status"] for r in requests)
    transient = sum(statuses[s] for s in (429, 500, 502, 503))
    assert transient == sum(by_id[rid]["status"] in (429, 500, 502, 503) for rid in [*retried, *row_retried])
    if mode == "drops-default":
        # a dropped request is never retried: not by the client, not by the row's retry
        assert not undelivered & set(retried) and not undelivered & set(row_retried)
        for row in result.rows:
            if row.error_type == "OutcomeUnknownError":
                last = [r for r in requests if r["fields"].get("prompt") == row.prompt][-1]
                assert last["request_id"] == row.request_id
    if opt_in:
        assert undelivered <= set(retried)


def _flaky_batch(
    make_sandbox: Any,
    bucket: tuple[LocalS3Server, str, str],
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
    **settings: Any,
) -> tuple[Any, Any, BatchResult, str, list[str]]:
    """A batch of 3 rows whose first answer gets ``fault``: (sandbox, state, result, the faulted
    request id, the prompts)."""
    sandbox = make_sandbox()
    sandbox.script_faults([fault])
    monkeypatch.setenv("GPT_IMAGE_API_KEY", CANARY_KEY)
    monkeypatch.setenv("GPT_IMAGE_BASE_URL", sandbox.base_url)
    prompts = [f"flaky media row {i}: a lighthouse at dusk" for i in range(3)]
    state = _run(prompts, bucket[2], **settings)
    result: BatchResult = state.result(raise_on_failure=False)  # type: ignore[assignment]
    (faulted,) = [e["request_id"] for e in sandbox.ledger.entries if e["fault"] == fault]
    return sandbox, state, result, faulted, prompts


def test_media_url_failing_three_times_is_stored_once_paid(
    make_sandbox: Any, bucket: tuple[LocalS3Server, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox, state, result, faulted, prompts = _flaky_batch(
        make_sandbox, bucket, monkeypatch, "media_flaky:404:3"
    )
    assert state.is_completed(), state.message
    stored = assert_stored_equals_delivered(sandbox, bucket[:2])
    assert len(stored) == 3
    assert media_gets(sandbox)[faulted] == 4  # three 404s, then the image
    assert_billed_once(sandbox, prompts)
    assert result.cost == pytest.approx(ledger_cost(sandbox))
    assert not [rid for r in result.rows for rid in r.maybe_billed]


def test_media_url_never_served_is_reported_billed_and_not_delivered(
    make_sandbox: Any, bucket: tuple[LocalS3Server, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox, state, result, faulted, prompts = _flaky_batch(
        make_sandbox, bucket, monkeypatch, "media_404", media_retry_seconds=0.5
    )
    assert state.is_failed()
    stored = assert_stored_equals_delivered(sandbox, bucket[:2], undelivered=[faulted])
    assert len(stored) == 2
    assert media_gets(sandbox)[faulted] > 1  # fetched again before it was given up
    assert_billed_once(sandbox, prompts)  # given up, not paid for again
    (row,) = [r for r in result.rows if r.status != "stored"]
    assert row.status == "failed" and row.error_type == "DownloadError" and row.request_id == faulted
    assert row.maybe_billed == [faulted] and row.undelivered == {faulted: 1}
    assert f"1 of 1 image(s) billed but not delivered (request id {faulted})" in (row.error or "")
    # the run's cost counts the lost image: all the ledger charged
    assert result.cost == pytest.approx(ledger_cost(sandbox))
    assert row.cost == pytest.approx(ledger_cost(sandbox, [faulted]))
    (table_row,) = [t for t in table_rows(state.state_details.flow_run_id) if t["status"] == "failed"]
    assert table_row["maybe_billed"] == faulted
    assert table_row["cost"] == pytest.approx(ledger_cost(sandbox, [faulted]), abs=1e-4)
    assert "1 image(s) billed but not delivered" in (state.message or "")


def test_pipeline_step_whose_url_is_never_served_is_billed_and_not_delivered(
    make_sandbox: Any,
    bucket: tuple[LocalS3Server, str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    sandbox = make_sandbox()
    sandbox.script_faults(["media_404"])
    monkeypatch.setenv("GPT_IMAGE_API_KEY", CANARY_KEY)
    monkeypatch.setenv("GPT_IMAGE_BASE_URL", sandbox.base_url)
    manifest = tmp_path / "rows.csv"
    manifest.write_text("id,subject\na,a kite\nb,a canoe\n")
    block = save_block(fast_settings(media_retry_seconds=0.5), "rel-faults")
    state = batch_pipeline(
        manifest=str(manifest),
        steps=[{"kind": "generate", "prompt": "{subject} at dawn"}],
        storage=bucket[2],
        settings_block=block,
        return_state=True,
    )
    result: ChainResult = state.result(raise_on_failure=False)  # type: ignore[assignment]
    (faulted,) = [e["request_id"] for e in sandbox.ledger.entries if e["fault"] == "media_404"]
    assert state.is_failed()
    assert_stored_equals_delivered(sandbox, bucket[:2], undelivered=[faulted])
    assert_billed_once(sandbox, ["a kite at dawn", "a canoe at dawn"])
    (step,) = [s for s in result.steps if s.status != "stored"]
    assert step.request_id == faulted and step.maybe_billed == [faulted] and step.undelivered == {faulted: 1}
    assert "billed but not delivered" in (step.error or "")
    assert result.cost == pytest.approx(ledger_cost(sandbox))
    assert "1 image(s) billed but not delivered" in (state.message or "")


def test_answer_of_three_with_one_url_never_served_stores_the_two_and_rerun_pays_only_the_third(
    make_sandbox: Any, bucket: tuple[LocalS3Server, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """n=3, the third result URL fails all through the media retry window: the two images that
    arrived are stored and listed, the third is reported billed and not delivered; the rerun asks
    the API for the missing image only (the partial record is not served as the answer), and a
    third run pays nothing."""
    sandbox = make_sandbox()
    fault = "media_flaky:404:50@2"  # image 2 (0-based) only; 50 failures outlast the 0.5 s window
    sandbox.script_faults([fault])
    monkeypatch.setenv("GPT_IMAGE_API_KEY", CANARY_KEY)
    monkeypatch.setenv("GPT_IMAGE_BASE_URL", sandbox.base_url)
    prompt = "three paper kites over a dune"
    block = save_block(fast_settings(media_retry_seconds=0.5), "rel-faults")

    def run() -> tuple[Any, BatchResult]:
        state = batch_generate(
            prompts=[prompt], n=3, storage=bucket[2], settings_block=block, return_state=True
        )
        return state, state.result(raise_on_failure=False)  # type: ignore[return-value]

    state, result = run()
    (entry,) = sandbox.ledger.entries
    faulted = entry["request_id"]
    lost_name = next(name for name, c in media_counts(sandbox).items() if c["fault"] is not None)
    lost = next(i["sha256"] for i in entry["images"] if str(i["url"]).endswith("/" + lost_name))
    arrived = sorted(i["sha256"] for i in entry["images"] if i["sha256"] != lost)
    assert len(arrived) == 2 and media_counts(sandbox)[lost_name]["hits"] > 1  # fetched again first
    stored = assert_stored_equals_delivered(sandbox, bucket[:2], undelivered=[faulted])
    assert sorted(stored) == arrived  # the two that arrived, by their bytes; not the lost one
    assert state.is_failed()
    (row,) = result.rows
    assert row.status == "failed" and row.error_type == "PartialDeliveryError" and row.request_id == faulted
    assert sorted(ref.sha256 for ref in row.images) == arrived
    assert row.maybe_billed == [faulted] and row.undelivered == {faulted: 1}
    assert f"1 of 3 image(s) billed but not delivered (request id {faulted})" in (row.error or "")
    assert result.cost == pytest.approx(ledger_cost(sandbox))  # 2 stored + 1 lost: all it billed
    (table_row,) = table_rows(state.state_details.flow_run_id)
    assert table_row["images"] == 2 and table_row["maybe_billed"] == faulted
    assert "1 image(s) billed but not delivered" in (state.message or "")

    state, result = run()  # the partial record: ask for the missing image only
    assert state.is_completed(), state.message
    answer, topup = sandbox.ledger.entries
    assert answer["request_id"] == faulted and topup["n"] == 1 and topup["delivered"]
    (row,) = result.rows
    made = topup["images"][0]["sha256"]
    assert sorted(ref.sha256 for ref in row.images) == sorted([*arrived, made])
    assert sorted(assert_stored_equals_delivered(sandbox, bucket[:2], undelivered=[faulted])) == sorted(
        [*arrived, made]
    )
    assert_billed_once(sandbox, [prompt, prompt])  # the answer of 3 and the top-up of 1

    state, result = run()  # the record is whole now: served, nothing paid
    assert state.is_completed(), state.message
    assert len(sandbox.ledger.entries) == 2
    assert sorted(ref.sha256 for ref in result.rows[0].images) == sorted([*arrived, made])


@flow
async def _three_images(prompt: str, storage: GptImageStorage, settings: GptImageSettings) -> list[ImageRef]:
    return await generate_image(prompt, n=3, storage=storage, settings=settings)


def test_image_task_whose_answer_is_partly_delivered_raises_with_the_stored_refs(
    make_sandbox: Any, bucket: tuple[LocalS3Server, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The task (not a batch row): the first image's URL is never served; the task fails with a
    PartialDeliveryError (a DownloadError) holding the refs of the two stored images, not retried
    by Prefect, and readable back after pickling; the rerun of the task pays for one image."""
    sandbox = make_sandbox()
    sandbox.script_faults(["media_404@0"])
    monkeypatch.setenv("GPT_IMAGE_API_KEY", CANARY_KEY)
    monkeypatch.setenv("GPT_IMAGE_BASE_URL", sandbox.base_url)
    settings, storage = fast_settings(media_retry_seconds=0.3), s3_storage_block(*bucket[:2])
    prompt = "three tin boats on a pond"
    state = asyncio.run(_three_images(prompt, storage, settings, return_state=True))  # type: ignore[call-overload]
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    (entry,) = sandbox.ledger.entries
    faulted = entry["request_id"]
    arrived = sorted(i["sha256"] for i in entry["images"] if not str(i["url"]).endswith("-1.png"))
    assert isinstance(error, PartialDeliveryError) and isinstance(error, DownloadError)
    assert error.request_id == faulted and error.undelivered == 1
    assert sorted(ref.sha256 for ref in error.refs) == arrived
    assert sorted(assert_stored_equals_delivered(sandbox, bucket[:2], undelivered=[faulted])) == arrived
    back = pickle.loads(cloudpickle.dumps(error))  # noqa: S301 - bytes this test just made
    assert type(back) is PartialDeliveryError and vars(back) == vars(error) and str(back) == str(error)

    refs = asyncio.run(_three_images(prompt, storage, settings))
    _, topup = sandbox.ledger.entries
    assert topup["n"] == 1
    assert sorted(ref.sha256 for ref in refs) == sorted([*arrived, topup["images"][0]["sha256"]])
