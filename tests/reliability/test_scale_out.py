"""Scale-out: a Prefect server on PostgreSQL, two process workers on one work pool, two batch
deployments runs at once with overlapping prompts, S3-compatible storage, a shared lock folder.

The same limits hold across workers: the sandbox never has more calls in flight than the global
concurrency limit, and no request is billed twice (each distinct prompt is billed once, whichever
worker got there first; the other finds its cache record). Everything is stopped by PID
(PostgreSQL with ``pg_ctl stop``) and every temporary folder removed.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from prefect_gpt_image.blocks import GptImageCredentials
from prefect_gpt_image.local_prefect import LocalPrefectServer, stop_process
from prefect_gpt_image.local_s3 import LocalS3Server
from tests.support.judge import assert_stored_equals_delivered

from .conftest import CANARY_KEY, REPO_ROOT, fast_settings, s3_storage_block
from .workers import create_pool, start_worker

LIMIT = 3
"""The global concurrency limit shared by every worker."""
LATENCY = 0.5
PER_RUN = 12
OVERLAP = 6
RUN_TIMEOUT = 180.0

pytestmark = pytest.mark.usefixtures("needs_postgres")  # skipped without PostgreSQL, fails in CI


@dataclass
class Cluster:
    """A Prefect server on PostgreSQL with two process workers on one pool."""

    server: LocalPrefectServer
    root: Path
    pool: str
    workers: list[subprocess.Popen[bytes]]
    worker_logs: list[Path]
    lock_dir: Path

    def api(self) -> Any:
        from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings

        return temporary_settings(
            {PREFECT_API_URL: self.server.api_url, PREFECT_SERVER_ANALYTICS_ENABLED: False}
        )

    def logs(self) -> str:
        parts = []
        for path in [*self.worker_logs, self.server.log_path]:
            with contextlib.suppress(OSError):
                parts.append(
                    f"--- {path.parent.name}/{path.name} ---\n"
                    + "\n".join(path.read_text(errors="replace").splitlines()[-40:])
                )
        return "\n".join(parts).replace(CANARY_KEY, "***")


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="gpt-image-scale-"))
    workers: list[subprocess.Popen[bytes]] = []
    server = LocalPrefectServer(root / "server-home", database="postgres")
    try:
        server.start()
        assert server.database == "postgresql" and server.postgres is not None

        cli_home = root / "cli-home"
        cli_home.mkdir()
        pool = create_pool(server, cli_home)
        lock_dir = root / "shared-locks"  # one lock service for both "machines" (see README)
        worker_logs: list[Path] = []
        for i in (1, 2):
            worker = start_worker(
                server, pool, root / f"worker-{i}", args=("--limit", "1"), GPT_IMAGE_LOCK_DIR=str(lock_dir)
            )
            workers.append(worker.process)
            worker_logs.append(worker.log_path)
        yield Cluster(server, root, pool, workers, worker_logs, lock_dir)
    finally:
        for worker in reversed(workers):
            stop_process(worker)
        server.close()  # the server by PID, then PostgreSQL (pg_ctl stop) and its folder
        shutil.rmtree(root, ignore_errors=True)
    assert server.postgres is not None and not server.postgres.dir.exists() and not root.exists()


def test_two_workers_share_the_limit_and_pay_once(
    cluster: Cluster, make_sandbox: Any, local_s3: LocalS3Server, s3_bucket: str
) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client

    sandbox = make_sandbox(latency=LATENCY, keys=(CANARY_KEY,))
    settings = fast_settings(concurrency_limit=LIMIT)
    first = [f"scale row {i:02d}: a hot-air balloon over hills" for i in range(PER_RUN)]
    second = first[PER_RUN - OVERLAP :] + [
        f"scale row {i:02d}: a hot-air balloon over hills" for i in range(PER_RUN, 2 * PER_RUN - OVERLAP)
    ]
    distinct = set(first) | set(second)

    with cluster.api(), get_client(sync_client=True) as client:
        # what an operator does once: the shared limit, the blocks, the deployment
        client.upsert_global_concurrency_limit_by_name(settings.concurrency_limit_name, LIMIT)
        settings.save("scale", overwrite=True)
        GptImageCredentials(api_key=SecretStr(CANARY_KEY), base_url=sandbox.base_url).save(
            "scale", overwrite=True
        )
        s3_storage_block(local_s3, s3_bucket, folder="scale").save("scale", overwrite=True)
        # flow.deploy() would first list the pool's workers, a request this server refuses
        # (Prefect 3.8.8's client sends null offset/limit; FastAPI >= 0.151 answers 422): build the
        # same deployment with to_deployment() and apply() it
        deployment_id = (
            flow.from_source(
                source=str(REPO_ROOT), entrypoint="prefect_gpt_image/flows/batch.py:batch_generate"
            )
            .to_deployment(name="scale-out", work_pool_name=cluster.pool)
            .apply()
        )
        common = {
            "settings_block": "scale",
            "credentials_block": "scale",
            "storage": "gpt-image-storage/scale",
        }
        runs = [
            client.create_flow_run_from_deployment(
                deployment_id, parameters={"prompts": prompts, **common}
            ).id
            for prompts in (first, second)
        ]
        deadline = time.monotonic() + RUN_TIMEOUT
        while True:
            states = [client.read_flow_run(run_id) for run_id in runs]
            if all(r.state is not None and r.state.is_final() for r in states):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"flow runs not finished after {RUN_TIMEOUT:g} s:\n{cluster.logs()}")
            time.sleep(0.5)

    assert all(r.state is not None and r.state.is_completed() for r in states), (
        [r.state for r in states],
        cluster.logs(),
    )
    # each worker ran one of the two runs, and the runs overlapped in time
    worker_text = [path.read_text(errors="replace") for path in cluster.worker_logs]
    began = [
        [r.name for r in states if f"Flow run '{r.name}' - Beginning flow run" in t] for t in worker_text
    ]
    assert sorted(len(names) for names in began) == [1, 1], cluster.logs()
    (a, b) = states
    assert a.start_time is not None and b.start_time is not None and a.end_time and b.end_time
    assert a.start_time < b.end_time and b.start_time < a.end_time, "the two runs did not overlap"

    # the global limit held across the workers' processes, and was really used
    stats = sandbox.ledger.stats()
    assert 2 <= stats["max_in_flight"] <= LIMIT, stats
    # no request paid twice: one billed image per distinct prompt, whichever worker made it
    prompt_of = {r["request_id"]: r["fields"]["prompt"] for r in sandbox.ledger.requests}
    billed = Counter(prompt_of[e["request_id"]] for e in sandbox.ledger.entries)
    assert set(billed) == distinct and set(billed.values()) == {1}, billed
    assert stats["requests"] == len(distinct)
    # everything is in the bucket, once, byte for byte as delivered
    assert len(assert_stored_equals_delivered(sandbox, (local_s3, s3_bucket))) == len(distinct)
    assert not list(cluster.lock_dir.glob("*.lock"))
