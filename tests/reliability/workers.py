"""Process workers and batch deployments on a real Prefect server, for the orchestrator-fault
tests: a worker is ``prefect worker start`` in its own process group and home (no key, no AWS
variables: the blocks hold them), stopped by its PID."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect_gpt_image.local_prefect import LocalPrefectServer, stop_process

from .conftest import CANARY_KEY, REPO_ROOT, unique

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def child_env(server: LocalPrefectServer, home: Path, **extra: str) -> dict[str, str]:
    """A worker's environment, as on its own machine: no key, no AWS variables, its own home."""
    drop = ("PREFECT_", "AWS_", "GPT_IMAGE_", "OPENAI_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(server.env(home))
    env.update(
        {
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_HEARTBEAT_SECONDS": "5",
            "PREFECT_WORKER_CANCELLATION_POLL_SECONDS": "2",
            "PREFECT_LOGGING_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            **extra,
        }
    )
    return env


@dataclass
class Worker:
    """A running ``prefect worker start`` process and its log."""

    process: subprocess.Popen[bytes]
    log_path: Path
    pool: str

    def log(self, lines: int = 60) -> str:
        """The end of the worker's log (flow-run processes log here too), the key masked."""
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace").replace(CANARY_KEY, "***")
            return "\n".join(text.splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        """Stop the worker and its flow-run processes (its process group) by PID."""
        stop_process(self.process)


def create_pool(server: LocalPrefectServer, home: Path) -> str:
    """A new process work pool; its name."""
    pool = unique("rel-pool")
    subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "work-pool", "create", pool, "--type", "process"],
        env=child_env(server, home),
        check=True,
        capture_output=True,
        timeout=120,
    )
    return pool


def start_worker(
    server: LocalPrefectServer, pool: str, home: Path, *, args: Sequence[str] = (), **extra: str
) -> Worker:
    """A process worker on ``pool`` with its own ``home`` (spool and locks in it unless given in
    ``extra``, its environment); ``args``: more ``prefect worker start`` options (``--limit 1``)."""
    home.mkdir(parents=True, exist_ok=True)
    extra = {
        "GPT_IMAGE_SPOOL": str(home / "spool"),
        "GPT_IMAGE_LOCK_DIR": str(home / "locks"),
        **extra,
    }
    log_path = home / "worker.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "worker",
                "start",
                "--pool",
                pool,
                "--type",
                "process",
                "--name",
                unique("worker"),
                *args,
            ],
            env=child_env(server, home, **extra),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=home,
            start_new_session=True,
        )
    return Worker(process, log_path, pool)


def deploy_batch(pool: str) -> UUID:
    """A deployment of ``batch_generate`` from this repository on ``pool``; its id.

    (``flow.deploy()`` would first list the pool's workers, a request this server refuses with
    Prefect 3.8.8's client: the same deployment is built with ``to_deployment()`` and applied.)
    """
    from prefect import flow

    deployment_id = (
        flow.from_source(source=str(REPO_ROOT), entrypoint="prefect_gpt_image/flows/batch.py:batch_generate")
        .to_deployment(name=unique("rel-batch"), work_pool_name=pool)
        .apply()
    )
    return UUID(str(deployment_id))


def run_deployment(deployment_id: UUID, parameters: dict[str, Any]) -> UUID:
    """Create a flow run of the deployment now (as the UI's Run does); its id."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.create_flow_run_from_deployment(deployment_id, parameters=parameters).id


def state_of(run_id: UUID) -> tuple[str, str | None]:
    """The flow run's state type and message as the server has it."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state
    return (state.type.value, state.message) if state is not None else ("NONE", None)


def wait_for_state(run_id: UUID, types: set[str], timeout: float, worker: Worker | None = None) -> str:
    """Wait until the flow run is in one of ``types``; that type."""
    deadline = time.monotonic() + timeout
    while True:
        current, message = state_of(run_id)
        if current in types:
            return current
        if time.monotonic() > deadline:
            tail = worker.log() if worker is not None else ""
            raise AssertionError(
                f"flow run in {current} ({message}) after {timeout:g} s, not {types}:\n{tail}"
            )
        time.sleep(0.2)


def active_slots(name: str) -> int:
    """The global concurrency limit's active slots, read from the server."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return int(client.read_global_concurrency_limit_by_name(name).active_slots)
