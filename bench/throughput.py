"""Throughput: how close a batch gets to the provider's bound, ceil(N/K) x L, against the SDK.

The sandbox (a child process, as the real API is another machine: its CPU is not this process's)
answers each image request after ``--latency`` seconds and refuses (429) more than ``--k`` in
flight. The same N prompts go through

* the plugin: the ``batch_generate`` flow, global concurrency limit K (settings block), images
  stored in a local folder (``--storage s3`` for SeaweedFS);
* the official ``openai`` SDK (``max_retries=0``) in a ``ThreadPoolExecutor`` of K workers, each
  downloading its result URL and writing the file, which is what a user would otherwise write.

Each side is warmed up first (one small run, not timed) and uses fresh prompts per repetition,
so nothing is a cache hit. Besides wall time the table shows where the rest of the time goes: the
lag from the start to the first request, the tail after the last answer, and the median gap
between an answer and the next request taking its place. Last line: ``plugin_over_ideal``,
``plugin_over_sdk`` (medians).

Usage: ``python bench/throughput.py [--n 200] [--k 16] [--latency 1.0] [--repeat 1]``
"""

from __future__ import annotations

import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common


def _prompts(tag: str, n: int) -> list[str]:
    return [f"bench {tag} #{i}: a lighthouse on a cliff at dawn, watercolor" for i in range(n)]


def run_plugin(
    prompts: list[str], k: int, storage: str, settings: str, max_parallel: int | None
) -> tuple[float, Any]:
    return common.run_batch(
        prompts,
        options=_options(),
        storage=storage,
        settings_block=settings,
        max_parallel=max_parallel,
    )


def _options() -> Any:
    from prefect_gpt_image.flows import ImageOptions

    return ImageOptions(size="1024x1024", quality="low")


def run_sdk(prompts: list[str], k: int, base_url: str, out: Path) -> tuple[float, int]:
    """The SDK baseline: K threads, each generate + download + write. (seconds, failures)."""
    import httpx
    import openai

    out.mkdir(parents=True, exist_ok=True)
    client = openai.OpenAI(api_key=common.API_KEY, base_url=base_url, max_retries=0)
    http = httpx.Client(timeout=120)
    failures = 0

    def one(item: tuple[int, str]) -> None:
        nonlocal failures
        index, prompt = item
        try:
            answer = client.images.generate(
                model="gpt-image-2", prompt=prompt, size="1024x1024", quality="low"
            )
            url = answer.data[0].url if answer.data else None
            assert url
            got = http.get(url)
            got.raise_for_status()
            (out / f"{index}.png").write_bytes(got.content)
        except Exception as exc:
            failures += 1
            print(f"sdk request {index} failed: {type(exc).__name__}: {exc}", file=sys.stderr)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=k) as pool:
        list(pool.map(one, enumerate(prompts)))
    elapsed = time.perf_counter() - started
    http.close()
    client.close()
    return elapsed, failures


def _row(
    run: str, n: int, k: int, latency: float, wall: float, failed: int, stats: dict[str, Any], cpu: Any
) -> dict[str, Any]:
    """One line of the table: a measured run of N images and what the sandbox and CPU saw."""
    ideal = math.ceil(n / k) * latency
    return {
        "run": run,
        "N": n,
        "K": k,
        "L s": latency,
        "wall s": wall,
        "ideal s": ideal,
        "over ideal": wall / ideal,
        "images/s": n / wall,
        "API requests": stats["requests"],
        "max in flight": stats["max_in_flight"],
        "failed": failed,
        "CPU ms/img (this process)": 1000 * cpu.plugin / n,
        "CPU ms/img (Prefect server+db)": 1000 * cpu.server / n,
    }


def _timeline(log: list[dict[str, Any]], started: float, ended: float, k: int) -> dict[str, Any]:
    """Start lag, tail and the median gap between an answer and the request taking its slot
    (the i-th request after the first K against the i-th answer), from the sandbox's log."""
    timeline = common.request_timeline(log, k)
    if timeline is None:
        return {}
    starts, ends, gaps = timeline
    return {
        "start lag ms": 1000 * (starts[0] - started),
        "tail ms": 1000 * (ended - ends[-1]),
        "gap ms (median)": 1000 * common.median(gaps) if gaps else 0.0,
    }


def main() -> int:
    p = common.parser(__doc__.split("\n\n")[0], n=200, k=16, latency=1.0)
    p.add_argument("--repeat", type=int, default=1, help="measured runs of each side (default %(default)s)")
    p.add_argument("--storage", choices=("local", "s3"), default="local", help="where the plugin stores")
    p.add_argument(
        "--max-parallel",
        type=int,
        default=None,
        help="batch_generate's max_parallel (default: the flow's own, 2 x K)",
    )
    args = p.parse_args()
    n, k, latency = args.n, args.k, args.latency
    ideal = math.ceil(n / k) * latency
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    plugin_times: list[float] = []
    sdk_times: list[float] = []
    with common.start_stack(args.db) as stack:
        with common.sandbox_process(stack.root, *common.sandbox_flags(latency, k)) as sb:
            s3 = common.local_s3() if args.storage == "s3" else None
            try:
                if s3 is not None:
                    s3.__enter__()
                    storage = "s3://bench/throughput"
                else:
                    storage = str(stack.root / "images")
                settings = common.save_settings(
                    "bench-throughput", concurrency_limit=k, concurrency_limit_name=f"bench-throughput-{k}"
                )
                # Warm-up (not timed): flow and task registration, clients, the limit's creation.
                run_plugin(_prompts("warm-plugin", k), k, storage, settings, args.max_parallel)
                run_sdk(_prompts("warm-sdk", k), k, sb.base_url, stack.root / "sdk-warm")
                for rep in range(args.repeat):
                    sb.reset()
                    started = time.time()
                    with common.profiled(args.profile if rep == 0 else None), common.CpuMeter(stack) as cpu:
                        wall, result = run_plugin(
                            _prompts(f"plugin-r{rep}", n), k, storage, settings, args.max_parallel
                        )
                    ended = time.time()
                    stats = sb.stats()
                    stored = getattr(result, "stored", -1)
                    common.check(stored == n, f"plugin stored {stored} of {n}", problems)
                    common.check(
                        stats["max_in_flight"] <= k,
                        f"plugin had {stats['max_in_flight']} in flight, over K={k}",
                        problems,
                    )
                    plugin_times.append(wall)
                    rows.append(
                        _row(f"plugin #{rep + 1}", n, k, latency, wall, n - stored, stats, cpu)
                        | _timeline(sb.requests(), started, ended, k)
                    )
                    sb.reset()
                    started = time.time()
                    with common.CpuMeter(stack) as cpu:
                        wall, failures = run_sdk(
                            _prompts(f"sdk-r{rep}", n), k, sb.base_url, stack.root / "sdk"
                        )
                    ended = time.time()
                    stats = sb.stats()
                    common.check(failures == 0, f"sdk had {failures} failures", problems)
                    sdk_times.append(wall)
                    rows.append(
                        _row(f"openai SDK #{rep + 1}", n, k, latency, wall, failures, stats, cpu)
                        | _timeline(sb.requests(), started, ended, k)
                    )
            finally:
                if s3 is not None:
                    s3.__exit__(None, None, None)
        plugin, sdk = common.median(plugin_times), common.median(sdk_times)
        verdicts = [
            common.compare("plugin_over_ideal", plugin / ideal, 1.10),
            common.compare("plugin_over_sdk", plugin / sdk, 1.05),
        ]
        common.report(
            f"throughput: N={n}, K={k}, L={latency:g} s, storage={args.storage}, "
            f"Prefect server on {stack.database}",
            ["python", *sys.argv],
            rows,
            {
                "plugin_over_ideal": plugin / ideal,
                "plugin_over_sdk": plugin / sdk,
                "plugin_s": plugin,
                "sdk_s": sdk,
                "ideal_s": ideal,
            },
            verdicts,
        )
    return common.exit_code(problems, verdicts)


if __name__ == "__main__":
    sys.exit(main())
