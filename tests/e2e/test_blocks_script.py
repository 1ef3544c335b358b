"""``deployments/blocks.py`` replaces the key but keeps what was edited in the UI."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from types import ModuleType
from typing import TypeVar

import pytest
from prefect.blocks.core import Block

from prefect_gpt_image.blocks import GptImageCredentials, GptImageSettings, GptImageStorage

from .conftest import BLOCKS_SCRIPT, REPO_ROOT, S3_BUCKET_BLOCK, E2EStack

B = TypeVar("B", bound=Block)


def _load(block_type: type[B], name: str) -> B:
    block = block_type.load(name)
    assert isinstance(block, block_type)
    return block


def _blocks_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpt_image_blocks", REPO_ROOT / "deployments" / "blocks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rerun_replaces_the_key_and_keeps_ui_edits(e2e_stack: E2EStack) -> None:
    save_blocks = _blocks_module().save_blocks
    name = "e2e-rerun"
    with e2e_stack.api():
        slugs = save_blocks(name=name, api_key="sk-first", s3_bucket_block=S3_BUCKET_BLOCK)
        assert slugs == {
            "credentials_block": name,
            "settings_block": name,
            "storage": f"gpt-image-storage/{name}",
        }
        # Someone edits the settings in the UI ...
        settings = _load(GptImageSettings, name)
        settings.quality = "high"
        settings.save(name, overwrite=True)

        # ... then reruns the script with a new key and a new limit: only those change.
        save_blocks(name=name, api_key="sk-second", settings={"concurrency_limit": 3})
        credentials = _load(GptImageCredentials, name)
        settings = _load(GptImageSettings, name)
        storage = _load(GptImageStorage, name)
        assert credentials.api_key.get_secret_value() == "sk-second"
        assert (settings.quality, settings.concurrency_limit) == ("high", 3)
        assert storage.s3_bucket is not None and storage.s3_bucket.bucket_name == e2e_stack.bucket

        # A folder replaces the bucket; the link lifetime given stays with it.
        save_blocks(name=name, api_key="sk-second", storage="./gpt-image-output", presign_ttl_seconds=600)
        storage = _load(GptImageStorage, name)
        assert (storage.location, storage.s3_bucket, storage.presign_ttl_seconds) == (
            "./gpt-image-output",
            None,
            600,
        )
        assert _load(GptImageSettings, name).quality == "high"


def test_a_mistake_saves_nothing(e2e_stack: E2EStack) -> None:
    """``blocks.py`` checks everything it was given before saving anything: a bucket block that is
    not saved (the closest saved one named), a limit out of range, a key that may not go to the
    base URL; each exits 2 with one line saying what to fix, and no block of that name exists."""
    name = "e2e-mistake"
    script = [sys.executable, str(BLOCKS_SCRIPT), "--name", name, "--base-url", e2e_stack.sandbox.base_url]
    env = {**e2e_stack.cli_env, "GPT_IMAGE_API_KEY": "sk-mistake"}
    mistakes = {
        "--s3-bucket-block": (
            ["--s3-bucket-block", S3_BUCKET_BLOCK.replace("bucket", "bukcet")],
            f"no S3Bucket block named 'e2e-bukcet' (did you mean {S3_BUCKET_BLOCK!r}?)",
        ),
        "--concurrency-limit": (["--concurrency-limit", "0"], "concurrency_limit: Input should be greater"),
        "--base-url": (["--base-url", "http://images.example.com/v1"], "base_url: Value error, refusing"),
        "--storage": (
            ["--storage", "s3:///images"],
            "--storage s3:///images: expected an s3://bucket/prefix",
        ),
    }
    for option, (args, expected) in mistakes.items():
        done = subprocess.run(
            [*script, *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 2, (option, done.stdout, done.stderr[-2000:])
        assert expected in done.stderr and "nothing was saved" in done.stderr, (option, done.stderr[-2000:])
        assert "Traceback" not in done.stderr and "sk-mistake" not in done.stderr + done.stdout
        with e2e_stack.api():
            for block_type in (GptImageCredentials, GptImageSettings, GptImageStorage):
                with pytest.raises(ValueError, match="Unable to find"):
                    block_type.load(name)
