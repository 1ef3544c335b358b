"""The image tasks on a real Prefect server, the sandbox and SeaweedFS: storage, manifests,
lineage, cache hits (also from a fresh process), one payment for concurrent duplicates,
artifacts with loadable links, and a key that never leaks."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect import flow, unmapped
from prefect.logging.handlers import APILogHandler
from pydantic import SecretStr

from prefect_gpt_image.blocks import GptImageCredentials, GptImageSettings, GptImageStorage
from prefect_gpt_image.local_s3 import LocalS3Server
from prefect_gpt_image.storage import LocalImageStore, S3ImageStore
from prefect_gpt_image.tasks import (
    BudgetExceededError,
    ImageRef,
    blend_images,
    bounded_task_runner,
    edit_image,
    generate_image,
    read_manifest,
)
from tests.support.images import decode, mask_bytes, png_bytes
from tests.support.judge import ledger_cost
from tests.support.prefect import PrefectServer, flow_run, flow_run_artifacts, flow_run_logs
from tests.support.sandbox import billed_images, sandbox_requests

from .conftest import CANARY_KEY, SIZE

pytestmark = pytest.mark.usefixtures("prefect_env")


@flow
async def generate_flow(
    prompt: str,
    credentials: GptImageCredentials,
    settings: GptImageSettings,
    storage: GptImageStorage,
    n: int = 1,
    variant: int = 0,
    refresh_cache: bool = False,
) -> list[ImageRef]:
    return await generate_image(
        prompt,
        n=n,
        variant=variant,
        refresh_cache=refresh_cache,
        credentials=credentials,
        settings=settings,
        storage=storage,
    )


@flow
async def lineage_flow(
    credentials: GptImageCredentials,
    settings: GptImageSettings,
    storage: GptImageStorage,
    extra: list[Any],
) -> dict[str, list[ImageRef]]:
    options: dict[str, Any] = {"credentials": credentials, "settings": settings, "storage": storage}
    base = await generate_image("a red fox in the snow", **options)
    mask = mask_bytes((base[0].width, base[0].height), (0, 0, 512, 320))
    edited = await edit_image("give the fox a scarf", base[0], mask, **options)
    blended = await blend_images("the fox and the scarf as a poster", [base[0], edited[0], *extra], **options)
    return {"base": base, "edited": edited, "blended": blended}


def _store_of(storage: GptImageStorage) -> Any:
    return storage.get_store()


def _check_stored(
    sandbox: Any, storage: GptImageStorage, refs: list[ImageRef], *, parents: tuple[str, ...] = ()
) -> None:
    """Each ref's bytes, manifest and lineage are stored; the cost each manifest and ref records
    adds up, per request, to what the sandbox's ledger charged for it (at the ledger's price)."""
    store = _store_of(storage)
    costs: dict[str, list[float]] = {}
    for ref in refs:
        key = store.image_key(ref.sha256, ref.format)
        data = store.read_bytes(key)
        assert hashlib.sha256(data).hexdigest() == ref.sha256 and len(data) == ref.size_bytes
        assert decode(data).size == (ref.width, ref.height)
        assert ref.uri == store.uri_for(key)
        assert ref.parents == parents
        manifest = read_manifest(store, ref.sha256, ref.format)
        assert manifest is not None
        for field in (
            "model",
            "prompt",
            "parameters",
            "request_id",
            "created",
            "flow_run_id",
            "task_run_id",
            "cost",
        ):
            assert manifest[field] not in (None, ""), field
        assert manifest["prompt"] == ref.prompt and manifest["request_id"] == ref.request_id
        assert manifest["parents"] == list(parents)
        assert manifest["cost"] == ref.cost
        costs.setdefault(ref.request_id, []).append(ref.cost)
    for request_id, recorded in costs.items():
        assert math.fsum(recorded) == pytest.approx(ledger_cost(sandbox, [request_id])), request_id


def test_generate_stores_images_and_manifests_locally_and_reruns_free(
    sandbox: Any, credentials: GptImageCredentials, settings: GptImageSettings, local_storage: GptImageStorage
) -> None:
    refs = asyncio.run(generate_flow("a lighthouse at dawn", credentials, settings, local_storage, n=2))
    assert len(refs) == 2 and billed_images(sandbox) == 2
    assert all(ref.link and ref.link.startswith("file://") for ref in refs)
    assert (refs[0].width, refs[0].height) == (1024, 640)
    _check_stored(sandbox, local_storage, refs)
    assert isinstance(_store_of(local_storage), LocalImageStore)

    again = asyncio.run(generate_flow("a lighthouse at dawn", credentials, settings, local_storage, n=2))
    assert again == refs
    assert len(sandbox_requests(sandbox)) == 1  # the rerun made no API call

    # The sandbox draws the same pixels for the same request, so new images differ by request id.
    newer = asyncio.run(
        generate_flow("a lighthouse at dawn", credentials, settings, local_storage, n=2, variant=1)
    )
    assert len(sandbox_requests(sandbox)) == 2 and newer[0].request_id != refs[0].request_id
    refreshed = asyncio.run(
        generate_flow("a lighthouse at dawn", credentials, settings, local_storage, n=2, refresh_cache=True)
    )
    assert len(sandbox_requests(sandbox)) == 3 and refreshed != refs
    assert (
        asyncio.run(generate_flow("a lighthouse at dawn", credentials, settings, local_storage, n=2))
        == refreshed
    )
    assert len(sandbox_requests(sandbox)) == 3


def test_s3_storage_lineage_and_inputs_of_every_kind(
    sandbox: Any,
    credentials: GptImageCredentials,
    settings: GptImageSettings,
    s3_storage: GptImageStorage,
    tmp_path: Path,
) -> None:
    store = _store_of(s3_storage)
    assert isinstance(store, S3ImageStore)
    style = png_bytes((256, 256), "gold")
    style_path = tmp_path / "style.png"
    style_path.write_bytes(style)
    other = png_bytes((128, 128), "teal")
    s3_ref = store.put_image(hashlib.sha256(other).hexdigest(), "png", other)

    url = store.link_for(s3_ref.key)  # an http(s) URL input (a presigned link here)
    inputs: list[Any] = [style_path, s3_ref.uri, b"" + style, url]
    out = asyncio.run(lineage_flow(credentials, settings, s3_storage, inputs))
    base, edited, blended = out["base"], out["edited"], out["blended"]
    _check_stored(sandbox, s3_storage, base)
    mask_sha = hashlib.sha256(mask_bytes((1024, 640), (0, 0, 512, 320))).hexdigest()
    _check_stored(sandbox, s3_storage, edited, parents=(base[0].sha256, mask_sha))
    style_sha, other_sha = hashlib.sha256(style).hexdigest(), hashlib.sha256(other).hexdigest()
    _check_stored(
        sandbox,
        s3_storage,
        blended,
        parents=(base[0].sha256, edited[0].sha256, style_sha, other_sha, style_sha, other_sha),
    )
    assert base[0].uri.startswith(f"s3://{store.bucket}/gpt/images/")
    edits = [r for r in sandbox_requests(sandbox) if r["endpoint"].endswith("edits")]
    assert len(edits) == 2 and len(edits[1]["files"]) == 6


def test_rerun_in_a_fresh_process_pays_nothing(
    sandbox: Any,
    credentials: GptImageCredentials,
    settings: GptImageSettings,
    local_s3: LocalS3Server,
    s3_bucket: str,
    prefect_server: PrefectServer,
    tmp_path: Path,
) -> None:
    """Cache records live in the bucket: another process (another machine) finds them."""
    storage = GptImageStorage(location=f"s3://{s3_bucket}/shared")
    env = {**os.environ, **local_s3.env(), **prefect_server.client_env(tmp_path / "child-home")}
    env.update(
        GPT_IMAGE_API_KEY=CANARY_KEY,
        GPT_IMAGE_BASE_URL=sandbox.base_url,
        GPT_IMAGE_SPOOL=str(tmp_path / "sp"),
    )
    for name, value in local_s3.env().items():
        os.environ[name] = value  # this process uses boto3's standard chain too
    try:
        first = asyncio.run(generate_flow("a shared cache", credentials, settings, storage))
    finally:
        for name in local_s3.env():
            os.environ.pop(name, None)
    script = textwrap.dedent(
        f"""
        import asyncio, json
        from prefect import flow
        from prefect_gpt_image.blocks import GptImageSettings, GptImageStorage
        from prefect_gpt_image.tasks import generate_image

        @flow
        async def child():
            settings = GptImageSettings.model_validate_json({settings.model_dump_json()!r})
            refs = await generate_image("a shared cache", settings=settings,
                                        storage=GptImageStorage(location={storage.location!r}))
            return [ref.model_dump(mode="json") for ref in refs]

        print("REFS=" + json.dumps(asyncio.run(child())))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("REFS="))
    child_refs = [ImageRef.model_validate(item) for item in json.loads(line.removeprefix("REFS="))]
    assert child_refs == first
    assert len(sandbox_requests(sandbox)) == 1


def test_concurrent_identical_calls_pay_once(
    make_sandbox: Any, settings: GptImageSettings, local_storage: GptImageStorage
) -> None:
    sandbox = make_sandbox(latency=0.4)
    credentials = GptImageCredentials(api_key=CANARY_KEY, base_url=sandbox.base_url)

    @flow
    async def four_at_once() -> list[list[ImageRef]]:
        return await asyncio.gather(
            *(
                generate_image(
                    "the same fox", credentials=credentials, settings=settings, storage=local_storage
                )
                for _ in range(4)
            )
        )

    results = asyncio.run(four_at_once())
    assert billed_images(sandbox) == 1
    assert all(r == results[0] for r in results)

    @flow(task_runner=bounded_task_runner(4))
    def four_threads() -> list[list[ImageRef]]:
        futures = generate_image.map(
            ["the same cat"] * 4,
            credentials=unmapped(credentials),
            settings=unmapped(settings),
            storage=unmapped(local_storage),
        )
        return [f.result() for f in futures]

    threaded = four_threads()
    assert billed_images(sandbox) == 2
    assert all(r == threaded[0] for r in threaded)


def test_budget_stops_a_run_before_the_paid_call(
    sandbox: Any, credentials: GptImageCredentials, limit_name: str, local_storage: GptImageStorage
) -> None:
    capped = GptImageSettings(
        size=SIZE, quality="low", concurrency_limit_name=limit_name, max_images_per_run=0
    )
    with pytest.raises(BudgetExceededError, match="max_images_per_run=0"):
        asyncio.run(generate_flow("never paid", credentials, capped, local_storage))
    assert sandbox_requests(sandbox) == []

    by_cost = capped.model_copy(update={"max_images_per_run": None, "max_cost_per_run": 0.05})

    @flow
    async def three(settings: GptImageSettings) -> list[ImageRef]:
        first = await generate_image("one", credentials=credentials, settings=settings, storage=local_storage)
        cached = await generate_image(
            "one", credentials=credentials, settings=settings, storage=local_storage
        )
        assert cached == first  # a cache hit costs nothing
        await generate_image("two", credentials=credentials, settings=settings, storage=local_storage)
        return first

    with pytest.raises(BudgetExceededError, match=r"max_cost_per_run=\$0.0500"):
        asyncio.run(three(by_cost))
    assert billed_images(sandbox) == 1


def test_artifacts_and_retry_logs(
    make_sandbox: Any, settings: GptImageSettings, s3_storage: GptImageStorage
) -> None:
    # A sandbox charging another price than the contract's, and settings saying so: the card's
    # cost must be the price the settings name, as the ledger charged it, not a built-in one.
    sandbox = make_sandbox(latency=0.05, price_per_image=0.0512)
    credentials = GptImageCredentials(api_key=SecretStr(CANARY_KEY), base_url=sandbox.base_url)
    sandbox.script_faults(["429"])
    fast = settings.model_copy(update={"initial_backoff_seconds": 0.05, "price_per_image": 0.0512})
    state = asyncio.run(generate_flow("an artifact fox", credentials, fast, s3_storage, return_state=True))
    refs = state.result()
    run_id = state.state_details.flow_run_id
    artifacts = flow_run_artifacts(run_id)
    images = [a for a in artifacts if a["type"] == "image"]
    cards = [a for a in artifacts if a["type"] == "markdown"]
    assert len(images) == 1 and len(cards) == 1
    assert all(re.fullmatch(r"[a-z0-9-]+", a["key"]) for a in artifacts)
    url = str(images[0]["data"])
    assert "X-Amz-Signature=" in url
    got = httpx.get(url, timeout=10)
    assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == refs[0].sha256
    card = str(cards[0]["data"])
    assert "an artifact fox" in card and refs[0].request_id in card
    assert ledger_cost(sandbox) == pytest.approx(0.0512)  # one image billed (the 429 was not)
    assert f"| cost of the images | ${ledger_cost(sandbox):.4f} |" in card
    logs = "\n".join(flow_run_logs(run_id))
    assert "attempt 1 failed (request id" in logs and "retrying in" in logs


def test_the_api_key_is_written_nowhere(
    make_sandbox: Any,
    settings: GptImageSettings,
    s3_storage: GptImageStorage,
    local_storage: GptImageStorage,
    local_s3: LocalS3Server,
    prefect_env: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sandbox = make_sandbox(latency=0.05)
    credentials = GptImageCredentials(api_key=CANARY_KEY, base_url=sandbox.base_url)
    sandbox.script_faults(["500"])
    fast = settings.model_copy(update={"initial_backoff_seconds": 0.05})
    states = [
        asyncio.run(lineage_flow(credentials, fast, s3_storage, [], return_state=True)),
        asyncio.run(
            generate_flow("a local secretless fox", credentials, fast, local_storage, return_state=True)
        ),
    ]
    wrong = make_sandbox(latency=0.0, keys=("sk-the-right-one",))
    failed = asyncio.run(
        generate_flow(
            "unauthorized",
            GptImageCredentials(api_key=CANARY_KEY, base_url=wrong.base_url),
            fast,
            local_storage,
            return_state=True,
        )
    )
    assert failed.is_failed()
    APILogHandler().flush()

    texts: list[str] = []
    for state in [*states, failed]:
        run_id = state.state_details.flow_run_id
        logs = flow_run_logs(run_id)
        assert logs, f"run {run_id} sent no logs: the scan below would search nothing of it"
        texts += logs
        texts += [json.dumps(a) for a in flow_run_artifacts(run_id)]
        texts.append(flow_run(run_id).model_dump_json())
    texts.append(str(failed.data) + repr(failed))
    texts += [record.getMessage() for record in caplog.records]
    for root in (tmp_path, prefect_env):
        for path in Path(root).rglob("*"):
            if path.is_file():
                texts.append(path.read_bytes().decode("latin-1"))
    store = _store_of(s3_storage)
    client = store.client
    listed = client.list_objects_v2(Bucket=store.bucket)["Contents"]
    assert any(o["Key"].endswith(".json") and "/cache/" in o["Key"] for o in listed)
    for obj in listed:
        head = client.head_object(Bucket=store.bucket, Key=obj["Key"])
        texts.append(json.dumps(head.get("Metadata", {})))
        texts.append(client.get_object(Bucket=store.bucket, Key=obj["Key"])["Body"].read().decode("latin-1"))
    # the scan covers the failures' texts: the 401, the 500 and its retry, which name the request
    assert any("401" in t for t in texts) and any("attempt 1 failed (request id" in t for t in texts)
    leaks = [t[:200] for t in texts if CANARY_KEY in t or "CANARY-7f3a" in t]
    assert leaks == []


def test_streaming_sends_partials_and_shares_the_cache(
    sandbox: Any, credentials: GptImageCredentials, settings: GptImageSettings, local_storage: GptImageStorage
) -> None:
    partials: list[Any] = []
    options: dict[str, Any] = {"credentials": credentials, "settings": settings, "storage": local_storage}

    @flow
    async def streamed() -> tuple[list[ImageRef], list[ImageRef]]:
        first = await generate_image(
            "a streamed fox", stream=True, partial_images=2, on_partial=partials.append, **options
        )
        plain = await generate_image("a streamed fox", **options)  # same image: stream is transport only
        return first, plain

    first, plain = asyncio.run(streamed())
    (ref,) = first
    (request,) = sandbox_requests(sandbox)  # the plain call was a cache hit of the streamed one
    assert [(p.index, p.width, p.height, p.request_id) for p in partials] == [
        (0, ref.width, ref.height, request["request_id"]),
        (1, ref.width, ref.height, request["request_id"]),
    ]  # both previews asked for, of the image's size, from its request
    assert plain == first
