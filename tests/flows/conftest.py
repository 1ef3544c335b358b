"""Fixtures of the flow tests: a sandbox and a real S3 bucket (SeaweedFS), on the real Prefect server."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from prefect.client.schemas.objects import State

KEY = "sk-flows-SECRET-91b2c3"


@pytest.fixture
def env(
    prefect_env: Path, make_sandbox: Any, local_s3: Any, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """A sandbox and an S3 bucket, wired through the environment as a user would."""
    sandbox = make_sandbox(latency=0.05)
    monkeypatch.setenv("GPT_IMAGE_API_KEY", KEY)
    monkeypatch.setenv("GPT_IMAGE_BASE_URL", sandbox.base_url)
    for name, value in local_s3.env().items():
        monkeypatch.setenv(name, value)
    return sandbox, local_s3, f"s3://{s3_bucket}/flows"


@pytest.fixture
def no_aws_credentials(env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A worker with no AWS credentials anywhere boto3 looks; the endpoint stays the local S3
    server, and any connection off loopback (the EC2 metadata service) is refused and recorded."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    refused: list[Any] = []
    connect = socket.socket.connect

    def loopback_only(sock: socket.socket, address: Any) -> Any:
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            refused.append(address)
            raise OSError(f"test refuses a connection to {address!r}")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)
    yield env
    assert refused == [], "boto3 tried to connect off the machine"


def run(state: Any) -> State[Any]:
    """A flow's final state: our flows called from sync code run to completion, as from a script."""
    assert isinstance(state, State), state
    return state


def saved_settings(**overrides: Any) -> str:
    """A GptImageSettings block saved under a fresh name (low quality, a limit of this test alone)."""
    import uuid

    from prefect_gpt_image.blocks import GptImageSettings

    name = f"flows-{uuid.uuid4().hex[:10]}"
    values: dict[str, Any] = {"quality": "low", "concurrency_limit_name": name, "concurrency_limit": 8}
    GptImageSettings(**{**values, **overrides}).save(name, overwrite=True)
    return name
