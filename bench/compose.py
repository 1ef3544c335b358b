"""Compose: a user's own flow fanning out N ``generate_image`` calls, against the bound ceil(N/K)·L.

Two styles, as users write them, each in a flow of its own:

* ``map``: a sync flow, ``generate_image.map(prompts, ...)`` then ``[f.result() for f in futures]``,
  on Prefect's default task runner;
* ``gather``: an async flow, ``await asyncio.gather(*(generate_image(p, ...) for p in prompts))``.

The calls share the global concurrency limit K (a ``GptImageSettings`` object passed to every
call); the sandbox (a child process) answers after ``--latency`` s and refuses more than K in
flight. Each style is warmed up (K calls, not timed) and then measured on fresh prompts, so no
call is a cache hit; images go to a local folder. Each server runs in its own child process:
``local`` is a ``prefect server start`` (PostgreSQL when installed), ``ephemeral`` is Prefect's
default with no server configured (its own SQLite server, started by the first flow).

The table shows where the time over the bound goes: the lag from calling the flow to the first
request, the tail from the last answer to the flow's return (and the part of it after the flow's
body returned: Prefect ending the flow run, and of that the wait for its heartbeat thread to stop),
the median gap between an answer and the request taking its slot, and this process's CPU per image.
Two baselines show what Prefect alone costs for the same fan-outs: tasks that sleep L holding one of
K semaphore slots, no plugin (``prefect map``, ``prefect gather``). Last line: ``map_over_ideal``,
``gather_over_ideal`` (local server), the baselines' ``prefect_map_over_ideal``,
``prefect_gather_over_ideal``, and the same with ``_ephemeral``.

A third run is the newcomer's first fan-out (:data:`NEWCOMER`): a sync ``.map`` of 24 calls under
a limit of 4 at L = 0.5 s on the ephemeral default, beside Prefect alone (``--no-newcomer`` skips
it); its last-line figures end in ``_newcomer``.

Usage: ``python bench/compose.py [--n 200] [--k 16] [--latency 1.0] [--server both|local|ephemeral]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common

STYLES = ("map", "gather")
BASELINES = ("prefect map", "prefect gather")
"""Prefect alone, no plugin: the same fan-outs of tasks that each sleep L while holding one of K
slots (a semaphore), so the plugin's rows can be read against what Prefect itself costs."""
_RESULT = "COMPOSE-RESULT "
NEWCOMER = (24, 4, 0.5)
"""The newcomer's first fan-out (N, K, L): a sync flow's ``.map`` of 24 calls under a limit of 4
at 0.5 s, on Prefect's ephemeral default (no server configured); target 1.3 x the bound."""


def _prompts(tag: str, n: int) -> list[str]:
    return [f"compose {tag} #{i}: a lighthouse on a cliff at dawn, watercolor" for i in range(n)]


def _time_heartbeat_ends() -> list[float]:
    """Time how long each flow run's end waits for Prefect's heartbeat thread to stop (an instrument).

    A sync flow run joins its heartbeat thread when it ends (``prefect.flow_engine._send_heartbeats``,
    ``join_on_exit=True``); that thread sleeps in steps of 1 s between its checks of the stop flag, so
    the join waits up to 1 s (an async flow run does not join). The wrapper only records the time of
    the context's exit, in seconds, one entry per flow run; the heartbeats themselves are unchanged.
    """
    import contextlib
    from collections.abc import Iterator

    from prefect import flow_engine

    installed = getattr(flow_engine._send_heartbeats, "ends", None)
    if installed is not None:  # one child measures several styles: wrap once
        return installed  # type: ignore[no-any-return]
    ends: list[float] = []
    original = flow_engine._send_heartbeats

    @contextlib.contextmanager
    def timed(engine: Any, join_on_exit: bool = True) -> Iterator[None]:
        inner = original(engine, join_on_exit)
        inner.__enter__()
        try:
            yield
        except BaseException:
            started = time.perf_counter()
            if not inner.__exit__(*sys.exc_info()):
                raise
            ends.append(time.perf_counter() - started)
        else:
            started = time.perf_counter()
            inner.__exit__(None, None, None)
            ends.append(time.perf_counter() - started)

    timed.ends = ends  # type: ignore[attr-defined]
    flow_engine._send_heartbeats = timed  # type: ignore[assignment]
    return ends


def _measure(
    style: str, n: int, k: int, latency: float, sandbox: common.ChildSandbox, out: Path
) -> dict[str, Any]:
    """Warm up, then run ``style`` on N fresh prompts; one table row."""
    import asyncio

    from prefect import flow, task
    from prefect.utilities.annotations import quote

    from prefect_gpt_image.blocks import GptImageSettings
    from prefect_gpt_image.tasks import generate_image

    settings = GptImageSettings(concurrency_limit=k, concurrency_limit_name=f"bench-compose-{k}")
    options: dict[str, Any] = {
        "size": "1024x1024",
        "quality": "low",
        "settings": settings,
        "storage": str(out),
    }

    body_ended: list[float] = []  # when the flow's body returned (the rest is the flow run's end)
    heartbeat_ends = _time_heartbeat_ends()

    @flow(name="compose-map")
    def fan_out_map(prompts: list[str]) -> int:
        futures = generate_image.map(prompts, **options)
        stored = sum(len(future.result()) for future in futures)
        body_ended.append(time.time())
        return stored

    @flow(name="compose-gather")
    async def fan_out_gather(prompts: list[str]) -> int:
        results = await asyncio.gather(*(generate_image(prompt, **options) for prompt in prompts))
        body_ended.append(time.time())
        return sum(len(refs) for refs in results)

    slot = threading.BoundedSemaphore(k)

    @task(name="sleep-in-a-slot")
    def sleep_in_a_slot(prompt: str) -> int:
        with slot:  # what an API call under a limit of K costs, without the plugin
            time.sleep(latency)
        return 1

    @flow(name="compose-prefect-map")
    def prefect_map(prompts: list[str]) -> int:
        return sum(future.result() for future in sleep_in_a_slot.map(prompts))

    @task(name="sleep-in-a-slot-async")
    async def asleep_in_a_slot(prompt: str, gate: asyncio.Semaphore) -> int:
        async with gate:
            await asyncio.sleep(latency)
        return 1

    @flow(name="compose-prefect-gather")
    async def prefect_gather(prompts: list[str]) -> int:
        gate = asyncio.Semaphore(k)
        return sum(await asyncio.gather(*(asleep_in_a_slot(p, quote(gate)) for p in prompts)))

    def run(prompts: list[str]) -> int:
        if style == "map":
            return int(fan_out_map(prompts))
        if style == "gather":
            return int(asyncio.run(fan_out_gather(prompts)))
        if style == "prefect map":
            return int(prefect_map(prompts))
        return int(asyncio.run(prefect_gather(prompts)))

    run(_prompts(f"warm-{style}", k))
    sandbox.reset()
    started, cpu = time.time(), time.process_time()
    stored = run(_prompts(style, n))
    ended, cpu = time.time(), time.process_time() - cpu
    stats = sandbox.stats() if style in STYLES else {"requests": "-", "max_in_flight": 0}
    ideal = math.ceil(n / k) * latency
    row = {
        "style": style,
        "N": n,
        "K": k,
        "L s": latency,
        "wall s": ended - started,
        "ideal s": ideal,
        "over ideal": (ended - started) / ideal,
        "stored": stored,
        "API requests": stats["requests"],
        "max in flight": stats["max_in_flight"],
        "CPU ms/img (this process)": 1000 * cpu / n,
    }
    calls = [r for r in sandbox.requests() if r["endpoint"].endswith("/generations") and r["finished"]]
    calls = calls if style in STYLES else []
    if calls:
        starts = sorted(r["started"] for r in calls)
        ends = sorted(r["finished"] for r in calls)
        gaps = [starts[i] - ends[i - k] for i in range(k, len(starts))]
        row |= {
            "start lag ms": 1000 * (starts[0] - started),
            "tail ms": 1000 * (ended - ends[-1]),
            "of it, flow end ms": 1000 * (ended - body_ended[-1]),
            "of that, heartbeat stop ms": 1000 * heartbeat_ends[-1] if heartbeat_ends else 0.0,
            "gap ms (median)": 1000 * common.median(gaps) if gaps else 0.0,
        }
    return row


def child(server: str, n: int, k: int, latency: float, db: str, styles: tuple[str, ...]) -> int:
    """Measure ``styles`` on one kind of server; print one result line per style."""
    flags = common.sandbox_flags(latency, k)
    if server == "local":
        with common.start_stack(db) as stack:
            with common.sandbox_process(stack.root, *flags) as sandbox:
                for style in styles:
                    row = _measure(style, n, k, latency, sandbox, stack.root / f"images-{style}")
                    print(_RESULT + json.dumps({"server": f"local ({stack.database})", **row}), flush=True)
        return 0
    root = Path(tempfile.mkdtemp(prefix="gpt-image-compose-"))
    os.environ.update(
        {
            "PREFECT_HOME": str(root / "home"),
            "GPT_IMAGE_SPOOL": str(root / "spool"),
            "GPT_IMAGE_API_KEY": common.API_KEY,
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        }
    )
    for name in ("PREFECT_API_URL", "GPT_IMAGE_LOCK_DIR", "GPT_IMAGE_STORAGE"):
        os.environ.pop(name, None)
    with common.sandbox_process(root, *flags) as sandbox:
        for style in styles:
            row = _measure(style, n, k, latency, sandbox, root / f"images-{style}")
            print(_RESULT + json.dumps({"server": "ephemeral (SQLite)", **row}), flush=True)
    return 0


def main() -> int:
    p = common.parser(__doc__.split("\n\n")[0], n=200, k=16, latency=1.0)
    p.add_argument("--server", choices=("both", "local", "ephemeral"), default="both")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--styles", default=",".join(STYLES + BASELINES), help=argparse.SUPPRESS)
    p.add_argument(
        "--no-newcomer", action="store_true", help="skip the newcomer's case (N=24, K=4, L=0.5, ephemeral)"
    )
    args = p.parse_args()
    if args.child:
        return child(args.server, args.n, args.k, args.latency, args.db, tuple(args.styles.split(",")))
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    servers = ("local", "ephemeral") if args.server == "both" else (args.server,)
    runs = [(server, args.n, args.k, args.latency, STYLES + BASELINES, "") for server in servers]
    if not args.no_newcomer:
        runs.append(("ephemeral", *NEWCOMER, ("map", "prefect map"), "_newcomer"))
    last: dict[str, Any] = {}
    for server, n, k, latency, styles, tag in runs:
        command = [sys.executable, __file__, "--child", "--server", server, "--styles", ",".join(styles)]
        command += ["--n", str(n), "--k", str(k), "--latency", str(latency), "--db", args.db]
        done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
        found = [
            json.loads(line[len(_RESULT) :]) for line in done.stdout.splitlines() if line.startswith(_RESULT)
        ]
        if done.returncode != 0 or len(found) != len(styles):
            print(done.stdout[-3000:], done.stderr[-5000:], sep="\n", file=sys.stderr)
            problems.append(f"{server}{tag}: the child exited {done.returncode} with {len(found)} results")
        noisy = done.stdout.count("database is locked") + done.stderr.count("database is locked")
        for row in found:
            row["'database is locked'"] = noisy
            common.check(row["stored"] == n, f"{server} {row['style']}: stored {row['stored']}", problems)
            common.check(
                row["max in flight"] <= k,
                f"{server} {row['style']}: {row['max in flight']} in flight, over K={k}",
                problems,
            )
            rows.append(row)
            suffix = tag or ("" if server == "local" else "_ephemeral")
            last[f"{row['style'].replace('prefect ', 'prefect_')}_over_ideal{suffix}"] = row["over ideal"]
    # The targets: both styles on a local server (N=200, K=16, L=1), and the newcomer's first
    # fan-out on the ephemeral default (a sync .map, N=24, K=4, L=0.5; issue 25).
    verdicts = [
        common.compare(f"{style}_over_ideal", last.get(f"{style}_over_ideal", math.nan), 1.15)
        for style in STYLES
        if "local" in servers
    ]
    if not args.no_newcomer:
        verdicts.append(
            common.compare("map_over_ideal_newcomer", last.get("map_over_ideal_newcomer", math.nan), 1.3)
        )
    common.report(
        f"compose: a user's flow fanning out N={args.n} calls, K={args.k}, L={args.latency:g} s",
        ["python", *sys.argv],
        rows,
        last,
        verdicts,
    )
    return common.exit_code(problems, verdicts)


if __name__ == "__main__":
    sys.exit(main())
