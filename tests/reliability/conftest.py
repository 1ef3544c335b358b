"""Fixtures and helpers of the reliability tests: a real Prefect server, the sandbox, SeaweedFS,
settings that make retries fast, and readers of what the server, the sandbox and the stores hold."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.settings import PREFECT_API_URL

from prefect_gpt_image.blocks import GptImageSettings, GptImageStorage
from prefect_gpt_image.local_s3 import LocalS3Server
from tests.support.judge import bucket_objects, image_files
from tests.support.s3 import s3_bucket_block

__all__ = ["bucket_objects", "image_files"]  # re-exported: they live in tests.support.judge

CANARY_KEY = "sk-RELIABILITY-CANARY-3e8d1f0a9b7c"
"""A recognizable API key: the secrets test looks for it everywhere."""
SIZE = "1024x640"
"""The smallest allowed size (655,360 pixels): quick to render."""
REPO_ROOT = Path(__file__).resolve().parents[2]


def unique(prefix: str) -> str:
    """A name no other test uses (blocks and limits are server state)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def fast_settings(**overrides: Any) -> GptImageSettings:
    """Small images, quick retries and a concurrency limit of this test alone."""
    values: dict[str, Any] = {
        "size": SIZE,
        "quality": "low",
        "concurrency_limit_name": unique("gpt-image-rel"),
        "concurrency_limit": 8,
        "initial_backoff_seconds": 0.01,
        "max_total_retry_seconds": 30.0,
    }
    values.update(overrides)
    return GptImageSettings(**values)


def save_block(block: Any, prefix: str) -> str:
    """Save ``block`` on the server under a fresh name; the name."""
    name = unique(prefix)
    block.save(name, overwrite=True)
    return name


def s3_storage_block(
    server: LocalS3Server, bucket: str, folder: str = "gpt", *, fail_fast: bool = False
) -> GptImageStorage:
    """A storage block for ``bucket`` on a local S3 server, through a prefect-aws S3Bucket block.

    ``fail_fast`` turns botocore's retries off, so an outage fails in milliseconds, not seconds.
    """
    return GptImageStorage(
        s3_bucket=s3_bucket_block(server, bucket, folder, fail_fast=fail_fast), presign_ttl_seconds=600
    )


def _post_all(path: str, body: dict[str, Any], page: int = 200) -> list[dict[str, Any]]:
    """Every item of a ``/filter`` endpoint, page by page."""
    out: list[dict[str, Any]] = []
    offset = 0
    while True:
        response = httpx.post(
            f"{PREFECT_API_URL.value()}/{path}",
            json={**body, "limit": page, "offset": offset},
            timeout=30,
        )
        response.raise_for_status()
        items = list(response.json())
        out.extend(items)
        if len(items) < page:
            return out
        offset += page


def flush_logs() -> None:
    """Send the log lines still queued in this process to the server."""
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()


def api_logs(flow_run_ids: list[Any] | None = None) -> list[dict[str, Any]]:
    """Log records from the server (``/api/logs/filter``): of the given flow runs (and their
    task runs), or all of them."""
    flush_logs()
    body: dict[str, Any] = {"sort": "TIMESTAMP_ASC"}
    if flow_run_ids is not None:
        body["logs"] = {"flow_run_id": {"any_": [str(i) for i in flow_run_ids]}}
    return _post_all("logs/filter", body)


def api_artifacts(flow_run_ids: list[Any] | None = None) -> list[dict[str, Any]]:
    """Artifacts from the server's REST API (3.8.8's client sends nulls its server refuses)."""
    body: dict[str, Any] = {}
    if flow_run_ids is not None:
        body["artifacts"] = {"flow_run_id": {"any_": [str(i) for i in flow_run_ids]}}
    return _post_all("artifacts/filter", body)


def table_rows(flow_run_id: Any, key: str = "gpt-image-batch") -> list[dict[str, Any]]:
    """The rows of a flow run's table artifact ``key``."""
    import json

    table = next(a for a in api_artifacts([flow_run_id]) if a["key"] == key)
    data = table["data"]
    return list(json.loads(data) if isinstance(data, str) else data)


def walk_files(*roots: Path) -> Iterator[Path]:
    """Every regular file under ``roots`` (missing roots skipped)."""
    for root in roots:
        if not root.exists():
            continue
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                path = Path(dirpath) / name
                if path.is_file() and not path.is_symlink():
                    yield path


@pytest.fixture
def rel_env(prefect_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean Prefect home, spool and lock folder on the session server; no key in the environment."""
    monkeypatch.setenv("GPT_IMAGE_LOCK_DIR", str(tmp_path / "locks"))
    return prefect_env
