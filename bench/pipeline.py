"""Pipeline: ``batch_pipeline`` of N rows x 3 dependent steps (generate → box edit → blend with
the generated image) under the global limit K, against the bound of the dependent chain.

Each row's steps follow each other (each needs the one before), the rows share K slots; the
simple bound is ceil(N/K)·3·L. The sandbox answers after ``--latency`` s and refuses more than K
in flight (a child process: its CPU is not the client's); images go to a local folder; a warm-up
row runs first (not timed). The table adds the share of slot time a request held, and the CPU per
call of this process, of the Prefect server with its database and of the sandbox. Last line:
``pipeline_over_ideal`` (wall / bound), ``pipeline_s``, ``ideal_s``, ``api_calls``.

Usage: ``python bench/pipeline.py [--n 100] [--k 16] [--latency 1.0]``
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common

STEPS: list[dict[str, Any]] = [
    {
        "kind": "generate",
        "prompt": "{product} on a {surface}, product photo",
        "options": {"size": "1024x1024"},
    },
    {
        "kind": "edit",
        "prompt": "a {backdrop} backdrop",
        "region": {"left": 0, "top": 0, "right": 1, "bottom": 0.3},
    },
    {"kind": "blend", "prompt": "a catalogue tile of the two", "references": ["generate"]},
]


def _manifest(path: Path, tag: str, n: int) -> Path:
    lines = ["id,product,surface,backdrop"] + [f"r{i},mug {tag} {i},oak desk,blue" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(manifest: Path, **kwargs: Any) -> tuple[float, Any]:
    from prefect_gpt_image.flows import batch_pipeline

    async def go() -> tuple[float, Any]:
        started = time.perf_counter()
        state = await batch_pipeline(manifest=str(manifest), steps=STEPS, return_state=True, **kwargs)
        elapsed = time.perf_counter() - started
        return elapsed, await state.aresult(raise_on_failure=False)

    return asyncio.run(go())


def _busy(log: list[dict[str, Any]], k: int) -> float:
    """The share of the K slots' time, from the first request to the last answer, that a request
    held (1.0: never a slot idle)."""
    if not log:
        return 0.0
    start = min(r["started"] for r in log)
    end = max(r["finished"] for r in log)
    held = sum(r["finished"] - r["started"] for r in log)
    return held / (k * (end - start)) if end > start else 0.0


def main() -> int:
    p = common.parser(__doc__.split("\n\n")[0], n=100, k=16, latency=1.0)
    args = p.parse_args()
    n, k, latency = args.n, args.k, args.latency
    problems: list[str] = []
    with common.start_stack(args.db) as stack, contextlib.ExitStack() as stop:
        # A child process, as the real API is another machine (edits upload and decode images).
        sb = stop.enter_context(common.sandbox_process(stack.root, *common.sandbox_flags(latency, k)))
        storage = str(stack.root / "images")
        settings = common.save_settings(
            "bench-pipeline", concurrency_limit=k, concurrency_limit_name=f"bench-pipeline-{k}"
        )
        kwargs: dict[str, Any] = {
            "options": {"quality": "low"},
            "storage": storage,
            "settings_block": settings,
        }
        _run(_manifest(stack.root / "warm.csv", "warm-up", 1), **kwargs)  # not timed

        sb.reset()
        sandbox0 = common.cpu_seconds([sb.pid])
        with common.profiled(args.profile), common.CpuMeter(stack) as cpu:
            wall, result = _run(_manifest(stack.root / "rows.csv", "bench", n), **kwargs)
        sandbox_cpu = common.cpu_seconds([sb.pid]) - sandbox0
        calls = sb.stats()["requests"]
        busy = _busy(sb.requests(), k)
        common.check(
            getattr(result, "stored", -1) == n, f"stored {getattr(result, 'stored', -1)} of {n}", problems
        )
        common.check(calls == 3 * n, f"{calls} API calls for {3 * n} steps", problems)
        ideal = math.ceil(n / k) * 3 * latency
        per_call = 1000 / max(calls, 1)
        rows = [
            {
                "N": n,
                "steps": 3,
                "K": k,
                "L s": latency,
                "wall s": wall,
                "ideal s": ideal,
                "API calls": calls,
                "slots busy": busy,
                "CPU ms/call: flow": cpu.plugin * per_call,
                "server+db": cpu.server * per_call,
                "sandbox": sandbox_cpu * per_call,
            }
        ]
        verdicts = [common.compare("pipeline_over_ideal", wall / ideal, 1.15)]
        common.report(
            f"pipeline: N={n} rows x 3 steps, K={k}, L={latency:g} s, Prefect server on {stack.database}",
            ["python", *sys.argv],
            rows,
            {"pipeline_over_ideal": wall / ideal, "pipeline_s": wall, "ideal_s": ideal, "api_calls": calls},
            verdicts,
        )
    return common.exit_code(problems, verdicts)


if __name__ == "__main__":
    sys.exit(main())
