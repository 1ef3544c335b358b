"""What every paying verb shares: its options (where images go, which blocks, ``--json``,
``--sandbox``) and the session they make: the settings, the store and the key.

The store is the flows' own (:func:`prefect_gpt_image.flows.params.load_storage`): a folder, an
``s3://`` URI or a saved block's slug; unset, ``$GPT_IMAGE_STORAGE`` or ``./gpt-image-output``. So
a command and a flow given the same store share images, cache records and file layout.

The key comes from a saved credentials block (``--credentials-block``), else the environment
(``GPT_IMAGE_API_KEY`` / ``OPENAI_API_KEY``, paired with their base URLs as the library pairs
them), else, on a terminal, a hidden prompt. Never from the command line.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .exits import UsageError
from .sizes import check_size

if TYPE_CHECKING:
    from prefect_gpt_image.blocks import GptImageCredentials, GptImageSettings
    from prefect_gpt_image.storage import ImageStore

__all__ = [
    "Session",
    "add_image_options",
    "add_session_options",
    "image_options",
    "open_session",
    "prefect_api_configured",
]

SANDBOX_KEY = "sk-sandbox"


def add_session_options(parser: argparse.ArgumentParser) -> None:
    """Options of every paying verb and its plan."""
    add = parser.add_argument
    add(
        "--storage",
        "--out",
        dest="storage",
        default=None,
        metavar="WHERE",
        help="a folder, s3://bucket/prefix, or a saved block (gpt-image-storage/NAME, s3-bucket/NAME); "
        "default: $GPT_IMAGE_STORAGE, else ./gpt-image-output (the flows' default)",
    )
    add("--settings-block", default=None, metavar="NAME", help="a saved GptImageSettings block")
    add(
        "--credentials-block",
        default=None,
        metavar="NAME",
        help="a saved GptImageCredentials block (default: the key in the environment, else a hidden prompt)",
    )
    add(
        "--base-url",
        default=None,
        help="the API's base URL for the environment's key (as $GPT_IMAGE_BASE_URL)",
    )
    add("--json", action="store_true", help="print one JSON document on stdout and nothing else")
    add("--sandbox", action="store_true", help="start a local sandbox and call it (offline, free)")


def add_image_options(parser: argparse.ArgumentParser, *, generation: bool, count: bool = True) -> None:
    """The request options (the API's field names); unset ones come from the settings.
    ``generation``: with ``--moderation``; ``count``: with ``-n``."""
    add = parser.add_argument
    add("--size", default=None, help="'auto' or WIDTHxHEIGHT, e.g. 1024x1024, 1536x1024")
    add("--quality", default=None, choices=["auto", "low", "medium", "high"])
    if count:
        add("-n", type=int, default=1, help="images per call, 1..10 (each billed)")
    add("--output-format", default=None, choices=["png", "jpeg", "webp"])
    add("--output-compression", type=int, default=None, help="0..100, with jpeg or webp")
    add("--background", default=None, choices=["auto", "opaque"])
    if generation:
        add("--moderation", default=None, choices=["auto", "low"])
    add("--variant", type=int, default=0, help="a new value makes new images for the same request")


def image_options(args: argparse.Namespace, *, presets_only: bool = False) -> dict[str, Any]:
    """The request options given on the command line (None: unset), the size checked."""
    options = {
        "size": check_size(args.size, presets_only=presets_only),
        "quality": args.quality,
        "output_format": args.output_format,
        "output_compression": args.output_compression,
        "background": args.background,
    }
    if getattr(args, "moderation", None) is not None:
        options["moderation"] = args.moderation
    return options


def prefect_api_configured() -> bool:
    """Whether a Prefect API is configured (``PREFECT_API_URL`` in the environment or profile)."""
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


@dataclass
class Session:
    """The settings, store and credentials (None: the environment's key) of one command."""

    settings: GptImageSettings
    store: ImageStore
    credentials: GptImageCredentials | None
    prompted: bool = False


@contextmanager
def open_session(args: argparse.Namespace, *, needs_key: bool = True) -> Iterator[Session]:
    """The command's session, with a sandbox running for it while inside (``--sandbox``); without
    ``needs_key`` (a plan) no key is asked for, but a named credentials block is still loaded."""
    sandbox = None
    if getattr(args, "sandbox", False):
        from prefect_gpt_image.sandbox import SandboxServer

        sandbox = SandboxServer().start()
        # The sandbox's own key and URL, for this process only: no real key goes to it.
        os.environ["GPT_IMAGE_BASE_URL"] = sandbox.base_url
        os.environ["GPT_IMAGE_API_KEY"] = SANDBOX_KEY
    elif args.base_url:
        os.environ["GPT_IMAGE_BASE_URL"] = args.base_url
    try:
        settings = _settings(args.settings_block)
        store = _store(args.storage)
        credentials, prompted = _credentials(args, settings, needs_key=needs_key)
        yield Session(settings=settings, store=store, credentials=credentials, prompted=prompted)
    finally:
        if sandbox is not None:
            sandbox.stop()


def _settings(name: str | None) -> GptImageSettings:
    from prefect_gpt_image.blocks import GptImageSettings

    if not name:
        return GptImageSettings()
    return _load_block(GptImageSettings, name, "--settings-block")  # type: ignore[no-any-return]


def _load_block(kind: Any, name: str, option: str) -> Any:
    from prefect_gpt_image.api import ConfigurationError

    try:
        return kind.load(name)
    except ValueError as exc:
        raise ConfigurationError(
            f"{option} {name!r}: no saved {kind.__name__} block of that name ({exc}); save one "
            "first (deployments/blocks.py, or Block.save in Python)"
        ) from None


def _store(location: str | None) -> ImageStore:
    import asyncio

    from prefect_gpt_image.flows.params import load_storage

    return asyncio.run(load_storage(location, parameter="--storage"))


def _credentials(
    args: argparse.Namespace, settings: GptImageSettings, *, needs_key: bool
) -> tuple[GptImageCredentials | None, bool]:
    """The saved block, else None (the environment's key, checked now unless not ``needs_key``:
    a plan prices the calls for the block's endpoint but needs no key), else a prompted key."""
    from prefect_gpt_image.api import ConfigurationError
    from prefect_gpt_image.blocks import GptImageCredentials
    from prefect_gpt_image.calls import client_config

    if args.credentials_block:
        block = _load_block(GptImageCredentials, args.credentials_block, "--credentials-block")
        return block, False
    if not needs_key:
        return None, False
    try:
        client_config(None, settings)
        return None, False
    except ConfigurationError:
        has_key = any(os.environ.get(name, "").strip() for name in ("GPT_IMAGE_API_KEY", "OPENAI_API_KEY"))
        if has_key or not sys.stdin.isatty() or not sys.stderr.isatty():
            raise
    return _prompted_key(), True


def _prompted_key() -> GptImageCredentials:
    from pydantic import SecretStr

    from prefect_gpt_image.api import DEFAULT_BASE_URL
    from prefect_gpt_image.blocks import GptImageCredentials

    base_url = os.environ.get("GPT_IMAGE_BASE_URL", "").strip() or DEFAULT_BASE_URL
    key = getpass.getpass(f"API key for {base_url} (typing is hidden; not saved): ").strip()
    if not key:
        raise UsageError("no key typed; set GPT_IMAGE_API_KEY or use --credentials-block NAME")
    # This process's environment only, where the flows (run in this process) read it too.
    os.environ["GPT_IMAGE_API_KEY"] = key
    return GptImageCredentials(api_key=SecretStr(key), base_url=base_url)
