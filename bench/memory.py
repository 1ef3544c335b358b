"""Memory: a batch of large images must not need memory in proportion to the batch.

N images of 3840x2160 PNG (photo-like grain, about 11 MB each, as real results are) go through
the ``batch_generate`` flow into a local S3 server (SeaweedFS) under the default settings (global
limit K=4, 2 x K rows in progress). The sandbox runs in a child process, so this process's RSS is
the plugin's alone. Reported: the peak RSS during the batch minus the idle RSS just before it
(after a warm-up batch of small images that loaded every module and client), sampled every 5 ms
and checked against the kernel's high-water mark.

Last line: ``rss_growth_mb``.

Usage: ``python bench/memory.py [--n 50] [--k 4] [--latency 0.5] [--size 3840x2160]``
"""

from __future__ import annotations

import contextlib
import gc
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common


def main() -> int:
    p = common.parser(__doc__.split("\n\n")[0], n=50, k=4, latency=0.5)
    p.add_argument("--size", default="3840x2160", help="image size (default %(default)s)")
    p.add_argument("--no-texture", action="store_true", help="small, flat images instead of realistic ones")
    args = p.parse_args()
    n, k = args.n, args.k
    problems: list[str] = []
    with common.start_stack(args.db) as stack, contextlib.ExitStack() as stop:
        from prefect_gpt_image.flows import ImageOptions

        flags = ["--latency", str(args.latency), "--max-concurrency", str(k), "--render", "template"]
        if not args.no_texture:
            flags.append("--texture")
        sb = stop.enter_context(common.sandbox_process(stack.root, *flags))
        stop.enter_context(common.local_s3())
        settings = common.save_settings(
            "bench-memory", concurrency_limit=k, concurrency_limit_name=f"bench-memory-{k}"
        )
        storage = "s3://bench/memory"
        # Warm-up (not measured): every module, client and connection pool, with small images.
        common.run_batch(
            [f"bench memory warm-up #{i}" for i in range(2 * k)],
            options=ImageOptions(size="1024x1024", quality="low"),
            storage=storage,
            settings_block=settings,
        )
        gc.collect()
        time.sleep(1.0)
        idle = common.rss_mb()
        billed_before = sb.ledger()["stats"]["billed_images"]
        with common.PeakRSS() as peak, common.profiled(args.profile):
            wall, result = common.run_batch(
                [f"bench memory #{i}: a harbour at night, long exposure" for i in range(n)],
                options=ImageOptions(size=args.size, quality="high"),  # type: ignore[arg-type]
                storage=storage,
                settings_block=settings,
            )
        after = common.rss_mb()
        stats = sb.ledger()
        billed = stats["stats"]["billed_images"] - billed_before
        sizes = [img["size_bytes"] for e in stats["entries"][-n:] for img in e["images"]]
        mean_mb = sum(sizes) / len(sizes) / 1e6 if sizes else float("nan")
        common.check(result.stored == n, f"stored {result.stored} of {n}", problems)
        growth = peak.peak - idle
        rows: list[dict[str, Any]] = [
            {
                "N": n,
                "size": args.size,
                "MB per image": mean_mb,
                "MB all images": mean_mb * n,
                "K": k,
                "wall s": wall,
                "idle RSS MB": idle,
                "peak RSS MB": peak.peak,
                "after RSS MB": after,
                "peak growth MB": growth,
                "billed": billed,
                "stored": result.stored,
            }
        ]
        verdicts = [common.compare("rss_growth_mb", growth, 150)]
        common.report(
            f"memory: {n} x {args.size} PNG into S3 (SeaweedFS), K={k}, Prefect server on {stack.database}",
            ["python", *sys.argv],
            rows,
            {"rss_growth_mb": growth, "peak_rss_mb": peak.peak, "idle_rss_mb": idle},
            verdicts,
        )
    return common.exit_code(problems, verdicts)


if __name__ == "__main__":
    sys.exit(main())
