"""Rerun: a batch run a second time must pay nothing and take a fraction of the first run.

Runs the ``batch_generate`` flow on N prompts (sandbox latency L, global limit K, images in a
local folder or ``--storage s3``), then runs the very same batch again. The sandbox's ledger
counts the API calls of the rerun (they must be 0: every row is a cache hit from the store).
Last line: ``rerun_api_calls``, ``rerun_over_first`` (median over ``--repeat`` reruns).

Usage: ``python bench/rerun.py [--n 200] [--k 16] [--latency 1.0] [--repeat 2]``
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common


def main() -> int:
    p = common.parser(__doc__.split("\n\n")[0], n=200, k=16, latency=1.0)
    p.add_argument("--repeat", type=int, default=2, help="reruns of the batch (default %(default)s)")
    p.add_argument("--storage", choices=("local", "s3"), default="local", help="where images are stored")
    args = p.parse_args()
    n, k, latency = args.n, args.k, args.latency
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    with common.start_stack(args.db) as stack, contextlib.ExitStack() as stop:
        from prefect_gpt_image.flows import ImageOptions

        sb = stop.enter_context(common.sandbox(latency=latency, max_concurrency=k))
        if args.storage == "s3":
            stop.enter_context(common.local_s3())
            storage = "s3://bench/rerun"
        else:
            storage = str(stack.root / "images")
        settings = common.save_settings(
            "bench-rerun", concurrency_limit=k, concurrency_limit_name=f"bench-rerun-{k}"
        )
        options = ImageOptions(size="1024x1024", quality="low")
        prompts = [f"bench rerun #{i}: a fox in the snow, woodcut" for i in range(n)]
        # Warm-up (not timed): flow registration, clients, the limit.
        common.run_batch(["bench rerun warm-up"], options=options, storage=storage, settings_block=settings)

        sb.reset()
        first, result = common.run_batch(prompts, options=options, storage=storage, settings_block=settings)
        calls = sb.ledger.stats()["requests"]
        common.check(getattr(result, "stored", -1) == n, f"first run stored {result.stored} of {n}", problems)
        rows.append({"run": "first", "N": n, "wall s": first, "API calls": calls, "stored": result.stored})
        reruns: list[float] = []
        rerun_calls = 0
        for rep in range(args.repeat):
            sb.reset()
            with common.profiled(args.profile if rep == 0 else None):
                wall, again = common.run_batch(
                    prompts, options=options, storage=storage, settings_block=settings
                )
            calls = sb.ledger.stats()["requests"]
            rerun_calls = max(rerun_calls, calls)
            common.check(getattr(again, "stored", -1) == n, f"rerun stored {again.stored} of {n}", problems)
            reruns.append(wall)
            rows.append(
                {
                    "run": f"rerun #{rep + 1}",
                    "N": n,
                    "wall s": wall,
                    "API calls": calls,
                    "stored": again.stored,
                    "over first": wall / first,
                    "ms per row": 1000 * wall / n,
                }
            )
        rerun = common.median(reruns)
        verdicts = [
            common.compare("rerun_api_calls", rerun_calls, 0),
            common.compare("rerun_over_first", rerun / first, 0.10),
        ]
        common.report(
            f"rerun: N={n}, K={k}, L={latency:g} s, storage={args.storage}, "
            f"Prefect server on {stack.database}",
            ["python", *sys.argv],
            rows,
            {
                "rerun_api_calls": rerun_calls,
                "rerun_over_first": rerun / first,
                "first_s": first,
                "rerun_s": rerun,
            },
            verdicts,
        )
    return common.exit_code(problems, verdicts)


if __name__ == "__main__":
    sys.exit(main())
