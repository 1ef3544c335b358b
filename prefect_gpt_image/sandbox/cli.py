"""Command line of the sandbox: ``prefect-gpt-image sandbox [flags]`` (or ``python -m``).

:func:`add_arguments` declares one flag per :class:`SandboxConfig` field; :func:`run` serves in
the foreground, printing the base URL on the first line of stdout, until Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from .config import FAULT_KINDS, MEDIA_FLAKY, MEDIA_FLAKY_MODES, FaultConfig, SandboxConfig
from .server import SandboxServer

__all__ = ["add_arguments", "config_from_args", "main", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the sandbox's flags to ``parser``."""
    d = SandboxConfig()
    add = parser.add_argument
    add("--host", default=d.host, help="address to bind (default %(default)s)")
    add("--port", type=int, default=d.port, help="port to bind; 0 picks a free one (default)")
    add("--latency", type=float, default=d.latency, help="seconds per image request")
    add(
        "--max-concurrency",
        type=int,
        default=d.max_concurrency,
        help="image requests in flight before 429 (default: unlimited)",
    )
    add(
        "--result-mode",
        choices=("url", "b64_json"),
        default=d.result_mode,
        help="how results come back (default %(default)s)",
    )
    add("--keys", default="", help="comma-separated API keys to accept (default: any key)")
    add("--media-ttl", type=float, default=d.media_ttl, help="seconds a result URL lives")
    add("--balance", type=int, default=d.balance, help="images that may be billed before 403")
    add("--max-body-bytes", type=int, default=d.max_body_bytes, help="larger bodies get 413")
    add(
        "--moderation-trigger",
        default=d.moderation_trigger,
        help="prompts containing this text are blocked (default %(default)r)",
    )
    add(
        "--retry-after",
        type=float,
        default=d.retry_after,
        help="send Retry-After with this many seconds on 429 (default: none, as the gateway)",
    )
    add(
        "--no-stream-done",
        dest="stream_done",
        action="store_false",
        help="end streams without 'data: [DONE]'",
    )
    add(
        "--stream-completed-url",
        action="store_true",
        help="streamed completed events carry a url instead of b64_json",
    )
    add("--slow-seconds", type=float, default=d.slow_seconds, help="extra delay of 'slow' faults")
    add("--public-url", default=None, help="scheme://host[:port] for result URLs")
    add(
        "--render",
        choices=("draw", "template"),
        default=d.render,
        help="draw every image, or copy a pre-rendered one per size (cheap) (default %(default)s)",
    )
    add("--texture", action="store_true", help="photo-like grain: files as large as real results")
    add(
        "--price-per-image",
        type=float,
        default=d.price_per_image,
        help="USD the ledger charges per billed image (default %(default)s, the contract's)",
    )
    add(
        "--token-prices",
        default=None,
        metavar="TEXT,IMAGE_IN,IMAGE_OUT",
        help="bill like OpenAI's API: USD per 1M text input, image input and image output tokens "
        "of each answer's usage (e.g. 5,8,30); unset: --price-per-image per image",
    )
    add("--seed", type=int, default=None, help="seed of the random faults")
    add(
        "--fault",
        action="append",
        default=[],
        metavar="KIND=PROB",
        help=(
            f"random fault probability, repeatable; kinds: {', '.join(FAULT_KINDS)}, and "
            f"{MEDIA_FLAKY}:MODE:N (a result URL failing N GETs, MODE one of "
            f"{'/'.join(MEDIA_FLAKY_MODES)}, then working)"
        ),
    )
    add(
        "--script",
        default="",
        metavar="KIND,KIND",
        help="faults for the first image requests, in order ('none' = no fault)",
    )


def config_from_args(args: argparse.Namespace) -> SandboxConfig:
    """The :class:`SandboxConfig` the parsed flags describe (ValueError if they are invalid)."""
    keys = tuple(k.strip() for k in (args.keys or "").split(",") if k.strip())
    return SandboxConfig(
        host=args.host,
        port=args.port,
        latency=args.latency,
        max_concurrency=args.max_concurrency,
        result_mode=args.result_mode,
        keys=keys,
        media_ttl=args.media_ttl,
        balance=args.balance,
        max_body_bytes=args.max_body_bytes,
        moderation_trigger=args.moderation_trigger,
        retry_after=args.retry_after,
        stream_done=args.stream_done,
        stream_completed_url=args.stream_completed_url,
        slow_seconds=args.slow_seconds,
        public_url=args.public_url,
        render=args.render,
        texture=args.texture,
        price_per_image=args.price_per_image,
        token_prices=_token_prices(args.token_prices),
        faults=FaultConfig.parse(args.fault, seed=args.seed),
    )


def _token_prices(value: str | None) -> tuple[float, float, float] | None:
    """``TEXT,IMAGE_IN,IMAGE_OUT`` as three numbers (ValueError otherwise); None when unset."""
    if not value:
        return None
    parts = [float(part) for part in value.split(",")]
    if len(parts) != 3:
        raise ValueError(f"--token-prices needs three numbers, got {value!r}")
    return parts[0], parts[1], parts[2]


def run(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C (or SIGTERM); print the base URL first. Returns the exit code."""
    try:
        config = config_from_args(args)
    except (ValueError, TypeError) as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 2
    script = [k.strip() for k in (args.script or "").split(",") if k.strip()]
    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        """SIGTERM stops the server like Ctrl-C."""
        stop.set()

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, on_term)
    try:
        with SandboxServer(config) as server:
            if script:
                server.script_faults(script)
            print(server.base_url, flush=True)
            print(
                f"gpt-image-2 sandbox serving at {server.base_url} "
                f"(ledger: {server.url}/sandbox/ledger); Ctrl-C to stop",
                file=sys.stderr,
                flush=True,
            )
            try:
                while not stop.wait(0.2):
                    pass
            except KeyboardInterrupt:
                pass
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point: parse ``argv`` and :func:`run`."""
    parser = argparse.ArgumentParser(
        prog="python -m prefect_gpt_image.sandbox",
        description="Offline gpt-image-2 sandbox server.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
