"""Save the blocks that ``deployments/prefect.yaml`` and ``deployments/serve.py`` refer to by name.

The deployments' parameters name three blocks (``gpt-image`` by default); this script saves them
on the Prefect server that ``PREFECT_API_URL`` points at:

* ``GptImageCredentials``: the API key, read from ``$GPT_IMAGE_API_KEY`` (never from the command
  line, so it stays out of shell history and process listings), and ``--base-url`` (replaced);
* ``GptImageSettings``: defaults and policy (``--concurrency-limit``, ``--max-cost-per-run``; the
  rest in the UI, which a later run of this script keeps), and what a run may read: local inputs
  only inside ``--input-root`` folders (a new block: :data:`DEFAULT_INPUT_ROOTS`, the shipped
  manifests and ``./inputs``), ``s3://`` inputs only in the store's bucket and ``--input-bucket``
  ones (whoever can start a deployment run from the UI names its inputs; see docs/deployments.md);
* ``GptImageStorage``: ``--s3-bucket-block NAME`` (a saved prefect-aws ``S3Bucket`` block, whose
  credentials and endpoint the workers then use) or ``--storage`` (a folder or ``s3://bucket/prefix``
  with boto3's standard credentials on the worker).

Example (from the repo root)::

    export GPT_IMAGE_API_KEY=sk-...            # the real key
    python deployments/blocks.py --base-url https://cn.crazyrouter.com/v1 --s3-bucket-block images

Run it again to change a value; the next flow run loads the new blocks, no redeploy needed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from prefect.blocks.core import Block
from pydantic import ValidationError

from prefect_gpt_image.api import DEFAULT_BASE_URL

__all__ = ["DEFAULT_BLOCK_NAME", "DEFAULT_INPUT_ROOTS", "BlocksError", "main", "save_blocks"]

DEFAULT_BLOCK_NAME = "gpt-image"
"""The block name the deployments use for credentials, settings and storage."""
_REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_INPUT_ROOTS = (str(_REPO_ROOT / "deployments" / "manifests"), str(_REPO_ROOT / "inputs"))
"""The folders local inputs of a new settings block may be in: the shipped manifests, and an
``inputs`` folder beside them for your own images (absolute, so the workers need the same layout)."""

B = TypeVar("B", bound=Block)


class BlocksError(ValueError):
    """A value given to :func:`save_blocks` that cannot work; raised before any block is saved."""


def _existing(block_type: type[B], name: str) -> B | None:
    """The saved block ``name`` of ``block_type``, or None when there is none."""
    try:
        block = block_type.load(name)
    except ValueError:  # Prefect's "Unable to find block document named ..."
        return None
    assert isinstance(block, block_type)  # a sync caller gets the block, not a coroutine
    return block


def _saved_names(slug: str) -> list[str]:
    """The names of the saved blocks of type ``slug`` (for a "did you mean")."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        documents = client.read_block_documents_by_type(slug, include_secrets=False)
    return [d.name for d in documents if d.name and not d.is_anonymous]


def _s3_bucket(name: str) -> Any:
    """The saved prefect-aws ``S3Bucket`` block ``name``; :class:`BlocksError` naming the saved
    ones (the closest first) when there is none."""
    from prefect_aws import S3Bucket

    from prefect_gpt_image.api.suggest import did_you_mean

    bucket = _existing(S3Bucket, name)
    if bucket is None:
        saved = _saved_names("s3-bucket")
        hint = did_you_mean(name, saved, "S3Bucket block") if saved else "none is saved yet"
        raise BlocksError(
            f"--s3-bucket-block: no S3Bucket block named {name!r} ({hint}): save it first (in the UI's "
            "Blocks page, or in Python, see docs/deployments.md), or give --storage instead; nothing "
            "was saved"
        )
    return bucket


def save_blocks(
    *,
    name: str = DEFAULT_BLOCK_NAME,
    api_key: str,
    base_url: str = DEFAULT_BASE_URL,
    storage: str | None = None,
    s3_bucket_block: str | None = None,
    public_base_url: str | None = None,
    presign_ttl_seconds: int | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Save the credentials, settings and storage blocks under ``name``; return the parameters
    that name them.

    Everything given is checked first (the S3Bucket block exists, the key may go to the base URL,
    the settings and storage values are valid); only then are the three blocks saved, so a
    mistake saves nothing (:class:`BlocksError` or pydantic's ``ValidationError`` naming it).

    The credentials are replaced. The settings and storage blocks keep what was saved before
    (e.g. edited in the UI) except the values given here (they are not rewritten when nothing is
    given); missing ones start from the defaults.
    """
    from prefect_gpt_image.blocks import GptImageCredentials, GptImageSettings, GptImageStorage
    from prefect_gpt_image.calls import client_config

    if storage and s3_bucket_block:
        raise BlocksError("give storage or s3_bucket_block, not both")
    to_save: list[Block] = []

    # -- check and build everything -------------------------------------------------------------
    current = _existing(GptImageSettings, name)
    new_settings: GptImageSettings | None = None
    if current is None or settings:
        # A new block confines local inputs (a run from the UI names its own inputs); the store's
        # bucket is the only bucket allowed unless input_buckets names more.
        values = (
            current.model_dump(exclude={"block_type_slug"})
            if current is not None
            else {"input_roots": list(DEFAULT_INPUT_ROOTS)}
        )
        new_settings = GptImageSettings.model_validate({**values, **(settings or {})})
    credentials = GptImageCredentials(api_key=api_key, base_url=base_url)
    try:
        client_config(credentials, new_settings or current or GptImageSettings())
    except ValueError as exc:  # ConfigurationError: e.g. a key over plain http to another host
        raise BlocksError(f"--base-url {base_url}: {exc}; nothing was saved") from None
    to_save.append(credentials)
    if new_settings is not None:
        to_save.append(new_settings)

    old = _existing(GptImageStorage, name)
    if old is None or storage or s3_bucket_block or public_base_url or presign_ttl_seconds:
        location, bucket = (old.location, old.s3_bucket) if old is not None else (None, None)
        if storage:
            location, bucket = storage, None
            if storage.startswith("s3://"):
                from prefect_gpt_image.storage import S3ImageStore

                try:
                    S3ImageStore.from_uri(storage)  # the URI's form only: nothing is sent
                except ValueError as exc:
                    raise BlocksError(f"--storage {storage}: {exc}; nothing was saved") from None
        if s3_bucket_block:
            location, bucket = None, _s3_bucket(s3_bucket_block)
        to_save.append(
            GptImageStorage(
                location=location,
                s3_bucket=bucket,
                public_base_url=public_base_url or (old.public_base_url if old is not None else None),
                presign_ttl_seconds=presign_ttl_seconds
                or (old.presign_ttl_seconds if old is not None else 3600),
            )
        )

    # -- then save ------------------------------------------------------------------------------
    for block in to_save:
        block.save(name, overwrite=True)
    return _parameters(name)


def _parameters(name: str) -> dict[str, str]:
    """The deployment parameters that name the blocks saved under ``name``."""
    return {
        "credentials_block": name,
        "settings_block": name,
        "storage": f"gpt-image-storage/{name}",
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python deployments/blocks.py",
        description="Save the gpt-image blocks the deployments refer to (key from $GPT_IMAGE_API_KEY).",
    )
    parser.add_argument("--name", default=DEFAULT_BLOCK_NAME, help="block name (default: %(default)s)")
    parser.add_argument(
        "--base-url", default=None, help="API base URL (default: $GPT_IMAGE_BASE_URL or the API's)"
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--storage", help="a folder or s3://bucket/prefix (boto3 credentials on the worker)")
    where.add_argument("--s3-bucket-block", help="name of a saved prefect-aws S3Bucket block")
    parser.add_argument(
        "--public-base-url", help="lasting public URL of the stored keys (CDN, public prefix)"
    )
    parser.add_argument("--presign-ttl-seconds", type=int, help="presigned link lifetime (default 3600)")
    parser.add_argument("--concurrency-limit", type=int, help="slots of the 'gpt-image' limit (default 4)")
    parser.add_argument("--max-cost-per-run", type=float, help="USD budget per flow run (default: none)")
    parser.add_argument(
        "--input-root",
        action="append",
        help="a folder local inputs may be read from (repeat it; a new block: the shipped manifests "
        "and ./inputs)",
    )
    parser.add_argument(
        "--input-bucket",
        action="append",
        help="a bucket s3:// inputs may be read from besides the store's (repeat it; '*': any)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry: save the three blocks and print the parameters that use them."""
    args = _parser().parse_args(argv)
    api_key = os.environ.get("GPT_IMAGE_API_KEY", "").strip()
    if not api_key:
        print("set GPT_IMAGE_API_KEY to the API key first", file=sys.stderr)
        return 2
    base_url = args.base_url or os.environ.get("GPT_IMAGE_BASE_URL", "").strip() or DEFAULT_BASE_URL
    try:
        slugs = _save(args, api_key, base_url)
    except (BlocksError, ValidationError) as exc:
        print(f"blocks.py: {_short(exc)}", file=sys.stderr)
        return 2
    for parameter, value in slugs.items():
        print(f"{parameter}: {value}")
    return 0


def _short(exc: Exception) -> str:
    """A pydantic error as ``field: message`` lines (no URLs, no input echo: it may hold a key)."""
    if isinstance(exc, ValidationError):
        errors = exc.errors(include_url=False)
        lines = [f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in errors]
        return "; ".join(lines) + "; nothing was saved"
    return str(exc)


def _save(args: argparse.Namespace, api_key: str, base_url: str) -> dict[str, str]:
    return save_blocks(
        name=args.name,
        api_key=api_key,
        base_url=base_url,
        storage=args.storage,
        s3_bucket_block=args.s3_bucket_block,
        public_base_url=args.public_base_url,
        presign_ttl_seconds=args.presign_ttl_seconds,
        settings={
            key: value
            for key, value in (
                ("concurrency_limit", args.concurrency_limit),
                ("max_cost_per_run", args.max_cost_per_run),
                ("input_roots", [str(Path(r).expanduser().resolve()) for r in args.input_root or []] or None),
                ("input_buckets", args.input_bucket),
            )
            if value is not None
        },
    )


if __name__ == "__main__":
    raise SystemExit(main())
