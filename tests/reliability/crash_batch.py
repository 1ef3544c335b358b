"""A batch run in its own process, for the tests that kill, interrupt or race it.

``python -m tests.reliability.crash_batch PROMPTS_FILE STORAGE SETTINGS_BLOCK MAX_PARALLEL HOLD [GO_FILE]``:
runs ``batch_generate`` against the Prefect server of ``PREFECT_API_URL``, the key and base URL of
``GPT_IMAGE_API_KEY`` / ``GPT_IMAGE_BASE_URL``, the locks of ``GPT_IMAGE_LOCK_DIR`` (or
``GPT_IMAGE_LOCK_URL``).

``HOLD`` replaces ``GptImageSettings.call_deadline_seconds()`` (the time a call's lock is held at
most, over three minutes with any settings) so the test can watch a dead holder's lock expire
in seconds instead of minutes. With ``GO_FILE`` the process imports everything, prints ``ready``
and waits for that file to exist before it starts the batch, so that several processes start
theirs at the same moment. With ``$GPT_IMAGE_TEST_HOST`` (:data:`HOST_ENV`) the process writes
that host name into its lock files, as a process of another machine sharing the lock folder
would. Nothing else is changed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST_ENV = "GPT_IMAGE_TEST_HOST"
"""The host name this process's file locks say they were taken on (another machine's)."""


def start(
    prompts_file: Path,
    storage: str | Path,
    settings_block: str,
    max_parallel: int,
    hold: float | str,
    log: Path,
    *,
    go: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """This batch in a new process (and session, so its group can be signalled), output to ``log``."""
    command = [sys.executable, "-m", "tests.reliability.crash_batch", str(prompts_file), str(storage)]
    command += [settings_block, str(max_parallel), str(hold), *([str(go)] if go is not None else [])]
    with log.open("wb") as out:
        return subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=dict(os.environ) if env is None else env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def main(argv: list[str]) -> int:
    prompts_file, storage, settings_block, max_parallel, hold, *go = argv
    from prefect_gpt_image.blocks import GptImageSettings
    from prefect_gpt_image.flows import batch_generate

    GptImageSettings.call_deadline_seconds = lambda self: float(hold)  # type: ignore[method-assign]
    if os.environ.get(HOST_ENV):
        from prefect_gpt_image.calls import locks

        locks._HOST = os.environ[HOST_ENV]
    prompts = json.loads(Path(prompts_file).read_text())
    if go:
        print("ready", flush=True)
        while not Path(go[0]).exists():
            time.sleep(0.005)
    state = batch_generate(
        prompts=prompts,
        storage=storage,
        settings_block=settings_block,
        max_parallel=int(max_parallel),
        return_state=True,
    )
    print(state.message, flush=True)
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
