"""Review in a deployment run served by ``flow.serve()``, on a Prefect server whose pause
expiration service runs (the other test servers turn it off).

One stack for the module: ``prefect server start`` (SQLite, a free port of 127.0.0.1) with the
``PAUSE_EXPIRATIONS`` service on and a 1 s loop, the sandbox (its ledger judges what was paid), and
a process serving ``batch_generate`` as the deployment ``served-review`` (``batch_generate.serve``,
polling the server every second). A run created from the deployment, as the UI's "Run" button
does, is executed by that process; it *suspends* for review (the process it ran in exits) and the
served process must take it up again after the resume.

* Resumed through the API with the values the UI's Resume form sends: the served process runs it
  again, it completes, and the ledger holds exactly the redo's one call.
* Not answered within ``review_timeout``: the server's pause expiration ends the run Failed with
  Prefect's own message (the suspended flow is not running, so it cannot word its end); nothing
  more is paid after the suspension, and a rerun pays nothing for the rows already made.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from prefect_gpt_image.flows import review as review_module
from prefect_gpt_image.local_prefect import DEFAULT_SERVICES_OFF, LocalPrefectServer, stop_process
from prefect_gpt_image.sandbox import SandboxServer
from tests.support.sandbox import billed_images, sandbox_requests

from .conftest import _child_env, server_api, wait_for_review

DEPLOYMENT = "gpt-image-batch/served-review"
EXPIRED = "The flow was paused and never resumed."
"""The message Prefect's pause expiration service gives the runs it fails (Prefect's, not ours)."""
_WAIT = 120.0
_SERVE = """
import sys
from prefect_gpt_image.flows import batch_generate
batch_generate.serve(name="served-review", print_starting_message=False)
"""


@dataclass
class Served:
    """The server, the sandbox and the serving process."""

    server: LocalPrefectServer
    sandbox: SandboxServer
    root: Path
    log: Path

    def tail(self) -> str:
        """The end of the serving process's and the server's logs."""
        parts = []
        for path in (self.log, self.server.log_path):
            text = path.read_text(errors="replace") if path.exists() else ""
            parts.append(f"--- {path.name} ---\n" + "\n".join(text.splitlines()[-40:]))
        return "\n".join(parts)

    def start(self, parameters: dict[str, Any]) -> UUID:
        """A run of the served deployment, created as the UI's "Run" button does."""
        from prefect.client.orchestration import get_client

        with server_api(self.server), get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(DEPLOYMENT)
            return client.create_flow_run_from_deployment(deployment.id, parameters=parameters).id

    def suspended(self, run_id: UUID, round_: int) -> str:
        """Wait until the run is suspended with review round ``round_``'s form saved; its description."""
        return wait_for_review(self.server, run_id, f"suspended-review-1-{round_}-description", self.tail)

    def final(self, run_id: UUID) -> Any:
        """Wait until the run's state is final; that state."""
        from prefect.client.orchestration import get_client

        deadline = time.monotonic() + _WAIT
        with server_api(self.server), get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                state = client.read_flow_run(run_id).state
                if state is not None and state.is_final():
                    return state
                time.sleep(0.3)
        pytest.fail(f"the run never ended:\n{self.tail()}")

    def states(self, run_id: UUID) -> list[Any]:
        """The run's states, oldest first."""
        from prefect.client.orchestration import get_client

        with server_api(self.server), get_client(sync_client=True) as client:
            return sorted(client.read_flow_run_states(run_id), key=lambda s: s.timestamp)

    def resume(self, run_id: UUID, answer: dict[str, Any]) -> None:
        """Resume the run with ``answer``, as the UI's Resume form sends it."""
        from prefect.flow_runs import resume_flow_run

        with server_api(self.server):
            resume_flow_run(run_id, run_input=answer)


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """A server with pause expiration on, the sandbox, and ``batch_generate`` served."""
    root = Path(tempfile.mkdtemp(prefix="gpt-image-served-"))
    key = "sk-served-" + uuid.uuid4().hex[:12]
    server = LocalPrefectServer(
        root / "server-home",
        database="sqlite",
        services_off=[s for s in DEFAULT_SERVICES_OFF if s != "PAUSE_EXPIRATIONS"],
        extra_env={"PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_LOOP_SECONDS": "1"},
    )
    sandbox = SandboxServer(latency=0, keys=(key,))
    process: subprocess.Popen[bytes] | None = None
    try:
        server.start()
        sandbox.start()
        home = root / "client-home"
        home.mkdir()
        env = {
            **_child_env(server, home, root),
            "GPT_IMAGE_API_KEY": key,
            "GPT_IMAGE_BASE_URL": sandbox.base_url,
            "GPT_IMAGE_ALLOW_PRIVATE_HOSTS": "127.0.0.1,::1,localhost",
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        }
        stack = Served(server, sandbox, root, root / "serve.log")
        with stack.log.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-c", _SERVE],
                env=env,
                cwd=root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait_for_deployment(stack, process)
        yield stack
    finally:
        if process is not None:
            stop_process(process)
        server.close()
        sandbox.stop()
        shutil.rmtree(root, ignore_errors=True)


def _wait_for_deployment(stack: Served, process: subprocess.Popen[bytes]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + _WAIT
    with server_api(stack.server), get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            assert process.poll() is None, f"serve() ended:\n{stack.tail()}"
            try:
                client.read_deployment_by_name(DEPLOYMENT)
                return
            except ObjectNotFound:
                time.sleep(0.3)
    pytest.fail(f"serve() never registered its deployment:\n{stack.tail()}")


def _parameters(prompts: list[str], storage: Path, timeout: int) -> dict[str, Any]:
    return {
        "prompts": prompts,
        "options": {"size": "1024x1024", "quality": "low"},
        "storage": str(storage),
        "review": True,
        "review_timeout": timeout,
    }


def _form(redo: list[dict[str, str]] | None = None, drop: list[str] | None = None) -> dict[str, Any]:
    """What the UI's Resume form sends: every field, the row fields as typed text."""
    return {"approve_all": True, "redo": redo or [], "drop": drop or [], "reviewer": ""}


def _generations(sandbox: SandboxServer) -> list[str]:
    return [r["fields"]["prompt"] for r in sandbox_requests(sandbox) if r["endpoint"].endswith("generations")]


def test_a_served_run_suspends_and_the_served_process_finishes_it_after_the_resume(served: Served) -> None:
    prompts = [f"a served kite, number {n}" for n in range(1, 4)]
    before, sent = billed_images(served.sandbox), len(_generations(served.sandbox))
    run_id = served.start(_parameters(prompts, served.root / "store-resume", 600))
    served.suspended(run_id, 1)
    assert billed_images(served.sandbox) == before + 3
    served.resume(run_id, _form(redo=[{"row": "2", "note": "at dusk"}], drop=["3"]))
    description = served.suspended(run_id, 2)  # the served process took the run up again
    assert "a served kite, number 2 at dusk" in description.replace("\\", "")
    served.resume(run_id, _form())
    state = served.final(run_id)
    assert state.is_completed(), f"{state.message}\n{served.tail()}"
    message = state.message or ""
    assert "2 of 3 rows stored" in message and "1 row(s) dropped at review" in message, message
    assert billed_images(served.sandbox) == before + 4  # exactly the redo
    made = _generations(served.sandbox)[sent:]
    assert sorted(made[:3]) == sorted(prompts) and made[3:] == [f"{prompts[1]} at dusk"], made
    names = [s.name for s in served.states(run_id)]
    assert names.count("Suspended") == 2 and names.count("Resuming") == 2, names


def test_an_unanswered_review_of_a_served_run_is_ended_by_the_server_and_a_rerun_pays_nothing(
    served: Served,
) -> None:
    prompts = [f"a served lake, number {n}" for n in range(1, 4)]
    storage = served.root / "store-timeout"
    before = billed_images(served.sandbox)
    run_id = served.start(_parameters(prompts, storage, 3))
    served.suspended(run_id, 1)
    assert billed_images(served.sandbox) == before + 3
    state = served.final(run_id)  # nobody answers
    assert state.is_failed() and state.message == EXPIRED, f"{state}\n{served.tail()}"
    suspended = next(s for s in served.states(run_id) if s.name == "Suspended")
    expiry = suspended.state_details.pause_timeout
    assert expiry is not None and state.timestamp >= expiry  # ended by the pause's expiration
    assert billed_images(served.sandbox) == before + 3  # nothing paid after the suspension
    from tests.support.prefect import flow_run_logs

    with server_api(served.server):
        logs = flow_run_logs(run_id)
    waiting = [m for m in logs if "wait for a decision" in m]
    assert len(waiting) == 1 and "the run fails after 3 s without one" in waiting[0], logs
    assert review_module.SUSPENDED_TIMEOUT in waiting[0] and EXPIRED in review_module.SUSPENDED_TIMEOUT

    # the same parameters again: every row served from the store, answered this time
    rerun = served.start(_parameters(prompts, storage, 600))
    served.suspended(rerun, 1)
    assert billed_images(served.sandbox) == before + 3
    served.resume(rerun, _form())
    state = served.final(rerun)
    assert state.is_completed(), f"{state.message}\n{served.tail()}"
    assert "paid $0 for 0 images" in (state.message or ""), state.message
    assert billed_images(served.sandbox) == before + 3
