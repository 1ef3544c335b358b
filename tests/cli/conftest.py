"""The command line tests: ``prefect-gpt-image`` run in subprocesses, as a user runs it, against
the sandbox, and judged by the sandbox's ledger and request log and by the store."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.usage.conftest import ScriptRun, clean_env

COMMAND = str(Path(sys.executable).with_name("prefect-gpt-image"))
API_KEY = "sk-cli-tests-5d2f9a"
TIMEOUT = 180.0


class Run(ScriptRun):
    """One finished command (``name`` is its arguments)."""

    def json(self) -> Any:
        """The one JSON document on stdout."""
        return json.loads(self.stdout)


@dataclass
class Cli:
    """A sandbox, a store and an environment for the command (no Prefect server unless given)."""

    sandbox: Any
    root: Path
    store: Path
    env: dict[str, str] = field(repr=False)

    def run(self, *args: str, env: dict[str, str] | None = None) -> Run:
        """Run ``prefect-gpt-image *args`` in this test's folder, stdin not a terminal."""
        started = time.monotonic()
        done = subprocess.run(
            [COMMAND, *args],
            cwd=self.root,
            env=env if env is not None else self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        name = "prefect-gpt-image " + " ".join(args)
        run = Run(name, done.returncode, done.stdout, done.stderr, time.monotonic() - started)
        print(run.tail())
        return run

    def billed_images(self) -> int:
        """Images the sandbox billed so far."""
        return int(self.sandbox.ledger.billed_images)


@pytest.fixture
def cli(make_sandbox: Callable[..., Any], tmp_path: Path) -> Cli:
    """The command's environment: the sandbox as the API (its key in the environment), a store
    folder, lock folder, spool and Prefect home of this test, and NO Prefect API: with
    ``PREFECT_SERVER_ALLOW_EPHEMERAL_MODE=false`` any use of Prefect's API fails the command
    instead of starting an ephemeral server."""
    sandbox = make_sandbox(latency=0.05)
    env = clean_env()
    env.update(
        {
            "DO_NOT_TRACK": "1",
            "HOME": str(tmp_path),
            "PREFECT_HOME": str(tmp_path / "prefect-home"),
            "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "false",
            "GPT_IMAGE_API_KEY": API_KEY,
            "GPT_IMAGE_BASE_URL": sandbox.base_url,
            "GPT_IMAGE_STORAGE": str(tmp_path / "store"),
            "GPT_IMAGE_LOCK_DIR": str(tmp_path / "locks"),
            "GPT_IMAGE_SPOOL": str(tmp_path / "spool"),
        }
    )
    return Cli(sandbox=sandbox, root=tmp_path, store=tmp_path / "store", env=env)


@pytest.fixture
def cli_on_server(cli: Cli, prefect_server: Any) -> Cli:
    """:func:`cli`, with the session's real Prefect server configured (for the batch verbs and
    the global limit)."""
    env = {k: v for k, v in cli.env.items() if k != "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"}
    env.update(prefect_server.client_env(cli.root / "prefect-home"))
    cli.env = env
    return cli


def read_terminal(
    fd: int,
    timeout: float,
    *,
    ended: Callable[[], bool] = lambda: False,
    on_output: Callable[[bytes], None] | None = None,
) -> bytes:
    """What the program on the pseudo-terminal ``fd`` wrote, read until it closes the terminal,
    ``ended()`` says it exited while nothing was written, or ``timeout`` s pass (a deadline for a
    hang only). ``on_output`` sees everything read so far after each chunk (to type an answer)."""
    output = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            if ended():
                break
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the child closed the terminal: it ended
            break
        if not chunk:
            break
        output += chunk
        if on_output is not None:
            on_output(output)
    return output
