"""The Prefect server goes away for 20 s in the middle of a batch run by a process worker
(PostgreSQL kept), then comes back on the same port. The sandbox never has more calls in flight
than the global limit; every image it delivered is stored; the run finishes, or a rerun completes
it paying only for what was never delivered. What happened at each step is printed."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from prefect_gpt_image.blocks import GptImageCredentials
from prefect_gpt_image.local_prefect import LocalPrefectServer

from .conftest import CANARY_KEY, fast_settings, image_files, save_block, walk_files
from .workers import TERMINAL, create_pool, deploy_batch, run_deployment, start_worker, state_of

ROWS = 60
LIMIT = 4
LATENCY = 0.5
OUTAGE = 20.0

pytestmark = pytest.mark.usefixtures("needs_postgres")  # skipped without PostgreSQL, fails in CI


def test_prefect_server_outage_mid_batch(make_sandbox: Any, tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings

    sandbox = make_sandbox(latency=LATENCY, keys=(CANARY_KEY,))
    server = LocalPrefectServer(tmp_path / "server", database="postgres")
    worker = None
    try:
        server.start()
        with temporary_settings({PREFECT_API_URL: server.api_url, PREFECT_SERVER_ANALYTICS_ENABLED: False}):
            settings = fast_settings(concurrency_limit=LIMIT)
            storage = tmp_path / "store"
            parameters = {
                "settings_block": save_block(settings, "rel-outage"),
                "credentials_block": save_block(
                    GptImageCredentials(api_key=SecretStr(CANARY_KEY), base_url=sandbox.base_url),
                    "rel-outage",
                ),
                "storage": str(storage),
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

            down = time.time()
            delivered_at_stop = len([e for e in ledger.entries if e["delivered"]])
            server.stop()
            steps = [f"server stopped with {delivered_at_stop} rows delivered, {ledger.in_flight} in flight"]
            time.sleep(OUTAGE)
            during = [r for r in ledger.requests if r["started"] > down]
            steps.append(f"{len(during)} calls started while it was down")
            server.start()
            steps.append(f"server back after {time.time() - down:.0f} s")
            deadline = time.monotonic() + 120
            while (current := state_of(run_id))[0] not in TERMINAL and time.monotonic() < deadline:
                time.sleep(0.5)
            steps.append(
                f"the run ended {current[0]} ({current[1]}) {time.time() - down:.0f} s after the stop"
            )
            assert ledger.stats()["max_in_flight"] <= LIMIT, ledger.stats()
            delivered = {img["sha256"] for e in ledger.entries if e["delivered"] for img in e["images"]}
            spool = tmp_path / "worker" / "spool"
            kept = {p.stem for p in image_files(storage / "images")}
            kept |= {p.stem for p in walk_files(spool) if p.suffix in (".png", ".jpeg", ".webp")}
            assert delivered <= kept, worker.log()
            prompt_of = {r["request_id"]: r["fields"]["prompt"] for r in ledger.requests}
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
            assert len(image_files(storage / "images")) == ROWS
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
