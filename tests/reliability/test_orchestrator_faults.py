"""Faults of the orchestrator itself, on a real Prefect server (PostgreSQL when installed) with a
real process worker running a deployment of ``batch_generate`` that stores into a real S3 bucket:
the run is cancelled as the UI's Cancel does, or the worker gets SIGTERM.

The sandbox is the judge, and counts exactly. It knows which answers it sent and whether the
client took the result whole (its ledger, and the GETs of each result URL): every image it
served whole is stored (the bucket's bytes, hashed) or in the worker's spool; an answer that
crossed the stop is one whose result was never fetched, sent after the stop; a rerun pays once
for each row the bucket does not hold, and for nothing it holds."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from pydantic import SecretStr

from prefect_gpt_image.blocks import GptImageCredentials
from prefect_gpt_image.local_s3 import LocalS3Server
from tests.support.judge import IMAGE_SUFFIXES, s3_image_hashes, unheld_answers_stored

from .conftest import CANARY_KEY, fast_settings, s3_storage_block, save_block, walk_files
from .workers import (
    TERMINAL,
    Worker,
    active_slots,
    create_pool,
    deploy_batch,
    run_deployment,
    start_worker,
    state_of,
    wait_for_state,
)

ROWS = 100
LIMIT = 4
LATENCY = 0.6


@dataclass
class Batch:
    """A deployment of the batch flow, its worker, and what its runs are judged by."""

    sandbox: Any
    worker: Worker
    deployment: UUID
    parameters: dict[str, Any]
    prompts: list[str]
    s3: LocalS3Server
    bucket: str
    spool: Path
    limit_name: str

    def run(self) -> UUID:
        return run_deployment(self.deployment, self.parameters)

    def prompt_of(self) -> dict[str, str]:
        return {r["request_id"]: r["fields"].get("prompt", "") for r in self.sandbox.ledger.requests}

    def kept(self) -> set[str]:
        """The sha256 of the bytes of every image in the bucket or the worker's spool."""
        spooled = {
            hashlib.sha256(p.read_bytes()).hexdigest()
            for p in walk_files(self.spool)
            if p.suffix in IMAGE_SUFFIXES
        }
        return set(s3_image_hashes(self.s3, self.bucket)) | spooled

    def wait_mid_batch(self, run_id: UUID, delivered: int = 10) -> None:
        """Until ``delivered`` requests were delivered and calls are in flight."""
        deadline = time.monotonic() + 90
        ledger = self.sandbox.ledger
        while not (len([e for e in ledger.entries if e["delivered"]]) >= delivered and ledger.in_flight >= 2):
            assert state_of(run_id)[0] not in TERMINAL, self.worker.log()
            assert time.monotonic() < deadline, f"no moment mid-batch came:\n{self.worker.log()}"
            time.sleep(0.02)

    def settle(self) -> None:
        """Until the sandbox has no call in flight (a call cut off ends there too)."""
        deadline = time.monotonic() + LATENCY + 10
        while self.sandbox.ledger.in_flight:
            assert time.monotonic() < deadline, "a call never ended on the sandbox"
            time.sleep(0.05)

    def taken_whole(self) -> dict[str, bool]:
        """For each answer the sandbox sent whole (billed, delivered): whether every result URL of
        it was then served whole. (One image per row: fetched or not, nothing in between.)"""
        served: Counter[str] = Counter()
        asked: Counter[str] = Counter()
        for counted in self.sandbox.media_counts().values():
            asked[str(counted["request_id"])] += counted["hits"]
            served[str(counted["request_id"])] += counted["served"]
        out = {}
        for entry in self.sandbox.ledger.entries:
            if entry["delivered"]:
                rid = entry["request_id"]
                assert asked[rid] == served[rid], f"request {rid}: a result GET was not served whole"
                out[rid] = served[rid] >= entry["n"]
        return out

    def rerun_pays_once_for_each_row_not_kept(self) -> Counter[str]:
        """A rerun of the same batch (here in this process, with the worker's spool, as a new
        worker on the same volume would): it pays once for each row whose images are neither in
        the bucket nor in the spool, and for nothing else; everything ends in the bucket."""
        from prefect_gpt_image.flows import batch_generate

        kept = self.kept()
        prompt_of = self.prompt_of()
        kept_rows = {
            prompt_of[e["request_id"]]
            for e in self.sandbox.ledger.entries
            if e["delivered"] and {i["sha256"] for i in e["images"]} <= kept
        }
        # the rerun need not be slow: the sandbox answers at once from now on
        self.sandbox.state.config = dataclasses.replace(self.sandbox.state.config, latency=0.05)
        billed_before = len(self.sandbox.ledger.entries)
        os.environ["GPT_IMAGE_SPOOL"] = str(self.spool)  # restored by rel_env's monkeypatch
        state = batch_generate(**self.parameters, return_state=True)
        assert state.is_completed(), state.message
        prompt_of = self.prompt_of()
        new = Counter(prompt_of[e["request_id"]] for e in self.sandbox.ledger.entries[billed_before:])
        assert new == Counter(set(self.prompts) - kept_rows), new
        delivered_last = {
            prompt_of[e["request_id"]]: e for e in self.sandbox.ledger.entries if e["delivered"]
        }
        assert set(delivered_last) == set(self.prompts)
        stored = set(s3_image_hashes(self.s3, self.bucket))
        assert {i["sha256"] for e in delivered_last.values() for i in e["images"]} <= stored
        assert list(walk_files(self.spool)) == []
        return new

    def check_no_slot_left(self, timeout: float = 10.0) -> None:
        """Wait until the limit has no active slot (the server's state)."""
        deadline = time.monotonic() + timeout
        while (slots := active_slots(self.limit_name)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert slots == 0, (slots, self.worker.log())


@pytest.fixture
def batch(
    rel_env: Path,
    prefect_server: Any,
    make_sandbox: Any,
    local_s3: LocalS3Server,
    s3_bucket: str,
    tmp_path: Path,
) -> Iterator[Batch]:
    sandbox = make_sandbox(latency=LATENCY, keys=(CANARY_KEY,))
    settings = fast_settings(concurrency_limit=LIMIT)
    prompts = [f"orchestrator row {i:03d}: a paper boat" for i in range(ROWS)]
    parameters = {
        "settings_block": save_block(settings, "rel-orch"),
        "credentials_block": save_block(
            GptImageCredentials(api_key=SecretStr(CANARY_KEY), base_url=sandbox.base_url), "rel-orch"
        ),
        "storage": "gpt-image-storage/" + save_block(s3_storage_block(local_s3, s3_bucket), "rel-orch"),
        "prompts": prompts,
    }
    pool = create_pool(prefect_server, tmp_path / "cli")
    worker = start_worker(prefect_server, pool, tmp_path / "worker")
    try:
        yield Batch(
            sandbox=sandbox,
            worker=worker,
            deployment=deploy_batch(pool),
            parameters=parameters,
            prompts=prompts,
            s3=local_s3,
            bucket=s3_bucket,
            spool=tmp_path / "worker" / "spool",
            limit_name=settings.concurrency_limit_name,
        )
    finally:
        sandbox.hold.release()
        worker.stop()


def test_cancel_mid_batch_from_the_api_as_the_ui_does(batch: Batch) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    run_id = batch.run()
    batch.wait_mid_batch(run_id)
    with get_client(sync_client=True) as client:  # what the UI's Cancel button sends
        stop = time.time()
        client.set_flow_run_state(run_id, Cancelling())
    assert wait_for_state(run_id, TERMINAL, 60, batch.worker) == "CANCELLED"
    batch.settle()

    ledger = batch.sandbox.ledger
    finished = {r["request_id"]: r["finished"] for r in ledger.requests}
    taken = batch.taken_whole()
    kept = batch.kept()
    # every image the sandbox served whole is stored (or spooled), byte for byte
    whole = [e for e in ledger.entries if taken.get(e["request_id"])]
    lost = [e["request_id"] for e in whole if not {i["sha256"] for i in e["images"]} <= kept]
    assert not lost, (lost, batch.worker.log())
    # the answers sent whole but never taken are exactly those that crossed the cancel: the
    # sandbox sent them after it was asked for (an answer the client had before it, it stores)
    crossed = [rid for rid, whole in taken.items() if not whole]
    early = [rid for rid in crossed if (finished[rid] or 0.0) < stop]
    assert not early, (early, stop, batch.worker.log())
    assert len(whole) < ROWS, "the batch ended before it was cancelled"
    cut = sum(not e["delivered"] for e in ledger.entries)
    batch.check_no_slot_left()
    new = batch.rerun_pays_once_for_each_row_not_kept()
    prompt_of = batch.prompt_of()
    assert {prompt_of[rid] for rid in crossed} <= set(new)
    print(f"{len(whole)} rows taken whole; {len(crossed)} crossed the cancel; {cut} cut off unanswered")


def _flow_run_pid(run_id: UUID) -> int | None:
    """The flow-run process's pid, as the worker recorded it on the server (``host:pid``)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        recorded = client.read_flow_run(run_id).infrastructure_pid
    tail = (recorded or "").rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else None


def test_worker_sigterm_mid_batch(batch: Batch) -> None:
    """A deploy or a pod eviction: SIGTERM to ``prefect worker start`` (its PID only, as
    Kubernetes signals a container's first process) while it runs a batch, at a moment the sandbox
    chose: from some point every result download is held, and the signal comes once one waits
    and every answer served before is stored. Prefect's worker takes its flow-run process with it
    at once (a kill -9 for the plugin). Then a rerun with the worker's spool (a volume that
    outlives the pod)."""
    ledger = batch.sandbox.ledger
    run_id = batch.run()
    batch.wait_mid_batch(run_id)
    pid = _flow_run_pid(run_id)
    assert pid is not None, "the worker recorded no flow-run process"

    def every_served_answer_stored() -> bool:
        return unheld_answers_stored(batch.sandbox, batch.s3, batch.bucket, "gpt")

    batch.sandbox.hold.hold()  # no download is served from now on, until the judging is done
    deadline = time.monotonic() + 90
    while not (batch.sandbox.hold.held and every_served_answer_stored()):
        assert state_of(run_id)[0] not in TERMINAL, batch.worker.log()
        assert time.monotonic() < deadline, f"no moment to stop the worker came:\n{batch.worker.log()}"
        time.sleep(0.02)
    os.kill(batch.worker.process.pid, signal.SIGTERM)
    try:
        code = batch.worker.process.wait(30)
    except Exception:
        pytest.fail(f"the worker did not stop within 30 s of SIGTERM:\n{batch.worker.log()}")
    # the flow-run process went with its worker (waited on as the OS has it, not for a while)
    deadline = time.monotonic() + 30
    while _alive(pid):
        assert time.monotonic() < deadline, f"the flow-run process {pid} outlived its worker"
        time.sleep(0.05)
    batch.settle()
    final, message = state_of(run_id)

    # every answer the sandbox served whole is stored, byte for byte; the ones paid and not
    # kept are exactly those it never served: held in their downloads, or cut off unanswered
    taken = batch.taken_whole()
    kept = batch.kept()
    by_id = {e["request_id"]: e for e in ledger.entries}
    not_kept = {rid for rid, e in by_id.items() if not {i["sha256"] for i in e["images"]} <= kept}
    never_served = {rid for rid, e in by_id.items() if not taken.get(rid, False)}
    assert not_kept == never_served, (not_kept, never_served, batch.worker.log())
    held = {rid for rid in never_served if by_id[rid]["delivered"]}
    cut = never_served - held
    assert held, "no answer waited in its download at the stop"
    assert len(by_id) < ROWS, "the batch ended before the worker was stopped"
    batch.sandbox.hold.release()
    # The killed flow-run process's global-limit slots stay taken until their leases expire
    # (a known limit): the rerun uses a limit of its own.
    batch.parameters["settings_block"] = save_block(fast_settings(concurrency_limit=LIMIT), "rel-orch-rerun")
    new = batch.rerun_pays_once_for_each_row_not_kept()
    prompt_of = batch.prompt_of()
    assert {prompt_of[rid] for rid in never_served} <= set(new)
    print(
        f"worker exited {code}; the run was left {final} ({message}); paid again: {len(held)} answered "
        f"and held, {len(cut)} cut off unanswered"
    )


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"
