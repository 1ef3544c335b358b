"""End-to-end fixtures: the deployments of ``deployments/prefect.yaml`` run as a user runs them.

One stack for the ``tests/e2e`` package (started on first use, stopped after its last test):

* a real ``prefect server start`` **with its UI** (SQLite in a temporary home, a free port on
  127.0.0.1, ``PREFECT_SERVER_API_PORT`` too): ``prefect_gpt_image.local_prefect``'s
  ``LocalPrefectServer``;
* the gpt-image-2 sandbox (accepting only the test's key) and a SeaweedFS bucket (``local_s3``);
* the blocks the deployments name, saved as the README says: a prefect-aws ``S3Bucket`` block
  (endpoint and keys inside), then ``python deployments/blocks.py`` for the credentials, settings
  and storage blocks;
* the ``gpt-image`` process work pool, ``prefect --no-prompt deploy --prefect-file
  deployments/prefect.yaml --all`` run from the repo root, and a process worker.

The worker and the deploy command get no API key and no AWS variables: everything they need comes
from the blocks. Every process is stopped by its PID and the temporary folder removed.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml  # type: ignore[import-untyped]

from prefect_gpt_image.local_prefect import LocalPrefectServer, stop_process
from prefect_gpt_image.local_s3 import LocalS3Server
from prefect_gpt_image.sandbox import SandboxServer

REPO_ROOT = Path(__file__).resolve().parents[2]
PREFECT_YAML = REPO_ROOT / "deployments" / "prefect.yaml"
BLOCKS_SCRIPT = REPO_ROOT / "deployments" / "blocks.py"
S3_BUCKET_BLOCK = "e2e-bucket"
"""The prefect-aws S3Bucket block the storage block points at."""
BUCKET_FOLDER = "gpt-image"
RUN_TIMEOUT = 90.0
_CLI_TIMEOUT = 120.0
_TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def deployment_specs() -> dict[str, dict[str, Any]]:
    """The deployments of ``deployments/prefect.yaml`` by name."""
    config = yaml.safe_load(PREFECT_YAML.read_text(encoding="utf-8"))
    return {spec["name"]: spec for spec in config["deployments"]}


def flow_name_of(entrypoint: str) -> str:
    """The Prefect flow name behind a deployment entrypoint (``module:function``)."""
    from prefect.utilities.importtools import import_object

    return str(import_object(entrypoint).name)


@dataclass
class E2EStack:
    """Everything the end-to-end tests talk to; ``timings`` holds seconds per setup step."""

    server: LocalPrefectServer
    ui_url: str
    root: Path
    cli_env: dict[str, str] = field(repr=False)
    sandbox: SandboxServer
    s3: LocalS3Server
    bucket: str
    api_key: str = field(repr=False)
    pool: str
    worker_pid: int
    worker_log: Path
    deploy_output: str
    timings: dict[str, float] = field(default_factory=dict)

    def api(self) -> AbstractContextManager[Any]:
        """A context in which this process's Prefect client talks to the e2e server."""
        return server_api(self.server)

    def deployment_id(self, name: str) -> UUID:
        """The id of deployment ``name`` (as named in prefect.yaml) on the server."""
        from prefect.client.orchestration import get_client

        spec = deployment_specs()[name]
        with self.api(), get_client(sync_client=True) as client:
            return client.read_deployment_by_name(f"{flow_name_of(spec['entrypoint'])}/{name}").id

    def log_tail(self, lines: int = 40) -> str:
        """The end of the worker's and the server's logs (no secrets: the key is masked)."""
        parts = []
        for path in (self.worker_log, self.server.log_path):
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            parts.append(f"--- {path.name} ---\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts).replace(self.api_key, "***")


def server_api(server: LocalPrefectServer) -> AbstractContextManager[Any]:
    """A context in which this process's Prefect client talks to ``server``."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings

    return temporary_settings({PREFECT_API_URL: server.api_url, PREFECT_SERVER_ANALYTICS_ENABLED: False})


def wait_for_review(server: LocalPrefectServer, run_id: Any, key: str, tail: Callable[[], str]) -> str:
    """Wait until the run is suspended for review with its form saved under the run input
    ``key`` (``suspended-review-{n}-{round}-description``); the form's description. Fails, with
    ``tail()`` (the logs), if the run ends or never gets there."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + 120
    with server_api(server), get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            state = client.read_flow_run(run_id).state
            assert state is None or not state.is_final(), f"the run ended: {state}\n{tail()}"
            if state is not None and state.is_paused():
                saved = client.filter_flow_run_input(run_id, key, limit=1, exclude_keys=set())
                if saved:
                    return str(saved[0].decoded_value)
            time.sleep(0.5)
    pytest.fail(f"the run never waited for review ({key}):\n{tail()}")


@dataclass(frozen=True)
class FinishedRun:
    """A flow run triggered from a deployment and waited for."""

    id: UUID
    state_type: str
    state_message: str | None
    parameters: dict[str, Any]
    seconds: float


def _child_env(server: LocalPrefectServer, home: Path, root: Path) -> dict[str, str]:
    """The environment of the Prefect CLI and the worker: no key, no AWS, no Prefect leftovers."""
    drop = ("PREFECT_", "AWS_", "GPT_IMAGE_", "OPENAI_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(server.env(home))
    # No AWS credentials from anywhere but the blocks: boto3 must not look for them in the EC2
    # metadata service (off the machine) or in the user's ~/.aws.
    env.update(
        {
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_SHARED_CREDENTIALS_FILE": str(root / "no-aws-credentials"),
            "AWS_CONFIG_FILE": str(root / "no-aws-config"),
        }
    )
    env.update(
        {
            "GPT_IMAGE_SPOOL": str(root / "spool"),
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_HEARTBEAT_SECONDS": "5",
            "PREFECT_LOGGING_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def run_cli(
    args: list[str], env: dict[str, str], *, cwd: Path = REPO_ROOT
) -> subprocess.CompletedProcess[str]:
    """Run a command as a user would from the repo root; fail the test with its output if it fails."""
    result = subprocess.run(
        args, env=env, cwd=cwd, capture_output=True, text=True, timeout=_CLI_TIMEOUT, check=False
    )
    if result.returncode != 0:
        output = f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        if "422 Unprocessable Entity" in output and "'input': None" in output:
            output += "\nhint: FastAPI >= 0.151 refuses the nulls Prefect 3.8.8 sends: pin fastapi<0.151"
        pytest.fail(f"{' '.join(args[:6])} failed ({result.returncode}):\n{output}")
    return result


def _save_s3_bucket_block(s3: LocalS3Server, bucket: str) -> None:
    """What a user does once in the UI (or in Python): a prefect-aws bucket block with its keys."""
    from prefect_aws import AwsClientParameters, AwsCredentials, S3Bucket

    credentials = AwsCredentials(
        aws_access_key_id=s3.access_key,
        aws_secret_access_key=s3.secret_key,
        region_name=s3.region,
        aws_client_parameters=AwsClientParameters(endpoint_url=s3.endpoint_url),
    )
    credentials.save(f"{S3_BUCKET_BLOCK}-credentials", overwrite=True)
    S3Bucket(bucket_name=bucket, bucket_folder=BUCKET_FOLDER, credentials=credentials).save(
        S3_BUCKET_BLOCK, overwrite=True
    )


@pytest.fixture(scope="package")
def e2e_stack(local_s3: LocalS3Server) -> Iterator[E2EStack]:
    """The server, sandbox, bucket, blocks, work pool, deployments and a running worker."""
    specs = deployment_specs()
    pools = {spec["work_pool"]["name"] for spec in specs.values()}
    assert len(pools) == 1, f"expected one work pool in prefect.yaml, found {pools}"
    pool = pools.pop()
    root = Path(tempfile.mkdtemp(prefix="gpt-image-e2e-"))
    timings: dict[str, float] = {}
    api_key = "sk-e2e-" + secrets.token_hex(12)
    server = LocalPrefectServer(root / "server-home", database="sqlite", ui=True)
    worker: subprocess.Popen[bytes] | None = None
    sandbox: SandboxServer | None = None
    try:
        started = time.monotonic()
        server.start()
        timings["server"] = time.monotonic() - started

        sandbox = SandboxServer(latency=0.1, keys=(api_key,)).start()
        bucket = local_s3.create_bucket(f"e2e-{uuid.uuid4().hex[:12]}")
        home = root / "client-home"
        home.mkdir()
        env = _child_env(server, home, root)
        stack = E2EStack(
            server=server,
            ui_url=server.api_url.removesuffix("/api"),
            root=root,
            cli_env=env,
            sandbox=sandbox,
            s3=local_s3,
            bucket=bucket,
            api_key=api_key,
            pool=pool,
            worker_pid=0,
            worker_log=root / "worker.log",
            deploy_output="",
            timings=timings,
        )

        started = time.monotonic()
        with stack.api():
            _save_s3_bucket_block(local_s3, bucket)
        run_cli(
            [
                sys.executable,
                str(BLOCKS_SCRIPT),
                "--base-url",
                sandbox.base_url,
                "--s3-bucket-block",
                S3_BUCKET_BLOCK,
                "--concurrency-limit",
                "2",
            ],
            {**env, "GPT_IMAGE_API_KEY": api_key},
        )
        timings["blocks"] = time.monotonic() - started

        started = time.monotonic()
        prefect = [sys.executable, "-m", "prefect", "--no-prompt"]
        run_cli([*prefect, "work-pool", "create", pool, "--type", "process", "--overwrite"], env)
        deploy = run_cli(
            [*prefect, "deploy", "--prefect-file", str(PREFECT_YAML.relative_to(REPO_ROOT)), "--all"], env
        )
        stack.deploy_output = deploy.stdout + deploy.stderr
        timings["pool_and_deploy"] = time.monotonic() - started

        with stack.worker_log.open("wb") as log:
            worker = subprocess.Popen(
                [*prefect, "worker", "start", "--pool", pool, "--type", "process", "--name", "e2e-worker"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=root,  # the deployment's pull step, not the worker's folder, decides the runs' folder
                start_new_session=True,
            )
        stack.worker_pid = worker.pid
        yield stack
    finally:
        if worker is not None:
            stop_process(worker)
        server.close()
        if sandbox is not None:
            sandbox.stop()
        shutil.rmtree(root, ignore_errors=True)


def start_run(
    stack: E2EStack, deployment: str, parameters: dict[str, Any] | None = None
) -> tuple[UUID, float]:
    """Create a flow run of ``deployment`` now; its id and the time it was created."""
    from prefect.client.orchestration import get_client

    deployment_id = stack.deployment_id(deployment)
    with stack.api(), get_client(sync_client=True) as client:
        flow_run = client.create_flow_run_from_deployment(deployment_id, parameters=parameters or {})
    return flow_run.id, time.monotonic()


def wait_for_runs(stack: E2EStack, runs: list[tuple[UUID, float]]) -> list[FinishedRun]:
    """Wait for every flow run of ``runs`` (from :func:`start_run`) to end."""
    from prefect.client.orchestration import get_client

    finished: dict[UUID, FinishedRun] = {}
    deadline = time.monotonic() + RUN_TIMEOUT
    with stack.api(), get_client(sync_client=True) as client:
        while len(finished) < len(runs):
            for run_id, created in runs:
                if run_id in finished:
                    continue
                flow_run = client.read_flow_run(run_id)
                state = flow_run.state
                if state is not None and state.type.value in _TERMINAL:
                    finished[run_id] = FinishedRun(
                        id=run_id,
                        state_type=state.type.value,
                        state_message=state.message,
                        parameters=dict(flow_run.parameters),
                        seconds=time.monotonic() - created,
                    )
            if time.monotonic() > deadline:
                pytest.fail(f"flow runs not finished after {RUN_TIMEOUT:g} s:\n{stack.log_tail()}")
            time.sleep(0.5)
    return [finished[run_id] for run_id, _ in runs]


@dataclass(frozen=True)
class E2ERuns:
    """The two deployments' runs, triggered together and finished; ``reference`` is the blend input."""

    pipeline: FinishedRun
    nightly: FinishedRun
    reference_uri: str
    seconds: float


def pipeline_parameters(reference_uri: str) -> dict[str, Any]:
    """Run-time parameters of the pipeline deployment: every step, small and cheap. The block
    parameters (credentials, settings, storage) are the deployment's own."""
    return {
        "prompt": "a lighthouse on a cliff at dawn (e2e)",
        "options": {"size": "1024x1024", "quality": "low"},
        "edit": {
            "prompt": "add a rainbow in the sky",
            "region": {"left": 0, "top": 0, "right": 1.0, "bottom": 0.25},
        },
        "blend": {"prompt": "in the style of the reference", "references": [reference_uri]},
    }


@pytest.fixture(scope="package")
def e2e_runs(e2e_stack: E2EStack) -> E2ERuns:
    """One run of each deployment, from the API as the UI's "Run" button does, both finished.

    The pipeline gets every step (generate, edit with a box, blend with a reference in the
    bucket); the nightly batch runs with the deployment's own parameters (the shipped manifest).
    """
    from tests.support.images import png_bytes

    started = time.monotonic()
    reference_key = "refs/style.png"
    e2e_stack.s3.client().put_object(
        Bucket=e2e_stack.bucket,
        Key=reference_key,
        Body=png_bytes((256, 256), "darkorange"),
        ContentType="image/png",
    )
    reference_uri = f"s3://{e2e_stack.bucket}/{reference_key}"
    runs = [
        start_run(e2e_stack, "pipeline", pipeline_parameters(reference_uri)),
        start_run(e2e_stack, "nightly"),
    ]
    pipeline, nightly = wait_for_runs(e2e_stack, runs)
    return E2ERuns(pipeline, nightly, reference_uri, time.monotonic() - started)
