"""The ``prefect-gpt-image`` command: ``sandbox``, ``generate`` and ``demo``.

Heavy imports (Prefect, boto3) happen inside the subcommands, so ``--help`` and the sandbox start fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    return int(args.run(args))


def _parser() -> argparse.ArgumentParser:
    from .sandbox import cli as sandbox_cli

    parser = argparse.ArgumentParser(
        prog="prefect-gpt-image", description="gpt-image-2 pipelines on Prefect, with an offline sandbox."
    )
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("sandbox", help="run the local gpt-image-2 sandbox server")
    sandbox_cli.add_arguments(p)
    p.set_defaults(run=sandbox_cli.run)

    p = sub.add_parser("generate", help="generate images and save them to a folder")
    p.add_argument("prompt")
    p.add_argument("--size", default=None, help="'auto' or WxH, e.g. 1024x1024")
    p.add_argument("--quality", default=None, choices=["auto", "low", "medium", "high", "hd"])
    p.add_argument("-n", type=int, default=1, help="number of images (1..10)")
    p.add_argument("--output-format", default=None, choices=["png", "jpeg", "webp"])
    p.add_argument("--out", default="gpt-image-output", help="folder to write the images to")
    p.add_argument("--api-key", default=None, help="default: $GPT_IMAGE_API_KEY or $OPENAI_API_KEY")
    p.add_argument(
        "--base-url",
        default=None,
        help="default: the key's own pair: $GPT_IMAGE_BASE_URL or the gateway for "
        "$GPT_IMAGE_API_KEY, $OPENAI_BASE_URL or OpenAI's API for $OPENAI_API_KEY",
    )
    p.add_argument("--sandbox", action="store_true", help="start a local sandbox and call it (offline)")
    p.set_defaults(run=_generate)

    p = sub.add_parser(
        "demo", help="run the pipeline and a small batch offline (sandbox + ephemeral Prefect)"
    )
    p.add_argument(
        "--out", default="gpt-image-output", help="local folder for the images (default ./gpt-image-output)"
    )
    p.add_argument(
        "--s3", action="store_true", help="start a local SeaweedFS S3 server and store there instead"
    )
    p.set_defaults(run=_demo)
    return parser


def _generate(args: argparse.Namespace) -> int:
    from .api import GptImageError, ImagesClient
    from .sandbox import SandboxServer

    options = {
        k: v
        for k, v in {"size": args.size, "quality": args.quality, "output_format": args.output_format}.items()
        if v is not None
    }
    sandbox = SandboxServer() if args.sandbox else None
    try:
        if sandbox is not None:
            sandbox.start()
            args.base_url, args.api_key = sandbox.base_url, args.api_key or "sk-sandbox"
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        with ImagesClient(args.api_key, base_url=args.base_url) as client:
            images = client.generate(args.prompt, n=args.n, **options)
        for image in images:
            path = out / f"{image.sha256[:16]}.{image.format}"
            path.write_bytes(image.read_bytes())
            print(f"{path}  {image.width}x{image.height}  request id {image.request_id}")
        return 0
    except (GptImageError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if sandbox is not None:
            sandbox.stop()


def _demo(args: argparse.Namespace) -> int:
    """The pipeline (generate → mask edit → reference blend) and a small batch, run twice to show
    the cache, offline: a sandbox for the API, an ephemeral Prefect, local or SeaweedFS storage.
    """
    from .demo import run_demo

    return run_demo(out=Path(args.out), s3=args.s3)


if __name__ == "__main__":
    raise SystemExit(main())
