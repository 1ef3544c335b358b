"""Failures: a storage outage loses nothing and never pays twice; which errors Prefect retries."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect import flow

from prefect_gpt_image.api import ModerationError, OutcomeUnknownError
from prefect_gpt_image.blocks import GptImageCredentials, GptImageSettings, GptImageStorage
from prefect_gpt_image.local_s3 import LocalS3Server
from prefect_gpt_image.storage import ImageStore, LocalImageStore
from prefect_gpt_image.tasks import (
    ImageRef,
    ImagesSpooledError,
    ImageStorageError,
    generate_image,
    read_manifest,
)
from tests.support.s3 import s3_bucket_block
from tests.support.sandbox import billed_images, sandbox_requests

pytestmark = pytest.mark.usefixtures("prefect_env")


@flow
async def one_image(
    prompt: str,
    credentials: GptImageCredentials,
    settings: GptImageSettings,
    storage: Any,
    retries: int = 0,
) -> list[ImageRef]:
    task = generate_image.with_options(retries=retries, retry_delay_seconds=0)
    return await task(prompt, credentials=credentials, settings=settings, storage=storage)


def _stop_when_called(sandbox: Any, server: LocalS3Server) -> threading.Thread:
    """Stop ``server`` as soon as the sandbox is working on a request."""

    def watch() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if sandbox.ledger.in_flight:
                server.stop()
                return
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_s3_outage_after_the_call_spools_and_the_rerun_pays_nothing(
    make_sandbox: Any, settings: GptImageSettings, prefect_env: Path
) -> None:
    sandbox = make_sandbox(latency=1.5)
    credentials = GptImageCredentials(api_key="sk-outage", base_url=sandbox.base_url)
    with LocalS3Server() as s3:
        bucket = s3.create_bucket(f"outage-{uuid.uuid4().hex[:8]}")
        storage = GptImageStorage(s3_bucket=s3_bucket_block(s3, bucket, fail_fast=True))
        watcher = _stop_when_called(sandbox, s3)
        with pytest.raises(ImagesSpooledError, match="spooled") as caught:
            asyncio.run(one_image("a fox in a storm", credentials, settings, storage))
        watcher.join()
        assert billed_images(sandbox) == 1
        spooled = caught.value.spool_path
        assert spooled.is_dir() and any(spooled.glob("*.png"))

        s3.start()  # same ports and data
        refs = asyncio.run(one_image("a fox in a storm", credentials, settings, storage))
        assert len(sandbox_requests(sandbox)) == 1  # recovered from the spool, no second call
        assert not spooled.exists()
        store = storage.get_store()
        assert store.read_bytes(refs[0].uri)
        manifest = read_manifest(store, refs[0].sha256, refs[0].format)
        assert manifest is not None and manifest["request_id"] == refs[0].request_id
        # and from now on it is an ordinary cache hit
        assert asyncio.run(one_image("a fox in a storm", credentials, settings, storage)) == refs
        assert len(sandbox_requests(sandbox)) == 1


def test_store_down_before_the_call_pays_nothing(
    sandbox: Any, credentials: GptImageCredentials, settings: GptImageSettings, local_s3: LocalS3Server
) -> None:
    """The cache lookup fails (nothing listens on the endpoint): fail before paying."""
    # The port stays bound by this test, never listening: connections to it are refused, and no
    # other process can take it meanwhile (a closed port could be anyone's by the time we call).
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        dead_port = held.getsockname()[1]
        block = s3_bucket_block(local_s3, "unreachable", fail_fast=True)
        block.credentials.aws_client_parameters.endpoint_url = f"http://127.0.0.1:{dead_port}"
        with pytest.raises(ImageStorageError, match="nothing was sent"):
            asyncio.run(one_image("never sent", credentials, settings, GptImageStorage(s3_bucket=block)))
    assert sandbox_requests(sandbox) == []


class FlakyStore(LocalImageStore):
    """A local store whose first image write fails."""

    failures = 1

    def _create(self, key: str, data: Any, content_type: str, metadata: dict[str, str]) -> bool:
        if FlakyStore.failures:
            FlakyStore.failures -= 1
            raise OSError("disk went away")
        return super()._create(key, data, content_type, metadata)


def test_prefect_retries_a_storage_error_from_the_spool(
    sandbox: Any, credentials: GptImageCredentials, settings: GptImageSettings, tmp_path: Path
) -> None:
    store: ImageStore = FlakyStore(tmp_path / "flaky")
    refs = asyncio.run(one_image("a flaky fox", credentials, settings, store, retries=1))
    assert billed_images(sandbox) == 1 and len(sandbox_requests(sandbox)) == 1
    assert store.exists(store.image_key(refs[0].sha256, refs[0].format))


def test_outcome_unknown_is_not_retried_unless_opted_in(
    sandbox: Any, credentials: GptImageCredentials, settings: GptImageSettings, local_storage: GptImageStorage
) -> None:
    single = settings.model_copy(update={"max_attempts": 1})
    sandbox.script_faults(["drop"])
    with pytest.raises(OutcomeUnknownError):
        asyncio.run(one_image("a dropped fox", credentials, single, local_storage, retries=2))
    assert len(sandbox_requests(sandbox)) == 1

    sandbox.script_faults(["drop"])
    opted_in = single.model_copy(update={"retry_outcome_unknown": True})
    refs = asyncio.run(one_image("a dropped owl", credentials, opted_in, local_storage, retries=2))
    assert len(refs) == 1 and len(sandbox_requests(sandbox)) == 3  # Prefect ran it again


def test_a_400_is_never_retried(
    sandbox: Any, credentials: GptImageCredentials, settings: GptImageSettings, local_storage: GptImageStorage
) -> None:
    with pytest.raises(ModerationError):
        asyncio.run(one_image("[sandbox:block] a fox", credentials, settings, local_storage, retries=2))
    assert len(sandbox_requests(sandbox)) == 1
