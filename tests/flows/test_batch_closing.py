"""A batch's closing writes (the table, the contact sheet and its gallery, the final progress) run
at once; the sheet's pages are made while the gallery is written, and name it only once it is
there. From a real flow run on the real Prefect server and the sandbox, into a local folder."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from prefect_gpt_image.flows import ImageOptions, batch_generate
from prefect_gpt_image.storage import ImageStore
from tests.support.markdown import render
from tests.support.prefect import flow_run_artifacts

from .conftest import run


def test_a_gallery_that_could_not_be_written_is_not_named(
    prefect_env: Path, make_sandbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store refuses the gallery's write: the run still completes with its table and its
    contact sheet, whose page shows every row and names no gallery (none is there to open)."""
    sandbox = make_sandbox(latency=0.0)
    monkeypatch.setenv("GPT_IMAGE_API_KEY", "sk-closing")
    monkeypatch.setenv("GPT_IMAGE_BASE_URL", sandbox.base_url)
    refused: list[str] = []
    original = ImageStore.put_bytes

    def put_bytes(store: ImageStore, key: str, data: bytes, content_type: str) -> None:
        if "/reports/gallery-" in f"/{key}":
            refused.append(key)
            raise OSError("the store refused the gallery")
        original(store, key, data, content_type)

    monkeypatch.setattr(ImageStore, "put_bytes", put_bytes)
    root = tmp_path / "out"
    state = run(
        batch_generate(
            prompts=["a kite", "a lake"],
            options=ImageOptions(size="1024x1024", quality="low"),
            storage=str(root),
            return_state=True,
        )
    )
    assert state.is_completed(), state.message
    assert len(refused) == 1 and not (root / refused[0]).exists()
    artifacts = flow_run_artifacts(state.state_details.flow_run_id)
    by_key = {a["key"]: a for a in artifacts if a["key"]}
    assert by_key["gpt-image-batch"]["type"] == "table"
    page = render(by_key["gpt-image-batch-sheet"]["data"])
    assert "Contact sheet, page 1 of 1: rows 1 to 2 of 2" in page.text
    assert "gallery" not in page.text.lower()


def test_the_sheet_and_the_table_are_published_at_once(
    prefect_env: Path, make_sandbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The contact sheet is published while the table is (the run's end waits for the longer of
    the two, not their sum): the sheet here waits until the table has started, which it does only
    when they run at once; both are then there."""
    from prefect_gpt_image.flows import batch

    sandbox = make_sandbox(latency=0.0)
    monkeypatch.setenv("GPT_IMAGE_API_KEY", "sk-closing")
    monkeypatch.setenv("GPT_IMAGE_BASE_URL", sandbox.base_url)
    table_started = asyncio.Event()
    publish_table, publish_sheets = batch.publish_batch_table, batch.publish_sheets

    async def table(*args: Any, **kwargs: Any) -> Any:
        table_started.set()
        return await publish_table(*args, **kwargs)

    async def sheets(*args: Any, **kwargs: Any) -> Any:
        await asyncio.wait_for(table_started.wait(), timeout=60)  # sequential: it never starts
        return await publish_sheets(*args, **kwargs)

    monkeypatch.setattr(batch, "publish_batch_table", table)
    monkeypatch.setattr(batch, "publish_sheets", sheets)
    state = run(
        batch_generate(
            prompts=["a kite"],
            options=ImageOptions(size="1024x1024", quality="low"),
            storage=str(tmp_path / "out"),
            return_state=True,
        )
    )
    assert state.is_completed(), state.message
    keys = {a["key"] for a in flow_run_artifacts(state.state_details.flow_run_id)}
    assert {"gpt-image-batch", "gpt-image-batch-sheet"} <= keys
