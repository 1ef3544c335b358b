"""The Prefect server goes away for 20 s in the middle of a batch run by a process worker
(PostgreSQL kept), then comes back on the same port. Calls went on while it was away: the
sandbox's request log has calls that started and were answered while no server process existed
(from the moment its process was reaped to the moment a new one was started). The sandbox never
has more calls in flight than the global limit; every image it delivered is in the S3 bucket (its
bytes, hashed) or the worker's spool; the run finishes, or a rerun completes it paying only for
what was never delivered. What happened at each step is printed."""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from prefect_gpt_image.blocks import GptImageCredentials
from prefect_gpt_image.local_prefect import LocalPrefectServer
from prefect_gpt_image.local_s3 import LocalS3Server
from tests.support.judge import IMAGE_SUFFIXES, s3_image_hashes

from .conftest import CANARY_KEY, fast_settings, s3_storage_block, save_block, walk_files
from .workers import TERMINAL, create_pool, deploy_batch, run_deployment, start_worker, state_of

ROWS = 60
LIMIT = 4
LATENCY = 0.5
OUTAGE = 20.0
"""Seconds the server stays away at least (and until calls were answered in its absence)."""

pytestmark = pytest.mark.usefixtures("needs_postgres")  # skipped without PostgreSQL, fails in CI


def test_prefect_server_outage_mid_batch(
    make_sandbox: Any, local_s3: LocalS3Server, s3_bucket: str, tmp_path: Path
) -> None:
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings

    sandbox = make_sandbox(latency=LATENCY, keys=(CANARY_KEY,))
    server = LocalPrefectServer(tmp_path / "server", database="postgres")
    worker = None
    try:
        server.start()
        with temporary_settings({PREFECT_API_URL: server.api_url, PREFECT_SERVER_ANALYTICS_ENABLED: False}):
            settings = fast_settings(concurrency_limit=LIMIT)
            parameters = {
                "settings_block": save_block(settings, "rel-outage"),
                "credentials_block": save_block(
                    GptImageCredentials(api_key=SecretStr(CANARY_KEY), base_url=sandbox.base_url),
                    "rel-outage",
                ),
                "storage": "gpt-image-storage/"
                + save_block(s3_storage_block(local_s3, s3_bucket), "rel-outage"),
                "prompts": [f"outage row {i:02d}: a lighthouse keeper" for i in range(ROWS)],
            }
            pool = create_pool(server, tmp_path / "cli")
            deployment = deploy_batch(pool)
            worker = start_worker(server, pool, tmp_path / "worker")
            run_id = run_deployment(deployment, parameters)
            ledger = sandbox.ledger
            deadline = time.monotonic() + 90
            while not (len([e for e in ledger.entries if e["delivered"]]) >= 8 and ledger.in_flight >= 2):
                assert state_of(run_id)[0] not in TERMINAL, worker.log()
                assert time.monotonic() < deadline, worker.log()
                time.sleep(0.02)

            delivered_at_stop = len([e for e in ledger.entries if e["delivered"]])
            server.stop()
            assert not server.running
            gone = time.time()  # its process is reaped: nothing answers on its port from here
            steps = [f"server stopped with {delivered_at_stop} rows delivered, {ledger.in_flight} in flight"]

            def answered_while_gone() -> list[dict[str, Any]]:
                delivered = {e["request_id"] for e in ledger.entries if e["delivered"]}
                return [
                    r
                    for r in ledger.requests
                    if r["request_id"] in delivered and r["started"] > gone and r["finished"] is not None
                ]

            # away at least OUTAGE seconds, and until the sandbox answered calls started meanwhile
            # (the flow-run process ended first would fail here, not hang)
            away = time.monotonic()
            while time.monotonic() - away < OUTAGE or not answered_while_gone():
                assert worker.process.poll() is None, worker.log()
                assert time.monotonic() - away < OUTAGE + 60, "no call was answered while the server was away"
                time.sleep(0.2)
            back = time.time()  # no server process existed until now
            server.start()
            during = [r for r in answered_while_gone() if r["finished"] < back]
            assert during, "no call started and was answered while the server was away"
            steps.append(
                f"{len(during)} calls started and were answered while it was away ({back - gone:.0f} s)"
            )
            deadline = time.monotonic() + 120
            while (current := state_of(run_id))[0] not in TERMINAL and time.monotonic() < deadline:
                time.sleep(0.5)
            steps.append(
                f"the run ended {current[0]} ({current[1]}) {time.time() - gone:.0f} s after the stop"
            )
            assert ledger.stats()["max_in_flight"] <= LIMIT, ledger.stats()
            delivered = {img["sha256"] for e in ledger.entries if e["delivered"] for img in e["images"]}
            spool = tmp_path / "worker" / "spool"
            kept = set(s3_image_hashes(local_s3, s3_bucket))
            kept |= {
                hashlib.sha256(p.read_bytes()).hexdigest()
                for p in walk_files(spool)
                if p.suffix in IMAGE_SUFFIXES
            }
            assert delivered <= kept, worker.log()
            # the calls answered while the server was away are among them: stored, not lost
            answered_away = {
                i["sha256"]
                for r in during
                for i in (ledger.entry(r["request_id"]) or {"images": []})["images"]
            }
            assert answered_away and answered_away <= kept
            prompt_of = prompt_of_all(ledger)
            delivered_prompts = {prompt_of[e["request_id"]] for e in ledger.entries if e["delivered"]}
            if current[0] != "COMPLETED":
                billed_before = len(ledger.entries)
                run_id = run_deployment(deployment, parameters)
                deadline = time.monotonic() + 120
                while (current := state_of(run_id))[0] not in TERMINAL and time.monotonic() < deadline:
                    time.sleep(0.5)
                assert current[0] == "COMPLETED", (current, worker.log())
                new = Counter(prompt_of_all(ledger)[e["request_id"]] for e in ledger.entries[billed_before:])
                assert set(new.values()) <= {1} and set(new) == set(parameters["prompts"]) - delivered_prompts
                steps.append(f"a rerun completed it, paying for {len(new)} rows never delivered")
            stored = set(s3_image_hashes(local_s3, s3_bucket))
            final = {prompt_of_all(ledger)[e["request_id"]]: e for e in ledger.entries if e["delivered"]}
            assert set(final) == set(parameters["prompts"])
            assert {i["sha256"] for e in final.values() for i in e["images"]} <= stored
            billed = Counter(prompt_of_all(ledger)[e["request_id"]] for e in ledger.entries if e["delivered"])
            assert set(billed.values()) == {1}, billed
            print("; ".join(steps))
    finally:
        if worker is not None:
            worker.stop()
        server.close()


def prompt_of_all(ledger: Any) -> dict[str, str]:
    """The prompt of every request the sandbox saw, by request id."""
    return {r["request_id"]: r["fields"]["prompt"] for r in ledger.requests}
