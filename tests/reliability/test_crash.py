"""kill -9 of the process running a batch, at a moment the sandbox chose, then a rerun; and a lock
of another machine, honoured while it lives and taken over once it expired.

The kill: the sandbox holds the downloads of ``HELD`` answers (:mod:`prefect_gpt_image.sandbox.hold`),
so the process dies between "the API answered, the call is billed" and "the images are stored",
with another call in flight and earlier rows stored. The rerun's bill is judged by the ledger and
the S3 bucket: it pays once for every row whose images the bucket does not hold (the held answers,
the call in flight, the rows never called) and for nothing the bucket holds.

The other machine: a batch process with another host name, its own ``PREFECT_HOME``, sharing the
lock folder, holds the locks of two calls (their downloads held) and is killed. Its locks are not
stale at once (its pid means nothing here): this process's run of the same rows waits for them,
pays for no locked row while they live, and makes those calls after they expired, not before.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from prefect_gpt_image.flows import BatchResult, batch_generate
from prefect_gpt_image.local_prefect import stop_process
from prefect_gpt_image.local_s3 import LocalS3Server
from tests.support.judge import bucket_objects, held_requests, s3_image_hashes, unheld_answers_stored

from . import crash_batch
from .conftest import CANARY_KEY, fast_settings, s3_storage_block, save_block, walk_files

ROWS = 12
PARALLEL = 4
"""Rows the killed process runs at once (``max_parallel``)."""
HELD = 2
"""Answers whose downloads the sandbox holds at the kill: delivered, billed, never stored."""
LATENCY = 1.0
"""Seconds per image: the rows still running spend most of their time in it, not storing."""
OTHER_HOST = "machine-b.example"
"""The host name the other machine's process writes into its lock files."""
OTHER_HOLD = 12.0
"""How long the other machine's locks live (``call_deadline_seconds`` of that process)."""


def wait_until(
    what: str, predicate: Callable[[], bool], process: subprocess.Popen[bytes] | None, log: Path
) -> None:
    """Poll the sandbox's or the bucket's state until ``predicate``; fail if the process ended."""
    deadline = time.monotonic() + 120
    while not predicate():
        if process is not None and process.poll() is not None:
            pytest.fail(f"the batch process ended before {what}:\n{log.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"never came: {what}:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.02)


class Bucket:
    """The test's bucket on the real S3 server: listed to wait on, hashed to judge."""

    def __init__(self, s3: LocalS3Server, bucket: str) -> None:
        self.s3, self.bucket = s3, bucket

    def keys(self, folder: str) -> list[str]:
        """The keys under the store's ``folder`` (``images``, ``cache``)."""
        return [key for key in bucket_objects(self.s3, self.bucket) if key.startswith(f"gpt/{folder}/")]

    def image_names(self) -> set[str]:
        """The sha256 each stored image's key names (one listing: what the tests wait on)."""
        return {key.rsplit("/", 1)[-1].split(".")[0] for key in self.keys("images")}

    def image_shas(self) -> set[str]:
        """The sha256 of each stored image's bytes (what the tests judge by)."""
        return set(s3_image_hashes(self.s3, self.bucket))


def _prompt_of(sandbox: Any) -> dict[str, str]:
    return {r["request_id"]: r["fields"].get("prompt", "") for r in sandbox.ledger.requests}


def _shas(entry: dict[str, Any]) -> set[str]:
    return {image["sha256"] for image in entry["images"]}


@pytest.fixture
def s3_store(rel_env: Path, local_s3: LocalS3Server, s3_bucket: str) -> Iterator[tuple[str, Bucket]]:
    """A storage block on a fresh bucket of the real S3 server (its name for ``storage=``), and the bucket."""
    yield (
        "gpt-image-storage/" + save_block(s3_storage_block(local_s3, s3_bucket), "rel-crash"),
        Bucket(local_s3, s3_bucket),
    )


def test_kill_9_between_answer_and_store_then_the_rerun_pays_only_for_what_is_not_stored(
    s3_store: tuple[str, Bucket], make_sandbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage, bucket = s3_store
    sandbox = make_sandbox(latency=LATENCY)
    monkeypatch.setenv("GPT_IMAGE_API_KEY", CANARY_KEY)
    monkeypatch.setenv("GPT_IMAGE_BASE_URL", sandbox.base_url)
    locks = Path(os.environ["GPT_IMAGE_LOCK_DIR"])
    spool = Path(os.environ["GPT_IMAGE_SPOOL"])
    settings_block = save_block(fast_settings(concurrency_limit=PARALLEL), "rel-crash")
    prompts = [f"crash row {i:02d}: a windmill at dusk" for i in range(ROWS)]
    prompts_file = tmp_path / "prompts.json"
    prompts_file.write_text(json.dumps(prompts))
    log = tmp_path / "crashed-batch.log"
    ledger = sandbox.ledger

    def delivered() -> list[dict[str, Any]]:
        return [e for e in ledger.entries if e["delivered"]]

    def records_and_images_of_unheld_answers_stored() -> bool:
        return unheld_answers_stored(sandbox, bucket.s3, bucket.bucket, "gpt")

    process = crash_batch.start(prompts_file, storage, settings_block, PARALLEL, 600, log)
    try:
        # some rows stored first, then the next HELD downloads are held by the sandbox; the kill
        # comes once they wait, another call is in the middle of its latency, and every other
        # answer is stored (no call is half stored: the window is exactly the held answers)
        wait_until(
            "4 rows stored",
            lambda: len(delivered()) >= 4 and records_and_images_of_unheld_answers_stored(),
            process,
            log,
        )
        sandbox.hold.hold(HELD)
        # The bucket's listing (slow under load) first, then the sandbox's own state, read last
        # so that a call seen in flight is still in flight at the kill (its latency is 1 s).
        wait_until(
            f"{HELD} downloads held with a call in flight and every other answer stored",
            lambda: (
                records_and_images_of_unheld_answers_stored()
                and len(sandbox.hold.held) == HELD
                and ledger.in_flight >= 1
            ),
            process,
            log,
        )
        held = held_requests(sandbox)
        in_flight = {r["request_id"] for r in ledger.requests if r["finished"] is None}
        killed_at = time.time()
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(10) == -signal.SIGKILL
    finally:
        stop_process(process)
        sandbox.hold.release()
    wait_until("the calls cut off by the kill ended on the sandbox", lambda: ledger.in_flight == 0, None, log)

    before = ledger.entries
    prompt_of = _prompt_of(sandbox)
    stored = bucket.image_shas()
    # the window was hit: the held answers were billed and delivered, their images are not stored;
    # the call cut off in flight was billed and never delivered
    by_id = {e["request_id"]: e for e in before}
    window = {rid: (by_id[rid]["delivered"], sorted(_shas(by_id[rid]) & stored)) for rid in held}
    assert all(ok and not kept for ok, kept in window.values()), f"held -> (delivered, stored shas): {window}"
    # (one that ended in the instant between our look and the kill was not cut off)
    ended = {r["request_id"]: r["finished"] for r in ledger.requests}
    cut = {rid for rid in in_flight if rid in by_id and not (ended.get(rid) or killed_at) < killed_at}
    assert cut and all(not by_id[rid]["delivered"] for rid in cut), (in_flight, before)
    stored_prompts = {prompt_of[e["request_id"]] for e in before if e["delivered"] and _shas(e) <= stored}
    assert stored_prompts and not stored_prompts & {prompt_of[rid] for rid in held | cut}

    # the rerun: a limit of its own (the dead process's leases expire in their own time)
    rerun_block = save_block(fast_settings(concurrency_limit=PARALLEL), "rel-crash-rerun")
    result: BatchResult = batch_generate(prompts=prompts, storage=storage, settings_block=rerun_block)  # type: ignore[assignment]
    assert result.stored == ROWS

    # its bill: once for each row whose images the bucket did not hold, nothing for one it held
    prompt_of = _prompt_of(sandbox)
    new = Counter(prompt_of[e["request_id"]] for e in ledger.entries[len(before) :])
    assert new == Counter(set(prompts) - stored_prompts), new
    # every row is stored, each image under its own hash, as the sandbox delivered it
    delivered_last = {prompt_of[e["request_id"]]: _shas(e) for e in ledger.entries if e["delivered"]}
    assert set(delivered_last) == set(prompts)
    assert {ref.sha256 for row in result.rows for ref in row.images} == set().union(*delivered_last.values())
    assert set().union(*delivered_last.values()) == bucket.image_shas()
    assert list(walk_files(spool)) == [] and list(locks.glob("*.lock")) == []


def test_a_lock_of_another_machine_is_honoured_while_it_lives_and_taken_over_after_it_expired(
    s3_store: tuple[str, Bucket], make_sandbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage, bucket = s3_store
    sandbox = make_sandbox(latency=0.2)
    monkeypatch.setenv("GPT_IMAGE_API_KEY", CANARY_KEY)
    monkeypatch.setenv("GPT_IMAGE_BASE_URL", sandbox.base_url)
    locks = Path(os.environ["GPT_IMAGE_LOCK_DIR"])
    settings_block = save_block(fast_settings(concurrency_limit=8), "rel-machines")
    locked = [f"machines row {i}: a lamp in a window" for i in range(2)]
    free = [f"machines row {i}: a lamp in a window" for i in range(2, 4)]
    (tmp_path / "theirs.json").write_text(json.dumps(locked))
    (tmp_path / "ours.json").write_text(json.dumps(locked + free))
    theirs_log, ours_log = tmp_path / "other-machine.log", tmp_path / "this-machine.log"
    other_home = tmp_path / "other-machine"
    other_env = {
        **os.environ,
        "PREFECT_HOME": str(other_home / "prefect"),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(other_home / "prefect" / "storage"),
        "GPT_IMAGE_SPOOL": str(other_home / "spool"),
        crash_batch.HOST_ENV: OTHER_HOST,
    }
    sandbox.hold.hold(len(locked))  # the other machine's two answers wait in their downloads
    theirs = crash_batch.start(
        tmp_path / "theirs.json", storage, settings_block, 2, OTHER_HOLD, theirs_log, env=other_env
    )
    ours: subprocess.Popen[bytes] | None = None
    prompt_count = lambda: Counter(_prompt_of(sandbox).values())  # noqa: E731
    try:
        wait_until(
            "the other machine holds two locks", lambda: len(sandbox.hold.held) == 2, theirs, theirs_log
        )
        held_locks = [json.loads(p.read_text()) for p in locks.glob("*.lock")]
        assert len(held_locks) == 2 and {lock["host"] for lock in held_locks} == {OTHER_HOST}
        # (which lock is which row's is the plugin's cache key: both were taken within milliseconds,
        # the earlier expiry bounds both takeovers)
        expires = min(lock["expires"] for lock in held_locks)

        ours = crash_batch.start(tmp_path / "ours.json", storage, settings_block, 4, 600, ours_log)
        # this machine stores the free rows; the locked ones wait while the other machine lives ...
        wait_until(
            "this machine stored the free rows",
            lambda: all(prompt_count()[p] == 1 for p in free) and len(bucket.image_names()) == len(free),
            ours,
            ours_log,
        )
        assert all(prompt_count()[p] == 1 for p in locked), prompt_count()
        # ... and after it died (kill -9: its locks are not released), until they expire
        os.kill(theirs.pid, signal.SIGKILL)
        assert theirs.wait(10) == -signal.SIGKILL
        assert time.time() < expires, "the setup took longer than the other machine's locks live"
        code = ours.wait(OTHER_HOLD + 120)
    finally:
        stop_process(theirs)
        if ours is not None:
            stop_process(ours)
        sandbox.hold.release()
    assert code == 0, ours_log.read_text(errors="replace")[-3000:]

    # the locked rows were paid for by this machine only after the other machine's locks expired
    requests = sandbox.ledger.requests
    theirs_ids = set()
    for prompt in locked:
        first, second = (r for r in requests if r["fields"].get("prompt") == prompt)
        assert first["started"] < expires <= second["started"], (prompt, second["started"] - expires)
        theirs_ids.add(first["request_id"])
    assert prompt_count() == Counter({**dict.fromkeys(locked, 2), **dict.fromkeys(free, 1)})
    # every row is stored, as this machine's answers delivered it; no lock is left
    mine = [e for e in sandbox.ledger.entries if e["request_id"] not in theirs_ids]
    assert len(mine) == 4 and all(e["delivered"] for e in mine)
    assert set().union(*(_shas(e) for e in mine)) == bucket.image_shas()
    assert list(locks.glob("*.lock")) == []
