"""Overhead: what the plugin costs per image on top of the calls a script would make anyway.

Sandbox (a child process) latency 0, one worker, small 1024x1024 PNG results (``--realistic``
for 1.5 MB ones), images stored in a local S3 server (SeaweedFS):

* plugin: the ``batch_generate`` flow with ``max_parallel=1`` (task run, lock, cache lookup,
  concurrency slot, request, download and check, the image + the call's record (with the
  manifests) in S3, links, artifacts). Per image = (T(N) - T(1)) / (N - 1), so the flow's fixed
  start-up cost is left out (T(1): the median of three runs).
* bare: one httpx POST to the API, one GET of the result URL, one boto3 ``put_object``, in a loop.

Last line: ``overhead_ms_per_image`` = plugin - bare per image (median of ``--repeat``). The
plugin also decodes every result to check it (the bare loop does not); that cost grows with the
image, so it is shown on its own line: ``check_ms_per_realistic_image`` (a 1.5 MB PNG). So is
the thumbnail each new image gets (made from its bytes beside its PUTs, and part of the plugin's
per-image time): ``thumbnail_ms_per_image`` (the sandbox's PNG) and
``thumbnail_ms_per_realistic_image``.

Usage: ``python bench/overhead.py [--n 100] [--repeat 3]``
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common


def bare(prompts: list[str], base_url: str, s3: Any) -> float:
    """Seconds for: POST, GET the URL, put_object, per prompt, sequentially (warm clients)."""
    import httpx

    client = s3.client()
    http = httpx.Client(timeout=60)
    headers = {"Authorization": f"Bearer {common.API_KEY}"}
    started = time.perf_counter()
    for prompt in prompts:
        answer = http.post(
            f"{base_url}/images/generations",
            json={"model": "gpt-image-2", "prompt": prompt, "size": "1024x1024", "quality": "low"},
            headers=headers,
        )
        answer.raise_for_status()
        data = http.get(answer.json()["data"][0]["url"]).content
        key = f"bare/{hashlib.sha256(data).hexdigest()}.png"
        client.put_object(Bucket="bench", Key=key, Body=data, ContentType="image/png")
    elapsed = time.perf_counter() - started
    http.close()
    return elapsed


def _check_cost() -> float:
    """Milliseconds to decode-check one realistic 1024x1024 PNG (median of 15)."""
    from prefect_gpt_image.api.download import verify_image
    from prefect_gpt_image.sandbox.render import Renderer, RenderSpec

    data = Renderer("template", texture=True)(RenderSpec(prompt="check", width=1024, height=1024)).data
    times = []
    for _ in range(15):
        started = time.perf_counter()
        verify_image(data, expected_format="png", expected_size=(1024, 1024))
        times.append(1000 * (time.perf_counter() - started))
    return common.median(times)


def _thumbnail_cost() -> dict[str, float]:
    """Milliseconds to make one thumbnail (``calls.thumbs.make_thumbnail``: decode, reduce to
    256 px, JPEG) of a 1024x1024 PNG as the sandbox serves it here (small, flat) and of a
    realistic one (1.5 MB, photo-like grain); median of 15 each. A new image's thumbnail is made
    from its bytes in the store's writer pool, beside the image's and the record's PUTs: this
    is CPU the row adds, off the event loop (in the per-image figure above it overlaps the PUTs)."""
    from prefect_gpt_image.calls.thumbs import make_thumbnail
    from prefect_gpt_image.sandbox.render import Renderer, RenderSpec

    out: dict[str, float] = {}
    for name, texture in (("small", False), ("realistic", True)):
        data = Renderer("template", texture=texture)(RenderSpec(prompt="thumb", width=1024, height=1024)).data
        times = []
        for _ in range(15):
            started = time.perf_counter()
            make_thumbnail(data)
            times.append(1000 * (time.perf_counter() - started))
        out[name] = common.median(times)
    return out


def main() -> int:
    p = common.parser(__doc__.split("\n\n")[0], n=100, k=1, latency=0.0)
    p.add_argument("--repeat", type=int, default=5, help="measurements of each side (default %(default)s)")
    p.add_argument("--realistic", action="store_true", help="results as large as real ones (1.5 MB)")
    args = p.parse_args()
    n, k = args.n, args.k
    if n < 2:
        p.error("--n must be at least 2")
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    with common.start_stack(args.db) as stack, contextlib.ExitStack() as stop:
        from prefect_gpt_image.flows import ImageOptions

        flags = common.sandbox_flags(args.latency, max(k, 1))
        if not args.realistic:
            flags.remove("--texture")
        sb = stop.enter_context(common.sandbox_process(stack.root, *flags))
        s3 = stop.enter_context(common.local_s3())
        settings = common.save_settings(
            "bench-overhead", concurrency_limit=k, concurrency_limit_name=f"bench-overhead-{k}"
        )
        options = ImageOptions(size="1024x1024", quality="low")

        def plugin(tag: str, count: int) -> float:
            prompts = [f"bench overhead {tag} #{i}: a teapot, studio light" for i in range(count)]
            wall, result = common.run_batch(
                prompts, options=options, storage="s3://bench/plugin", settings_block=settings, max_parallel=1
            )
            common.check(result.stored == count, f"plugin stored {result.stored} of {count}", problems)
            return wall

        # Warm-up (not timed): 20 rows, for a steady state of the store, the server and the pools.
        plugin("warm", 20)
        bare([f"bench overhead warm-bare #{i}" for i in range(20)], sb.base_url, s3)
        per_plugin: list[float] = []
        per_bare: list[float] = []
        for rep in range(args.repeat):
            # T(1), the flow's fixed cost, varies by a few hundred ms run to run: the median of three
            # (one T(1) alone moved the per-image figure by up to 4 ms).
            # Each measurement starts once the server has recorded the previous one's task runs.
            common.wait_server_idle(stack)
            one = common.median([plugin(f"r{rep}-one{i}", 1) for i in range(3)])
            common.wait_server_idle(stack)
            with common.profiled(args.profile if rep == 0 else None):
                many = plugin(f"r{rep}-many", n)
            plugin_ms = 1000 * (many - one) / (n - 1)
            common.wait_server_idle(stack)
            bare_s = bare([f"bench overhead r{rep} bare #{i}" for i in range(n)], sb.base_url, s3)
            bare_ms = 1000 * bare_s / n
            per_plugin.append(plugin_ms)
            per_bare.append(bare_ms)
            rows.append(
                {
                    "run": f"#{rep + 1}",
                    "N": n,
                    "plugin T(1) s": one,
                    "plugin T(N) s": many,
                    "plugin ms/image": plugin_ms,
                    "bare ms/image": bare_ms,
                    "overhead ms/image": plugin_ms - bare_ms,
                }
            )
        overhead = common.median([a - b for a, b in zip(per_plugin, per_bare, strict=True)])
        check_ms = _check_cost()
        thumb_ms = _thumbnail_cost()
        verdicts = [common.compare("overhead_ms_per_image", overhead, 25)]
        common.report(
            f"overhead: N={n}, latency {args.latency:g} s, one worker, S3 (SeaweedFS), "
            f"Prefect server on {stack.database}",
            ["python", *sys.argv],
            rows,
            {
                "overhead_ms_per_image": overhead,
                "plugin_ms_per_image": common.median(per_plugin),
                "bare_ms_per_image": common.median(per_bare),
                "check_ms_per_realistic_image": check_ms,
                "thumbnail_ms_per_image": thumb_ms["small"],
                "thumbnail_ms_per_realistic_image": thumb_ms["realistic"],
            },
            verdicts,
        )
    return common.exit_code(problems, verdicts)


if __name__ == "__main__":
    sys.exit(main())
