"""Pytest fixtures for a real local S3 server (SeaweedFS): ``local_s3`` and ``s3_bucket``.

Register with ``pytest_plugins = ["tests.support.s3"]`` in ``tests/conftest.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from prefect_aws import AwsClientParameters, AwsCredentials, S3Bucket
from pydantic import SecretStr

from prefect_gpt_image.local_s3 import LocalS3Server
from prefect_gpt_image.storage import S3ImageStore
from prefect_gpt_image.tasks import read_manifest


@pytest.fixture(scope="session")
def local_s3() -> Iterator[LocalS3Server]:
    """One SeaweedFS S3 server on free ports of 127.0.0.1 for the whole test session."""
    with LocalS3Server() as server:
        yield server


def s3_bucket_block(
    server: LocalS3Server, bucket: str, folder: str = "gpt", *, fail_fast: bool = False
) -> S3Bucket:
    """A prefect-aws S3Bucket block for ``bucket`` on the local S3 server.

    ``fail_fast`` turns botocore's retries off, so an outage fails in milliseconds, not seconds.
    """
    config = {"retries": {"max_attempts": 1, "mode": "standard"}, "connect_timeout": 2} if fail_fast else None
    return S3Bucket(
        bucket_name=bucket,
        bucket_folder=folder,
        credentials=AwsCredentials(
            aws_access_key_id=server.access_key,
            aws_secret_access_key=SecretStr(server.secret_key),
            region_name=server.region,
            aws_client_parameters=AwsClientParameters(endpoint_url=server.endpoint_url, config=config),
        ),
    )


def manifest_in_bucket(server: LocalS3Server, uri: str) -> dict[str, Any] | None:
    """The manifest of the image at ``s3://bucket/{prefix}/images/{sha256}.{ext}`` on ``server``,
    found as users find it: through the image's ``cache-key`` metadata to the call's record."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    prefix, _, name = key.rpartition("/images/")
    sha256, _, fmt = name.partition(".")
    return read_manifest(S3ImageStore(server.client(), bucket, prefix), sha256, fmt)


@pytest.fixture
def s3_bucket(local_s3: LocalS3Server) -> str:
    """A fresh, uniquely named, empty bucket on ``local_s3``; its name."""
    return local_s3.create_bucket(f"test-{uuid.uuid4().hex[:16]}")
