"""A failed run says so plainly: a batch flow or ``image_pipeline`` whose rows failed raises
``BatchFailedError`` (a few lines, the result attached) from sync and async code, keeps its
``Failed`` state and result for ``return_state=True``, survives Prefect's result persistence; a
missing or misplaced key fails every flow before any row is read, ``plan_only`` included."""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle  # type: ignore[import-untyped]
import pytest
from prefect import flow

from prefect_gpt_image.flows import (
    BatchFailedError,
    BatchResult,
    ChainResult,
    ConfigurationError,
    RowResult,
    StepResult,
    batch_edit,
    batch_generate,
    batch_pipeline,
    image_pipeline,
)
from prefect_gpt_image.tasks import BatchFailedError as TasksBatchFailedError
from tests.support.images import png_bytes
from tests.support.prefect import flow_run_artifacts, flow_run_logs
from tests.support.sandbox import billed_images, sandbox_requests

KEY = "sk-failures-SECRET-5d1e"
OPTIONS = {"size": "1024x1024", "quality": "low"}
BLOCKED = "a kite [sandbox:block]"  # refused by the sandbox's moderation (sent, not billed)
REGION = {"left": 0, "top": 0, "right": 0.5, "bottom": 0.5}


@pytest.fixture
def local(
    prefect_env: Path, make_sandbox: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """A sandbox named by the environment (with the key), and a store folder."""
    sandbox = make_sandbox(latency=0.02)
    monkeypatch.setenv("GPT_IMAGE_API_KEY", KEY)
    monkeypatch.setenv("GPT_IMAGE_BASE_URL", sandbox.base_url)
    return sandbox, str(tmp_path / "store")


def _photos(folder: Path) -> str:
    folder.mkdir()
    (folder / "a.png").write_bytes(png_bytes((64, 64), "teal"))
    (folder / "b.png").write_bytes(png_bytes((64, 64), "orange"))
    return str(folder)


def _manifest(path: Path, *prompts: str) -> str:
    path.write_text("id,prompt\n" + "".join(f"r{i},{p}\n" for i, p in enumerate(prompts, start=1)))
    return str(path)


def test_a_failed_batch_raises_from_sync_and_async_code_and_keeps_its_state(local: Any) -> None:
    sandbox, storage = local
    prompts = ["a red kite", BLOCKED, ""]
    with pytest.raises(BatchFailedError) as caught:
        batch_generate(prompts=prompts, options=OPTIONS, storage=storage)
    exc = caught.value
    assert isinstance(exc, TasksBatchFailedError) and isinstance(exc.result, BatchResult)
    assert [r.status for r in exc.result.rows] == ["stored", "failed", "invalid"]
    lines = str(exc).splitlines()
    headline = "2 of 3 rows failed (ModerationError: 1, invalid: 1); 1 of 3 rows stored"
    assert lines[0].startswith(headline)
    assert lines[1].startswith("  row 2: ModerationError: HTTP 400") and lines[2] == (
        "  row 3: invalid: prompt must not be empty"
    )
    assert lines[3].startswith("every row: the table artifact 'gpt-image-batch' of flow run '")

    # from async code: awaited, and inside an async flow that catches it
    with pytest.raises(BatchFailedError, match="2 of 3 rows failed"):
        asyncio.run(batch_generate(prompts=prompts, options=OPTIONS, storage=storage))

    @flow
    async def nightly() -> int:
        try:
            await batch_generate(prompts=prompts, options=OPTIONS, storage=storage)
        except BatchFailedError as failed:
            return int(failed.result.stored)
        return -1

    assert asyncio.run(nightly()) == 1

    # return_state=True: the Failed state with the result as its data, as before
    state = batch_generate(prompts=prompts, options=OPTIONS, storage=storage, return_state=True)
    message = (state.message or "").splitlines()
    assert state.is_failed() and message[0].startswith(headline) and len(message) == 4
    result = state.result(raise_on_failure=False)
    assert isinstance(result, BatchResult) and [r.status for r in result.rows] == [
        "stored",
        "failed",
        "invalid",
    ]
    assert billed_images(sandbox) == 1  # the stored row was paid once; the reruns found it


def test_every_batch_flow_raises_it_with_its_rows(local: Any, tmp_path: Path) -> None:
    _, storage = local
    (tmp_path / "photos").mkdir()
    photos = _photos(tmp_path / "photos" / "in")
    Path(photos, "broken.png").write_bytes(b"not an image")
    with pytest.raises(BatchFailedError) as edit:
        batch_edit(photos, "make it night", region=REGION, storage=storage)
    assert isinstance(edit.value.result, ChainResult) and edit.value.result.stored == 2
    assert "1 of 3 rows failed (InputImageError: 1)" in str(edit.value)
    assert "table artifact 'gpt-image-batch-edit'" in str(edit.value)

    manifest = _manifest(tmp_path / "rows.csv", "a red kite", BLOCKED)
    steps = [{"kind": "generate", "prompt": "{prompt}", "options": OPTIONS}]
    with pytest.raises(BatchFailedError) as chain:
        batch_pipeline(manifest=manifest, steps=steps, storage=storage)
    assert chain.value.result.stored == 1
    assert "  row 2 (id r2), step generate: ModerationError: HTTP 400" in str(chain.value)


def test_the_error_pickles_with_its_result_and_survives_persisted_results(local: Any) -> None:
    sandbox, storage = local
    rows = [
        RowResult(row=1, prompt="a kite", status="failed", error="HTTP 400", error_type="BadRequestError")
    ]
    error = BatchFailedError("1 of 1 rows failed", result=BatchResult(rows=rows))
    for dumps, loads in ((pickle.dumps, pickle.loads), (cloudpickle.dumps, cloudpickle.loads)):
        copy = loads(dumps(error))
        assert type(copy) is BatchFailedError and str(copy) == str(error) and copy.result == error.result

    # a user's flow that lets the pipeline's error end it, with its result persisted: Prefect
    # writes the exception to the result store and reads it back from there
    @flow(persist_result=True)
    def poster() -> None:
        image_pipeline(
            "a lighthouse", options=OPTIONS, edit={"prompt": BLOCKED, "region": REGION}, storage=storage
        )

    state = poster(return_state=True)
    assert state.is_failed()
    from prefect.client.orchestration import get_client
    from prefect.results import ResultRecordMetadata

    with get_client(sync_client=True) as client:
        stored_state = client.read_flow_run(state.state_details.flow_run_id).state
    assert stored_state is not None and isinstance(stored_state.data, ResultRecordMetadata)
    read_back = stored_state.result(raise_on_failure=False)
    assert isinstance(read_back, BatchFailedError) and isinstance(read_back.result, ChainResult)
    assert [(s.step, s.status) for s in read_back.result.steps] == [
        ("generate", "stored"),
        ("edit", "failed"),
    ]
    assert str(read_back).startswith("the pipeline failed at step 'edit' (ModerationError: 1)")
    assert billed_images(sandbox) == 1


def test_a_large_result_has_a_one_line_repr() -> None:
    from prefect.states import Failed

    rows = [RowResult(row=i, prompt="a kite " * 50, status="failed", error="x" * 300) for i in range(10_000)]
    result = BatchResult(rows=rows)
    assert repr(result) == "BatchResult(rows=<10000 rows: 0 stored, 10000 failed>)"
    steps = [StepResult(row=1, step="generate", kind="generate", status="stored")]
    steps += [StepResult(row=2, step=name, kind="edit", status="failed") for name in ("a", "b")]
    assert repr(ChainResult(steps=steps)) == "ChainResult(steps=<2 rows (3 steps): 1 stored, 1 failed>)"
    # where Prefect itself resolves such a state (a deployment's engine), its error stays short
    with pytest.raises(TypeError, match="cannot be resolved") as caught:
        Failed(data=result).result()
    assert len(str(caught.value)) < 300


@pytest.mark.parametrize(
    "env,words",
    [
        ({}, "no API key"),
        # the commonest setup: an OpenAI key, with the plugin pointed at another host
        ({"OPENAI_API_KEY": "sk-openai-SECRET-77"}, "OPENAI_API_KEY is only sent to OPENAI_BASE_URL"),
    ],
    ids=["no-key", "openai-key-elsewhere"],
)
def test_a_configuration_error_fails_every_flow_before_any_row(
    local: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], words: str
) -> None:
    sandbox, storage = local
    monkeypatch.delenv("GPT_IMAGE_API_KEY")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    photos = _photos(tmp_path / "photos")
    manifest = _manifest(tmp_path / "rows.csv", "a red kite", "a blue kite")
    steps = [{"kind": "generate", "prompt": "{prompt}"}]
    calls: list[tuple[str, Callable[..., Any]]] = [
        ("batch_generate", lambda **kw: batch_generate(prompts=["a", "b"], storage=storage, **kw)),
        # a manifest that does not exist: the key is checked before any row is read
        ("batch_generate manifest", lambda **kw: batch_generate(manifest=str(tmp_path / "none.csv"), **kw)),
        (
            "batch_edit",
            lambda **kw: batch_edit(photos, "make it night", region=REGION, storage=storage, **kw),
        ),
        (
            "batch_pipeline",
            lambda **kw: batch_pipeline(manifest=manifest, steps=steps, storage=storage, **kw),
        ),
    ]
    for name, call in calls:
        with pytest.raises(ConfigurationError, match=words):
            call()
        # plan_only reports the configuration error, not a count of calls
        state = call(plan_only=True, return_state=True)
        error = state.result(raise_on_failure=False)
        assert state.is_failed() and isinstance(error, ConfigurationError) and words in str(error), name
        logs = "\n".join(flow_run_logs(state.state_details.flow_run_id))
        assert "call(s) to make" not in logs and "rows (" not in logs, (name, logs)
        keys = [a["key"] for a in flow_run_artifacts(state.state_details.flow_run_id) if a["key"]]
        assert keys == [], (name, keys)  # no plan table, no batch table (Prefect's result record only)
    with pytest.raises(ConfigurationError, match=words):
        image_pipeline("a lighthouse", storage=storage)
    assert sandbox_requests(sandbox) == []
