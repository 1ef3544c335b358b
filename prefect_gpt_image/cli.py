"""The ``prefect-gpt-image`` command: ``sandbox``, ``generate`` and ``demo``.

Heavy imports (Prefect, boto3) happen inside the subcommands, so ``--help`` and the sandbox start fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
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
    p.add_argument("--base-url", default=None, help="default: $GPT_IMAGE_BASE_URL or the Crazyrouter URL")
    p.add_argument("--sandbox", action="store_true", help="start a local sandbox and call it (offline)")
    p.set_defaults(run=_generate)

    p = sub.add_parser("demo", help="run the demo offline against the sandbox")
    p.add_argument("--out", default=None, help="storage: a folder or s3:// URI (default ./gpt-image-output)")
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
    """One generate → store round trip against the sandbox, stored content-addressed."""
    from .api import ImagesClient
    from .sandbox import SandboxServer
    from .storage import resolve_store

    os.environ.setdefault("DO_NOT_TRACK", "1")
    store = resolve_store(args.out)
    with (
        SandboxServer(latency=0.2) as sandbox,
        ImagesClient("sk-sandbox", base_url=sandbox.base_url) as client,
    ):
        print(f"sandbox at {sandbox.base_url}; storing to {store.describe()}")
        started = time.monotonic()
        images = client.generate(
            "A lighthouse on a cliff at dawn, watercolour", size="1536x1024", quality="low", n=2
        )
        for image in images:
            stored = store.put_image(image.sha256, image.format, image.read_bytes())
            manifest = {
                "model": image.request.model,
                "parameters": image.request.summary(),
                "request_id": image.request_id,
                "sha256": image.sha256,
                "created": time.time(),
            }
            store.put_manifest(image.sha256, manifest)
            print(f"  {stored.uri}  ({image.width}x{image.height}, request id {image.request_id})")
        billed = sandbox.ledger.billed_images
        print(
            json.dumps(
                {"images": len(images), "billed": billed, "seconds": round(time.monotonic() - started, 2)}
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
