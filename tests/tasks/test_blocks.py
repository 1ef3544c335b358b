"""The blocks on a real Prefect server: registration, save/load round trips, masked secrets."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client

from prefect_gpt_image.blocks import GptImageCredentials, GptImageSettings, GptImageStorage
from prefect_gpt_image.local_s3 import LocalS3Server
from prefect_gpt_image.storage import LocalImageStore, S3ImageStore
from tests.support.images import png_bytes
from tests.support.prefect import PrefectServer
from tests.support.s3 import s3_bucket_block

from .conftest import CANARY_KEY


def _name() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


def test_a_fresh_server_knows_the_blocks(prefect_server: PrefectServer) -> None:
    """The ``prefect.collections`` entry point registers them when the server starts.

    (Keep this test first: the other tests register the blocks themselves.)
    """
    with get_client(sync_client=True) as client:
        for slug in ("gpt-image-credentials", "gpt-image-settings", "gpt-image-storage"):
            assert client.read_block_type_by_slug(slug).slug == slug


@pytest.mark.parametrize("module", ["prefect_gpt_image", "prefect_gpt_image.blocks"])
def test_block_register_cli(prefect_server: PrefectServer, module: str) -> None:
    """``prefect block register -m MODULE``, run in-process (the CLI's own runner): the package's lazy
    names are found too, while ``import prefect_gpt_image.api`` stays free of Prefect."""
    from prefect.testing.cli import invoke_and_assert

    invoke_and_assert(
        ["block", "register", "-m", module],
        expected_output_contains=["GPT Image Credentials", "GPT Image Settings", "GPT Image Storage"],
        expected_output_does_not_contain="S3 Bucket",  # only this package's blocks
        echo=False,
    )
    with get_client(sync_client=True) as client:
        for slug in ("gpt-image-credentials", "gpt-image-settings", "gpt-image-storage"):
            assert client.read_block_type_by_slug(slug).slug == slug


def test_credentials_round_trip_keeps_and_masks_the_key(prefect_server: PrefectServer) -> None:
    name = _name()
    block = GptImageCredentials(api_key=CANARY_KEY, base_url="https://api.crazyrouter.com/v1/")
    assert CANARY_KEY not in repr(block) and CANARY_KEY not in str(block)
    block.save(name)
    loaded = GptImageCredentials.load(name)
    assert loaded.api_key.get_secret_value() == CANARY_KEY
    assert loaded.base_url == "https://api.crazyrouter.com/v1"
    assert CANARY_KEY not in repr(loaded)
    with get_client(sync_client=True) as client:
        masked = client.read_block_document_by_name(
            name, block_type_slug="gpt-image-credentials", include_secrets=False
        )
        revealed = client.read_block_document_by_name(name, block_type_slug="gpt-image-credentials")
        block_type = client.read_block_type_by_slug("gpt-image-credentials")
    assert CANARY_KEY not in repr(masked.data)
    assert masked.data["api_key"] == "********"
    assert revealed.data["api_key"] == CANARY_KEY
    assert block_type.logo_url and block_type.documentation_url and block_type.description


def test_settings_round_trip(prefect_server: PrefectServer) -> None:
    name = _name()
    settings = GptImageSettings(
        quality="high",
        size="1536x1024",
        requests_per_minute=30,
        max_cost_per_run=2.5,
        allowed_media_hosts=["x.io"],
        max_attempts=2,
    )
    settings.save(name)
    loaded = GptImageSettings.load(name)
    assert loaded.model_dump() == settings.model_dump()
    assert loaded.retry_policy().max_attempts == 2  # not the default: the saved value is used
    with get_client(sync_client=True) as client:  # as `prefect block inspect gpt-image-settings/NAME`
        doc = client.read_block_document_by_name(name, block_type_slug="gpt-image-settings")
    assert doc.data["quality"] == "high" and doc.data["max_cost_per_run"] == 2.5


def test_storage_round_trip_with_a_nested_s3_bucket(
    prefect_server: PrefectServer, local_s3: LocalS3Server, s3_bucket: str, tmp_path: Path
) -> None:
    name = _name()
    storage = GptImageStorage(
        s3_bucket=s3_bucket_block(local_s3, s3_bucket, "nested"), presign_ttl_seconds=120
    )
    storage.save(name)
    loaded = GptImageStorage.load(name)
    assert loaded.s3_bucket is not None
    assert loaded.s3_bucket.credentials.aws_secret_access_key.get_secret_value() == local_s3.secret_key  # type: ignore[union-attr]
    store = loaded.get_store()
    assert isinstance(store, S3ImageStore) and store.prefix == "nested" and store.presign_ttl == 120
    data = png_bytes()
    import hashlib

    stored = store.put_image(hashlib.sha256(data).hexdigest(), "png", data)
    assert store.read_bytes(stored.uri) == data
    with get_client(sync_client=True) as client:
        doc: Any = client.read_block_document_by_name(
            name, block_type_slug="gpt-image-storage", include_secrets=False
        )
    assert local_s3.secret_key not in repr(doc)
    local = GptImageStorage(location=str(tmp_path / "out")).get_store()
    assert isinstance(local, LocalImageStore) and local.root == (tmp_path / "out").resolve()


def test_credentials_give_working_clients(sandbox: Any) -> None:
    credentials = GptImageCredentials(api_key=CANARY_KEY, base_url=sandbox.base_url)
    with credentials.get_client(GptImageSettings(max_attempts=1)) as client:
        images = client.generate("a lighthouse", size="1024x640", quality="low")
    assert images[0].width == 1024 and images[0].height == 640
