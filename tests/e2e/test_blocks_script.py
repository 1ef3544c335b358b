"""``deployments/blocks.py`` replaces the key but keeps what was edited in the UI."""

from __future__ import annotations

import importlib.util
from types import ModuleType
from typing import TypeVar

from prefect.blocks.core import Block

from prefect_gpt_image.blocks import GptImageCredentials, GptImageSettings, GptImageStorage

from .conftest import REPO_ROOT, S3_BUCKET_BLOCK, E2EStack

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
