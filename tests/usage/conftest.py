"""The usage tests: the scripts of ``tests/usage/scripts`` run as a user runs them, each in a new
Python process configured only through the environment (the sandbox as the API, a folder as the
store, the session's real Prefect server), and checked through the sandbox's ledger and the store.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from prefect_gpt_image.local_prefect import stop_process
from prefect_gpt_image.sandbox import SandboxServer
from tests.support.prefect import PrefectServer

SCRIPTS = Path(__file__).resolve().parent / "scripts"
API_KEY = "sk-usage-tests-7c1e"
LATENCY = 0.05
"""Seconds each sandbox image takes: small, the tests are about how the code is called."""
SCRIPT_TIMEOUT = 120.0
_TAIL = 4000


def clean_env() -> dict[str, str]:
    """This process's environment without any Prefect, gpt-image or AWS setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "GPT_IMAGE_", "AWS_"))}


@dataclass
class ScriptRun:
    """One finished run of a script."""

    name: str
    returncode: int
    stdout: str
    stderr: str
    elapsed: float

    def tail(self) -> str:
        """The ends of stdout and stderr, for failure messages."""
        return (
            f"--- {self.name}: exit {self.returncode} after {self.elapsed:.1f} s\n"
            f"--- stdout (tail):\n{self.stdout[-_TAIL:]}\n--- stderr (tail):\n{self.stderr[-_TAIL:]}"
        )

    def result(self) -> Any:
        """The JSON of the script's last ``RESULT {json}`` line (the run must have succeeded)."""
        import json

        assert self.returncode == 0, self.tail()
        lines = [line for line in self.stdout.splitlines() if line.startswith("RESULT ")]
        assert lines, "no RESULT line\n" + self.tail()
        return json.loads(lines[-1].removeprefix("RESULT "))


class RunningScript:
    """A script started in its own process group, its output going to files."""

    def __init__(self, name: str, env: dict[str, str], cwd: Path, *args: str) -> None:
        self.name = name
        self._out, self._err = cwd / f"{name}.stdout", cwd / f"{name}.stderr"
        self.started = time.monotonic()
        with self._out.open("wb") as out, self._err.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, str(SCRIPTS / name), *args],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )

    def _finished(self, returncode: int) -> ScriptRun:
        return ScriptRun(
            self.name,
            returncode,
            self._out.read_text(errors="replace"),
            self._err.read_text(errors="replace"),
            time.monotonic() - self.started,
        )

    def wait(self, timeout: float = SCRIPT_TIMEOUT) -> ScriptRun:
        """The finished run; the test fails (showing the output so far) if it takes over ``timeout``
        seconds from its start. Its output tail is printed (pytest shows it when the test fails)."""
        remaining = max(0.0, timeout - (time.monotonic() - self.started))
        try:
            returncode = self.process.wait(remaining)
        except subprocess.TimeoutExpired:
            self.stop()
            run = self._finished(-1)
            pytest.fail(f"{self.name} did not end within {timeout:.0f} s\n{run.tail()}")
        run = self._finished(returncode)
        print(run.tail())
        return run

    def stop(self) -> None:
        """End the script and what it started (its process group), if it still runs."""
        stop_process(self.process, timeout=5)


def run_script(
    name: str, env: dict[str, str], cwd: Path, *args: str, timeout: float = SCRIPT_TIMEOUT
) -> ScriptRun:
    """Run ``tests/usage/scripts/<name>`` with ``sys.executable`` in ``cwd`` and wait for it."""
    return RunningScript(name, env, cwd, *args).wait(timeout)


@dataclass
class Usage:
    """What one test gives its scripts: a sandbox, a store folder and the environment naming them."""

    sandbox: Any
    root: Path
    storage: Path
    env: dict[str, str] = field(repr=False)

    def run(self, name: str, *args: str, timeout: float = SCRIPT_TIMEOUT) -> ScriptRun:
        """Run a script in this test's folder, with this test's environment."""
        return run_script(name, self.env, self.root, *args, timeout=timeout)

    def stored(self, sha256: str) -> Path | None:
        """The stored image file of ``sha256``, if there is one."""
        for suffix in (".png", ".jpeg", ".webp"):
            path = self.storage / "images" / f"{sha256}{suffix}"
            if path.is_file():
                return path
        return None

    def image_files(self) -> list[Path]:
        """Every image file in the store."""
        folder = self.storage / "images"
        return sorted(p for p in folder.glob("*") if p.suffix in (".png", ".jpeg", ".webp") and p.is_file())


@pytest.fixture
def usage(
    prefect_server: PrefectServer,
    make_sandbox: Callable[..., Any],
    tmp_path: Path,
) -> Usage:
    """A sandbox, and an environment pointing a script at it, at a store folder, lock folder, spool
    and Prefect home of this test, and at the session's Prefect server."""
    sandbox = make_sandbox(latency=LATENCY)
    storage = tmp_path / "store"
    env = clean_env()
    env.update(prefect_server.client_env(tmp_path / "prefect-home"))
    env.update(
        {
            "DO_NOT_TRACK": "1",
            "HOME": str(tmp_path),
            "GPT_IMAGE_API_KEY": API_KEY,
            "GPT_IMAGE_BASE_URL": sandbox.base_url,
            "GPT_IMAGE_STORAGE": str(storage),
            "GPT_IMAGE_LOCK_DIR": str(tmp_path / "locks"),
            "GPT_IMAGE_SPOOL": str(tmp_path / "spool"),
        }
    )
    return Usage(sandbox=sandbox, root=tmp_path, storage=storage, env=env)


@dataclass
class EphemeralRun:
    """The ephemeral first run, started in the background (see :func:`ephemeral_first_run`)."""

    sandbox: SandboxServer
    root: Path
    script: RunningScript


@pytest.fixture(scope="session")
def ephemeral_first_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EphemeralRun]:
    """``ephemeral_first_run.py`` with no ``PREFECT_API_URL`` (Prefect's ephemeral server, a fresh
    home), started in the background with the first test of ``test_scripts.py`` (its autouse
    fixture asks for it before the session's Prefect server), so that its server's start-up (tens
    of seconds on a busy machine) overlaps that file's other tests;
    ``test_first_run_on_the_ephemeral_prefect`` waits for it and checks it. Only that file asks
    for it: the usage files run on both xdist workers, and each would start one otherwise."""
    root = tmp_path_factory.mktemp("ephemeral")
    with SandboxServer(latency=LATENCY) as sandbox:
        env = clean_env()
        env.update(
            {
                "DO_NOT_TRACK": "1",
                "HOME": str(root),
                "PREFECT_HOME": str(root / "prefect-home"),
                "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
                # DO_NOT_TRACK does not stop the ephemeral server's telemetry heartbeat (Prefect
                # 3.9.1), whose first write races the run's own on a new SQLite database and often
                # logs a "database is locked" traceback, with a plain Prefect flow too. Off, as a
                # user who set DO_NOT_TRACK means; what is checked is what this package causes.
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "GPT_IMAGE_API_KEY": API_KEY,
                "GPT_IMAGE_BASE_URL": sandbox.base_url,
                "GPT_IMAGE_STORAGE": str(root / "store"),
                "GPT_IMAGE_LOCK_DIR": str(root / "locks"),
                "GPT_IMAGE_SPOOL": str(root / "spool"),
            }
        )
        script = RunningScript("ephemeral_first_run.py", env, root)
        try:
            yield EphemeralRun(sandbox=sandbox, root=root, script=script)
        finally:
            script.stop()
