"""Stops: how soon a script ends when interrupted or done, and what a kill -9 costs its rerun.

Three figures the tests no longer time (they check behaviour only; these are the timing goals):

1. **Ctrl-C**: the script of ``tests/reliability/test_interrupt.py``
   (``python -m tests.reliability.crash_batch``) runs ``batch_generate`` of N rows (sandbox
   latency L, global limit K, K rows at once, images in a local folder); once K answers were
   delivered and at least 2 calls are in flight, SIGINT goes to its process group (as a terminal
   sends it). Figure: seconds from the signal to the process's exit.
2. **Clients never closed**: ``tests/usage/scripts/unclosed_clients.py`` (a sync and an async
   client never closed, one never used) as ``tests/usage/test_scripts.py`` runs it. Figure:
   seconds from its last output line (``RESULT ...``, read from an unbuffered pipe) to its exit.
3. **A rerun after kill -9**: the same batch script gets SIGKILL (no grace) with rows stored and
   calls in flight; the same batch is then run again in this process with the same settings
   (same global limit). Compared with a clean rerun: a batch whose first run ended normally with
   as many rows stored, run again, so both reruns pay for the same number of rows. The dead
   process's file locks are free at once (same machine, its pid is gone) but its global-limit
   slots stay taken until their leases expire (60 s) and the server's repossessor runs (every
   15 s): the README's known limit, "at most 75 s".

Last line: ``ctrl_c_exit_s`` and ``unclosed_exit_s`` (the largest of ``--repeat`` runs),
``crash_rerun_extra_s`` (the largest of ``--crash-repeat``), ``crash_rerun_over_clean``.

``--profile`` profiles the first rerun after a kill (run in this process).

Usage: ``python bench/stops.py [--n 12] [--k 4] [--latency 1.0] [--repeat 3] [--crash-repeat 2]``
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' batch script

import _common as common

from prefect_gpt_image.local_prefect import stop_process
from tests.reliability import crash_batch

REPO_ROOT = Path(__file__).resolve().parents[1]
UNCLOSED_SCRIPT = REPO_ROOT / "tests" / "usage" / "scripts" / "unclosed_clients.py"
HANG_TIMEOUT = 120.0
"""Seconds after which a script that has not ended is called hung (its figure is then NaN)."""
CTRL_C_TARGET = 10.0
UNCLOSED_TARGET = 10.0
CRASH_EXTRA_TARGET = 75.0


def _wait_for(what: str, predicate: Callable[[], bool], process: subprocess.Popen[bytes], log: Path) -> None:
    """Poll the sandbox's state until ``predicate``; raise if the batch process ended first."""
    deadline = time.monotonic() + HANG_TIMEOUT
    while not predicate():
        if process.poll() is not None:
            raise RuntimeError(f"the batch ended before {what}: {log.read_text(errors='replace')[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"never came: {what}: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.02)


def _drain(sb: Any, timeout: float = 30.0) -> None:
    """Wait until the sandbox has no call in flight (the cut-off calls end in their own time)."""
    deadline = time.monotonic() + timeout
    while sb.ledger.in_flight and time.monotonic() < deadline:
        time.sleep(0.05)


class _Batch:
    """One batch of ``n`` fresh rows: its prompts file, store folder and settings block (a global
    limit of its own, K slots)."""

    def __init__(self, root: Path, label: str, n: int, k: int) -> None:
        tag = f"{label}-{uuid.uuid4().hex[:8]}"
        self.prompts = [f"bench stops {tag} #{i}: a lighthouse in fog" for i in range(n)]
        self.prompts_file = root / f"{tag}.json"
        self.prompts_file.write_text(json.dumps(self.prompts))
        self.storage = str(root / tag)
        self.log = root / f"{tag}.log"
        self.limit_name = f"bench-stops-{tag}"
        self.block = common.save_settings(
            f"bench-stops-{tag}",
            size="1024x1024",
            quality="low",
            concurrency_limit=k,
            concurrency_limit_name=self.limit_name,
        )

    def start(self, k: int) -> subprocess.Popen[bytes]:
        """The test's batch script on these rows, K at once, in a new process group."""
        return crash_batch.start(self.prompts_file, self.storage, self.block, k, 600, self.log)

    def signal_mid_run(self, sb: Any, k: int, sig: int) -> tuple[int, float, int | None]:
        """Start the batch script, send ``sig`` to its process group once K answers were
        delivered and at least 2 calls are in flight; (calls in flight then, seconds from the
        signal to the exit or NaN if it hung, exit code)."""
        sb.ledger.reset()
        process = self.start(k)
        try:
            _wait_for(
                "calls in flight",
                lambda: _delivered(sb) >= k and sb.ledger.in_flight >= 2,
                process,
                self.log,
            )
            in_flight = sb.ledger.in_flight
            signalled = time.monotonic()
            os.killpg(process.pid, sig)
            try:
                code: int | None = process.wait(HANG_TIMEOUT)
                seconds = time.monotonic() - signalled
            except subprocess.TimeoutExpired:
                code, seconds = None, float("nan")
        finally:
            stop_process(process)
        return in_flight, seconds, code

    def run_here(self, prompts: list[str], k: int) -> tuple[float, Any]:
        """``batch_generate`` of ``prompts`` in this process: (wall seconds, BatchResult)."""
        return common.run_batch(prompts, storage=self.storage, settings_block=self.block, max_parallel=k)

    def rerun(
        self, sb: Any, k: int, label: str, problems: list[str], profile: str | None = None
    ) -> tuple[float, int]:
        """Every row again, in this process: (wall seconds, calls paid per the sandbox's ledger);
        a rerun that does not store every row is a failed check."""
        sb.ledger.reset()
        with common.profiled(profile):
            wall, result = self.run_here(self.prompts, k)
        stored = getattr(result, "stored", -1) == len(self.prompts)
        common.check(stored, f"{label}: the rerun did not store every row", problems)
        return wall, len(sb.ledger.entries)


def _delivered(sb: Any) -> int:
    return sum(1 for e in sb.ledger.entries if e["delivered"])


def ctrl_c_once(sb: Any, root: Path, run: int, n: int, k: int, problems: list[str]) -> dict[str, Any]:
    """SIGINT to a running batch script's group once K answers came and 2+ calls are in flight."""
    batch = _Batch(root, f"ctrl-c-{run}", n, k)
    in_flight, seconds, code = batch.signal_mid_run(sb, k, signal.SIGINT)
    common.check(not math.isnan(seconds), f"Ctrl-C run {run}: the script hung after SIGINT", problems)
    common.check(code not in (None, 0), f"Ctrl-C run {run}: exit code {code} (expected non-zero)", problems)
    _drain(sb)
    return {
        "figure": "Ctrl-C to exit",
        "run": run,
        "seconds": seconds,
        "calls in flight at the signal": in_flight,
        "exit code": code,
    }


def unclosed_once(root: Path, run: int, problems: list[str]) -> dict[str, Any]:
    """``unclosed_clients.py`` once: seconds from its ``RESULT`` line to its exit."""
    lines: list[tuple[float, bytes]] = []
    err = root / f"unclosed-{run}.stderr"
    started = time.monotonic()
    with err.open("wb") as stderr:
        process = subprocess.Popen(  # noqa: S603 - the repository's own script
            [sys.executable, str(UNCLOSED_SCRIPT)],
            cwd=root,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )
    assert process.stdout is not None
    out = process.stdout

    def read() -> None:
        for line in out:
            lines.append((time.monotonic(), line))

    reader = threading.Thread(target=read, name="unclosed-stdout", daemon=True)
    reader.start()
    code: int | None = None
    exited = float("nan")
    try:
        code = process.wait(HANG_TIMEOUT)
        exited = time.monotonic()
    except subprocess.TimeoutExpired:
        common.check(False, f"unclosed run {run}: the script did not end", problems)
    finally:
        stop_process(process)
        reader.join(5)
    result = [t for t, line in lines if line.startswith(b"RESULT ")]
    common.check(code == 0 and bool(result), f"unclosed run {run}: exit {code}, see {err}", problems)
    last = result[-1] if result else float("nan")
    return {
        "figure": "last line to exit (clients never closed)",
        "run": run,
        "seconds": exited - last,
        "script wall s": exited - started,
        "exit code": code,
    }


def _active_slots(limit_name: str) -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return int(client.read_global_concurrency_limit_by_name(limit_name).active_slots)


def crash_once(
    sb: Any, root: Path, run: int, n: int, k: int, problems: list[str], profile: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """kill -9 of a batch with rows stored and calls in flight, then its rerun; and a clean rerun
    paying for as many rows. Rows: (after kill -9, clean)."""
    batch = _Batch(root, f"crash-{run}", n, k)
    in_flight, _, code = batch.signal_mid_run(sb, k, signal.SIGKILL)
    common.check(code == -signal.SIGKILL, f"crash run {run}: exit code {code} (expected -9)", problems)
    _drain(sb)
    leaked = _active_slots(batch.limit_name)
    crashed_wall, paid = batch.rerun(sb, k, f"crash run {run}", problems, profile)
    crashed = {
        "figure": "rerun after kill -9",
        "run": run,
        "seconds": crashed_wall,
        "calls in flight at the signal": in_flight,
        "slots left taken": leaked,
        "rows paid": paid,
    }

    # the clean case: as many rows stored by a first run that ended normally, then the rerun
    clean = _Batch(root, f"clean-{run}", n, k)
    _, first = clean.run_here(clean.prompts[: n - paid], k)
    common.check(getattr(first, "stored", -1) == n - paid, f"clean run {run}: first run failed", problems)
    clean_wall, clean_paid = clean.rerun(sb, k, f"clean run {run}", problems)
    common.check(clean_paid == paid, f"clean run {run}: paid {clean_paid}, the crash rerun {paid}", problems)
    return crashed, {
        "figure": "clean rerun",
        "run": run,
        "seconds": clean_wall,
        "rows paid": clean_paid,
    }


def _worst(values: list[float]) -> float:
    """The largest figure; NaN when none was measured or one was not (a hang)."""
    if not values or any(math.isnan(v) for v in values):
        return float("nan")
    return max(values)


def main() -> int:
    p = common.parser(__doc__.split("\n\n")[0], n=12, k=4, latency=1.0)
    p.add_argument("--repeat", type=int, default=3, help="runs of figures 1 and 2 (default %(default)s)")
    p.add_argument("--crash-repeat", type=int, default=2, help="runs of figure 3 (default %(default)s)")
    args = p.parse_args()
    n, k, latency = args.n, args.k, args.latency
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    with common.start_stack(args.db) as stack, contextlib.ExitStack() as stop:
        root = stack.root
        os.environ["GPT_IMAGE_LOCK_DIR"] = str(root / "locks")
        sb = stop.enter_context(common.sandbox(latency=latency))

        ctrl_c = [ctrl_c_once(sb, root, i + 1, n, k, problems) for i in range(args.repeat)]
        unclosed = [unclosed_once(root, i + 1, problems) for i in range(args.repeat)]
        # warm-up of the in-process runs (flow registration, clients): not measured
        _Batch(root, "warm-up", 1, k).run_here(["bench stops warm-up"], k)
        crashes: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for i in range(args.crash_repeat):
            crashed, clean = crash_once(sb, root, i + 1, n, k, problems, args.profile if i == 0 else None)
            crashed["over clean"] = crashed["seconds"] / clean["seconds"]
            crashes.append((crashed, clean))
        rows += ctrl_c + unclosed + [row for pair in crashes for row in pair]

        ctrl_c_s = _worst([r["seconds"] for r in ctrl_c])
        unclosed_s = _worst([r["seconds"] for r in unclosed])
        extra_s = _worst([c["seconds"] - cl["seconds"] for c, cl in crashes])
        over_clean = common.median([c["over clean"] for c, _ in crashes])
        verdicts = [
            common.compare("ctrl_c_exit_s", ctrl_c_s, CTRL_C_TARGET),
            common.compare("unclosed_exit_s", unclosed_s, UNCLOSED_TARGET),
            common.compare("crash_rerun_extra_s", extra_s, CRASH_EXTRA_TARGET),
        ]
        common.report(
            f"stops: N={n}, K={k}, L={latency:g} s, local store, Prefect server on {stack.database}",
            ["python", *sys.argv],
            rows,
            {
                "ctrl_c_exit_s": ctrl_c_s,
                "unclosed_exit_s": unclosed_s,
                "crash_rerun_extra_s": extra_s,
                "crash_rerun_over_clean": over_clean,
                "ctrl_c_exit_s_median": common.median([r["seconds"] for r in ctrl_c]),
                "unclosed_exit_s_median": common.median([r["seconds"] for r in unclosed]),
            },
            verdicts,
        )
    return common.exit_code(problems, verdicts)


if __name__ == "__main__":
    sys.exit(main())
