"""The API key never leaks. The flows run with a recognizable key (the pipeline with every step,
a batch with refused and failed rows, error paths: a gateway that echoes the key in its error
message, a store that fails after the paid call so the images are spooled), then everything they
left behind is searched for it: every log line the Prefect server holds, its events, artifacts,
flow and task runs, the exceptions and their tracebacks, every object and its metadata in the
bucket, and every file under PREFECT_HOME, the spool and the local stores.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import traceback
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect import flow
from prefect.settings import PREFECT_API_URL

from prefect_gpt_image.blocks import GptImageCredentials
from prefect_gpt_image.flows import (
    BlendStep,
    EditStep,
    ImageOptions,
    MaskRegion,
    batch_generate,
    image_pipeline,
)
from prefect_gpt_image.local_s3 import LocalS3Server
from prefect_gpt_image.tasks import ImagesSpooledError, generate_image

from .conftest import (
    CANARY_KEY,
    api_artifacts,
    api_logs,
    bucket_objects,
    fast_settings,
    save_block,
    walk_files,
)
from .hostile import HostileServer

# The key, and pieces of it that would still identify it (e.g. after a partial mask).
NEEDLES = [CANARY_KEY, CANARY_KEY.removeprefix("sk-"), CANARY_KEY[-16:]]


def _leaks(text: str | bytes) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [needle for needle in NEEDLES if needle.encode() in data]


def _events_since(since: dt.datetime) -> list[dict[str, Any]]:
    """Every event the server recorded since ``since`` (following the pages)."""
    api = str(PREFECT_API_URL.value())
    body = {
        "filter": {"occurred": {"since": since.isoformat(), "until": dt.datetime.now(dt.UTC).isoformat()}},
        "limit": 50,
    }
    response = httpx.post(f"{api}/events/filter", json=body, timeout=30)
    response.raise_for_status()
    page = response.json()
    events = list(page["events"])
    while page.get("next_page"):
        response = httpx.get(page["next_page"], timeout=30)
        response.raise_for_status()
        page = response.json()
        events.extend(page["events"])
    return events


def _post(path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = httpx.post(f"{PREFECT_API_URL.value()}/{path}", json={**body, "limit": 200}, timeout=30)
    response.raise_for_status()
    return list(response.json())


def test_the_key_appears_nowhere(
    rel_env: Path,
    make_sandbox: Any,
    tmp_path: Path,
    local_s3: LocalS3Server,
    s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    sandbox = make_sandbox(latency=0.02, keys=(CANARY_KEY,))  # only the canary key is accepted
    for name, value in local_s3.env().items():
        monkeypatch.setenv(name, value)
    storage = f"s3://{s3_bucket}/secret-test"
    settings_block = save_block(fast_settings(), "rel-secrets")
    credentials_block = save_block(
        GptImageCredentials(api_key=CANARY_KEY, base_url=sandbox.base_url), "rel-secrets"
    )
    reference = tmp_path / "style.png"
    from tests.support.images import png_bytes

    reference.write_bytes(png_bytes((256, 256), "orange"))
    local_s3.client().put_object(Bucket=s3_bucket, Key="refs/style.png", Body=reference.read_bytes())
    flow_runs: list[Any] = []
    errors: list[BaseException] = []

    # 1. the pipeline, every step, key from a saved credentials block
    state = image_pipeline(
        "a lighthouse at dawn (secrets)",
        options=ImageOptions(size="1024x1024", quality="low"),
        edit=EditStep(prompt="add a rainbow", region=MaskRegion(left=0, top=0, right=1, bottom=0.3)),
        blend=BlendStep(prompt="in this style", references=[f"s3://{s3_bucket}/refs/style.png"]),
        storage=storage,
        settings_block=settings_block,
        credentials_block=credentials_block,
        return_state=True,
    )
    assert state.is_completed(), state.message
    flow_runs.append(state.state_details.flow_run_id)

    # 2. a batch with stored, refused (moderation, after the call) and invalid rows; key from the env
    monkeypatch.setenv("GPT_IMAGE_API_KEY", CANARY_KEY)
    monkeypatch.setenv("GPT_IMAGE_BASE_URL", sandbox.base_url)
    sandbox.script_faults(["none", "drop"])
    state = batch_generate(
        prompts=["a red kite", "a dropped kite", "a kite [sandbox:block]", "a blue kite", ""],
        options=ImageOptions(size="1024x1024"),
        storage=storage,
        settings_block=settings_block,
        return_state=True,
    )
    assert state.is_failed()
    rows = state.result(raise_on_failure=False).rows
    assert sorted(r.status for r in rows) == ["failed", "failed", "invalid", "stored", "stored"]
    flow_runs.append(state.state_details.flow_run_id)

    # 3. an error path: a gateway that echoes the key in its 401 message
    with HostileServer() as hostile:
        hostile.scenario = "echo-key-401"
        echo_block = save_block(
            GptImageCredentials(api_key=CANARY_KEY, base_url=hostile.base_url), "rel-echo"
        )
        state = image_pipeline(
            "a cat (echo)",
            storage=storage,
            settings_block=settings_block,
            credentials_block=echo_block,
            return_state=True,
        )
        assert hostile.api_requests == 1
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, BaseException) and "invalid api key ***" in str(error)
    errors.append(error)
    flow_runs.append(state.state_details.flow_run_id)

    # 4. an error path: the store fails after the paid call, so the images go to the spool
    blocked = tmp_path / "blocked-store"
    blocked.mkdir()
    (blocked / "images").write_text("a file where the images folder should be")

    @flow(name="secrets-spool")
    async def spool_it() -> None:
        credentials = GptImageCredentials(api_key=CANARY_KEY, base_url=sandbox.base_url)
        await generate_image.with_options(retries=0)(
            "a spooled kite", credentials=credentials, settings=fast_settings(), storage=str(blocked)
        )

    state = asyncio.run(spool_it(return_state=True))
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ImagesSpooledError)
    errors.append(error)
    flow_runs.append(state.state_details.flow_run_id)
    spool = Path(os.environ["GPT_IMAGE_SPOOL"])
    assert any(walk_files(spool)), "nothing was spooled"

    # -- now look everywhere ----------------------------------------------------------------------
    found: list[str] = []

    def check(where: str, content: str | bytes) -> None:
        if leaked := _leaks(content):
            found.append(f"{where}: {leaked}")

    assert _leaks(f"a message with {CANARY_KEY} in it")  # the search works
    logs = api_logs()  # every log line on the server, not only these runs'
    assert any(log["flow_run_id"] == str(flow_runs[0]) for log in logs)
    assert any("invalid api key ***" in log["message"] for log in logs)  # the echo, redacted
    for log in logs:
        check(f"log {log['name']}", log["message"])
    for event in _events_since(since):
        check(f"event {event['event']}", json.dumps(event))
    for artifact in api_artifacts():
        check(f"artifact {artifact['key']}", json.dumps(artifact))
    runs = _post("flow_runs/filter", {"flow_runs": {"id": {"any_": [str(i) for i in flow_runs]}}})
    assert len(runs) == len(flow_runs)
    check("flow runs", json.dumps(runs))
    check(
        "task runs",
        json.dumps(_post("task_runs/filter", {"flow_runs": {"id": {"any_": [str(i) for i in flow_runs]}}})),
    )
    for exc in errors:
        check(f"exception {type(exc).__name__}", "".join(traceback.format_exception(exc)) + repr(exc))
    client = local_s3.client()
    keys = bucket_objects(local_s3, s3_bucket)
    assert any(k.endswith(".png") for k in keys) and any("/cache/" in k for k in keys)
    for key in keys:
        obj = client.get_object(Bucket=s3_bucket, Key=key)
        check(f"s3 object {key}", obj["Body"].read())
        head = client.head_object(Bucket=s3_bucket, Key=key)
        check(
            f"s3 metadata {key}", json.dumps({"meta": head.get("Metadata"), "type": head.get("ContentType")})
        )
    files = list(walk_files(rel_env, spool, blocked, tmp_path))
    assert files
    for path in files:
        check(f"file {path}", path.read_bytes())
    check("captured log records", "\n".join(r.getMessage() for r in caplog.records))
    out, err = capfd.readouterr()
    check("stdout/stderr", out + err)
    assert not found, "\n".join(found)
