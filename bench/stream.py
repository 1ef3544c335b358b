"""Streaming: how late does the plugin's partial-image callback run after the API sent a partial?

N streamed generations (``stream=True, partial_images=3``, realistic 1024x1024 PNG partials) run
as ``generate_image`` tasks in a flow, K at a time. The sandbox's ASGI app is wrapped to note the
moment each partial-image event is handed to the server socket; the ``on_partial`` callback notes
the moment it is called with that partial. The delay is the difference (same clock, same
process). Reported for the first partial of each request (what a user waiting for a preview
feels) and for all partials.

Last line: ``partial_delay_ms_median`` (first partials).

Usage: ``python bench/stream.py [--n 20] [--k 4] [--latency 2.0]``
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common

_INDEX = re.compile(rb'"partial_image_index":\s*(\d+)')


class _SendTimes:
    """ASGI middleware noting when each partial-image event of a request is sent."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.sent: dict[tuple[str, int], float] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        request_id: list[str] = []

        async def timed_send(message: Any) -> None:
            if message.get("type") == "http.response.start":
                for name, value in message.get("headers", []):
                    if name.lower() == b"x-oneapi-request-id":
                        request_id.append(value.decode())
            body = message.get("body", b"")
            found = _INDEX.search(body) if b"partial_image" in body[:200] else None
            await send(message)
            if found and request_id:
                self.sent[(request_id[0], int(found.group(1)))] = time.perf_counter()

        await self.app(scope, receive, timed_send)


def main() -> int:
    p = common.parser(__doc__.split("\n\n")[0], n=20, k=4, latency=2.0)
    p.add_argument("--partials", type=int, default=3, help="partial images per request (default 3)")
    args = p.parse_args()
    n, k = args.n, args.k
    problems: list[str] = []
    with common.start_stack(args.db) as stack, contextlib.ExitStack() as stop:
        from prefect import flow

        from prefect_gpt_image.blocks import GptImageSettings
        from prefect_gpt_image.sandbox import SandboxServer
        from prefect_gpt_image.tasks import generate_image

        server = SandboxServer(latency=args.latency, max_concurrency=k, render="template", texture=True)
        timer = _SendTimes(server.app)
        server.app = timer
        stop.enter_context(server)
        base_url = server.base_url
        import os

        os.environ["GPT_IMAGE_BASE_URL"] = base_url
        settings = GptImageSettings(
            size="1024x1024",
            quality="low",
            concurrency_limit=k,
            concurrency_limit_name=f"bench-stream-{k}",
        )
        storage = str(stack.root / "images")
        received: dict[tuple[str, int], float] = {}

        def on_partial(partial: Any) -> None:
            received[(partial.request_id, partial.index)] = time.perf_counter()

        @flow(name="bench-stream")
        async def streamed(prompts: list[str]) -> list[Any]:
            return await asyncio.gather(
                *(
                    generate_image(
                        prompt,
                        stream=True,
                        partial_images=args.partials,
                        on_partial=on_partial,
                        settings=settings,
                        storage=storage,
                    )
                    for prompt in prompts
                )
            )

        asyncio.run(streamed([f"bench stream warm-up #{i}" for i in range(k)]))
        received.clear()
        timer.sent.clear()
        started = time.perf_counter()
        with common.profiled(args.profile):
            results = asyncio.run(streamed([f"bench stream #{i}: a paper boat" for i in range(n)]))
        wall = time.perf_counter() - started
        common.check(len(results) == n, f"{len(results)} of {n} calls returned", problems)
        delays = {key: 1000 * (received[key] - sent) for key, sent in timer.sent.items() if key in received}
        missing = len(timer.sent) - len(delays)
        common.check(missing == 0, f"{missing} partials sent but never seen by the callback", problems)
        first = sorted(v for (_, index), v in delays.items() if index == 0)
        every = sorted(delays.values())
        rows: list[dict[str, Any]] = []
        for label, values in (("first partial", first), ("every partial", every)):
            rows.append(
                {
                    "delay of": label,
                    "count": len(values),
                    "median ms": common.median(values),
                    "p90 ms": values[int(0.9 * (len(values) - 1))] if values else float("nan"),
                    "max ms": max(values) if values else float("nan"),
                    "min ms": min(values) if values else float("nan"),
                }
            )
        verdicts = [common.compare("partial_delay_ms_median", common.median(first), 20)]
        common.report(
            f"stream: N={n} streamed calls, {args.partials} partials, K={k}, L={args.latency:g} s, "
            f"wall {wall:.1f} s, Prefect server on {stack.database}",
            ["python", *sys.argv],
            rows,
            {
                "partial_delay_ms_median": common.median(first),
                "partial_delay_ms_p90": rows[0]["p90 ms"],
                "all_partials_delay_ms_median": common.median(every),
            },
            verdicts,
        )
    return common.exit_code(problems, verdicts)


if __name__ == "__main__":
    sys.exit(main())
