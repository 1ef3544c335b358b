"""Fixtures of the task and block tests: a real Prefect server, SeaweedFS, the sandbox, and
credentials with a recognizable key that must never be written anywhere."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from prefect_gpt_image.blocks import GptImageCredentials, GptImageSettings, GptImageStorage
from prefect_gpt_image.local_s3 import LocalS3Server
from tests.support.s3 import s3_bucket_block

CANARY_KEY = "sk-CANARY-7f3a9c1e5b2d4f60a8e9"
"""A recognizable API key: tests check it appears in no log, artifact, record or object."""
SIZE = "1024x640"
"""The smallest allowed size (655,360 pixels): the sandbox renders it quickly."""


@pytest.fixture
def sandbox(make_sandbox: Callable[..., Any]) -> Any:
    """A sandbox with a short latency, for one test."""
    return make_sandbox(latency=0.05)


@pytest.fixture
def credentials(sandbox: Any) -> GptImageCredentials:
    """Credentials for ``sandbox`` with the canary key."""
    return GptImageCredentials(api_key=SecretStr(CANARY_KEY), base_url=sandbox.base_url)


@pytest.fixture
def limit_name() -> str:
    """A concurrency limit name of this test alone (limits are server state)."""
    return f"gpt-image-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(limit_name: str) -> GptImageSettings:
    """Settings with small, fast images and this test's own concurrency limit."""
    return GptImageSettings(size=SIZE, quality="low", concurrency_limit_name=limit_name, concurrency_limit=4)


@pytest.fixture
def local_storage(tmp_path: Path) -> GptImageStorage:
    """A storage block for a local folder of this test."""
    return GptImageStorage(location=str(tmp_path / "images"))


@pytest.fixture
def s3_storage(local_s3: LocalS3Server, s3_bucket: str) -> GptImageStorage:
    """A storage block for a fresh bucket on the local S3 server (short presigned links)."""
    return GptImageStorage(s3_bucket=s3_bucket_block(local_s3, s3_bucket), presign_ttl_seconds=600)
