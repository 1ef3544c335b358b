"""An input a flow cannot read fails the run with the parameter, the URI and what to set (not
boto3's bare ``NoCredentialsError``), before anything is paid: the shipped ``backgrounds``
deployment's placeholder prefix on a worker with no AWS credentials, a bucket that does not
exist, and an ``s3://`` manifest read the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect_gpt_image.flows import batch_edit, batch_generate

from .conftest import run

PLACEHOLDER = "s3://product-photos/incoming/"
"""The ``images`` the shipped ``backgrounds`` deployment names (deployments/prefect.yaml)."""


def test_the_backgrounds_placeholder_on_a_worker_without_credentials(
    no_aws_credentials: Any, tmp_path: Path
) -> None:
    sandbox, _, _ = no_aws_credentials
    state = run(
        batch_edit(
            images=PLACEHOLDER, prompt="white backdrop", storage=str(tmp_path / "out"), return_state=True
        )
    )
    message = str(state.message)
    assert state.is_failed()
    assert f"images: cannot read '{PLACEHOLDER}': no AWS credentials on this worker" in message, message
    assert "Set the 'images' parameter" in message and "AWS_ACCESS_KEY_ID" in message, message
    assert sandbox.ledger.requests == []


def test_a_bucket_that_does_not_exist_and_an_s3_manifest(env: Any, tmp_path: Path) -> None:
    sandbox, _, store = env
    missing = "s3://no-such-bucket-e2e/in/"
    state = run(batch_edit(images=missing, prompt="x", storage=store, return_state=True))
    message = str(state.message)
    assert state.is_failed()
    assert "images: cannot read 's3://no-such-bucket-e2e/in/': the bucket does not exist" in message, message
    assert "Set the 'images' parameter to an existing" in message, message

    bucket = store.split("/")[2]
    manifest = f"s3://{bucket}/manifests/missing.csv"
    state = run(batch_generate(manifest=manifest, storage=store, return_state=True))
    message = str(state.message)
    assert state.is_failed()
    assert f"manifest: cannot read '{manifest}': no such object" in message, message
    assert "Set the 'manifest' parameter to an existing folder, s3:// prefix or object" in message, message
    assert sandbox.ledger.requests == []
