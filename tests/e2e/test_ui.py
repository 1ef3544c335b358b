"""The Prefect UI shows what the deployments made, in a real headless Chromium.

``tests/e2e/ui/screenshot.mjs`` (npm ``playwright-core`` driving Debian's ``/usr/bin/chromium``)
opens (a) the pipeline run's Artifacts tab, clicks an image artifact and the pipeline's markdown
card, and (b) the pipeline deployment's custom run form; it reports what the pages show as JSON
and this test checks it. Screenshots go to a temporary folder; with ``GPT_IMAGE_UPDATE_SCREENSHOTS=1``
they also replace the ones in ``docs/images/`` that the documentation shows.

Without node, chromium or ``tests/e2e/ui/node_modules`` the test is skipped, except in CI
(``CI=true``), where it fails: CI must install them (``apt-get install -y chromium`` and
``npm ci --prefix tests/e2e/ui``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import typing
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from prefect_gpt_image.flows import ImageOptions
from tests.support.ci import missing as missing_part

from .conftest import REPO_ROOT, E2ERuns, E2EStack, deployment_specs, pipeline_parameters

UI_DIR = Path(__file__).resolve().parent / "ui"
SCREENSHOTS = REPO_ROOT / "docs" / "images"
"""Where the documentation's screenshots live; the tests refresh them on request."""
_NODE_TIMEOUT = 150.0
_PIPELINE_CARD = "gpt-image-pipeline"


def _browser_tools() -> tuple[str, str]:
    """``(node, chromium)`` paths, or skip (fail in CI) saying what is missing and how to get it."""
    node = shutil.which("node")
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    missing = []
    if node is None:
        missing.append("node (Node.js 20+ on PATH)")
    if not os.access(chromium, os.X_OK):
        missing.append("chromium (apt-get install -y chromium, or set CHROMIUM)")
    if not (UI_DIR / "node_modules" / "playwright-core" / "package.json").is_file():
        missing.append("playwright-core (npm ci --prefix tests/e2e/ui)")
    if missing:
        missing_part("UI test needs " + ", ".join(missing))
    assert node is not None
    return node, chromium


def _choices(field: str) -> list[str]:
    """The Literal choices of an ``ImageOptions`` field (``X | None``), as the UI should list them."""
    annotation = ImageOptions.model_fields[field].annotation
    (literal,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    return [str(choice) for choice in typing.get_args(literal)]


def _publish(shots: Path) -> None:
    """Copy the screenshots into docs/images, as small palette PNGs (the tall chain
    at half size)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for path in sorted(shots.glob("*.png")):
        with Image.open(path) as image:
            picture = image.convert("RGB")
        if picture.height > 3000:
            picture = picture.resize((picture.width // 2, picture.height // 2), Image.Resampling.LANCZOS)
        picture.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(
            SCREENSHOTS / path.name, optimize=True
        )


def _browse(node: str, job: dict[str, Any]) -> dict[str, Any]:
    """Run ``screenshot.mjs`` with ``job``; what it reports the pages showed."""
    result = subprocess.run(
        [node, str(UI_DIR / "screenshot.mjs"), json.dumps(job)],
        cwd=UI_DIR,
        capture_output=True,
        text=True,
        timeout=_NODE_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, f"screenshot.mjs failed:\n{result.stderr[-4000:]}"
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_ui_shows_the_images_and_the_typed_run_form(request: pytest.FixtureRequest) -> None:
    """(a) The run's image artifacts load in the browser from the bucket's presigned links;
    (b) the custom run form of the pipeline deployment shows typed fields: the prompt, dropdowns
    for the Literal options and nested forms for the edit and blend steps."""
    node, chromium = _browser_tools()
    stack: E2EStack = request.getfixturevalue("e2e_stack")
    runs: E2ERuns = request.getfixturevalue("e2e_runs")
    assert runs.pipeline.state_type == "COMPLETED", runs.pipeline.state_message

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with stack.api(), get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[runs.pipeline.id]))
        )
    image_artifacts = {a.key: a for a in artifacts if a.type == "image" and a.key}
    assert len(image_artifacts) == 3, sorted(image_artifacts)
    blend_prompt = pipeline_parameters(runs.reference_uri)["blend"]["prompt"]
    (blended_key,) = [k for k, a in image_artifacts.items() if blend_prompt in (a.description or "")]

    shots = stack.root / "screenshots"
    job = {
        "chromium": chromium,
        "outDir": str(shots),
        "runUrl": f"{stack.ui_url}/runs/flow-run/{runs.pipeline.id}",
        "imageArtifactKey": blended_key,
        "chainArtifactKey": _PIPELINE_CARD,
        "formUrl": f"{stack.ui_url}/deployments/deployment/{stack.deployment_id('pipeline')}/run",
    }
    started = time.monotonic()
    report = _browse(node, job)
    report["seconds"]["node"] = round(time.monotonic() - started, 1)

    # -- (a) artifacts: the cards, the image artifact's <img>, the pipeline chain ---------------
    seen = report["artifacts"]
    assert {_PIPELINE_CARD, *image_artifacts} <= set(seen["cards"]), seen["cards"]
    (image,) = seen["imagePage"]["images"]
    width, height = (int(v) for v in pipeline_parameters(runs.reference_uri)["options"]["size"].split("x"))
    assert (image["naturalWidth"], image["naturalHeight"]) == (width, height), image
    assert image["presigned"] and image["src"].startswith(stack.s3.endpoint_url + "/" + stack.bucket + "/")
    assert image["src"].split("/")[-1].startswith(blended_key.removeprefix("gpt-image-"))
    chain = seen["chainPage"]
    assert chain["headings"] == ["1. generate", "2. edit", "3. blend"]
    assert len(chain["images"]) == 3
    assert all(i["naturalWidth"] > 0 and i["presigned"] for i in chain["images"]), chain["images"]

    # -- (b) the custom run form -------------------------------------------------------------
    form = report["form"]
    labels = set(form["labels"])
    for label in (
        "prompt",
        "options (Optional)",
        "Size (Optional)",
        "Quality (Optional)",
        "Output Format (Optional)",
        "edit (Optional)",
        "Mask Uri (Optional)",
        "Region (Optional)",
        "blend (Optional)",
        "References",
        "credentials_block (Optional)",
        "storage (Optional)",
    ):
        assert label in labels, f"{label!r} not on the form: {sorted(labels)}"
    defaults = deployment_specs()["pipeline"]["parameters"]
    assert form["prompt"] == defaults["prompt"]
    size, quality = form["dropdowns"]
    assert size["options"] == _choices("size") and size["value"] == defaults["options"]["size"]
    assert quality["options"] == _choices("quality") and quality["value"] == defaults["options"]["quality"]

    # -- the screenshots exist and show something -----------------------------------------------
    names = {"flow-run-artifacts.png", "image-artifact.png", "pipeline-artifact.png", "pipeline-run-form.png"}
    assert {p.name for p in shots.glob("*.png")} == names
    for name in names:
        with Image.open(shots / name) as picture:
            colours = picture.convert("RGB").getcolors(maxcolors=1 << 20)
            assert colours is None or len(colours) > 50, f"{name} looks blank"
    if os.environ.get("GPT_IMAGE_UPDATE_SCREENSHOTS") == "1":
        _publish(shots)
    print(f"UI timings (s): {report['seconds']}")


def _edit_requests(stack: E2EStack) -> list[dict[str, Any]]:
    from tests.support.sandbox import sandbox_requests

    return [r for r in sandbox_requests(stack.sandbox) if r["endpoint"].endswith("edits")]


def test_a_deployment_run_suspends_for_review_and_the_resume_dialog_shows_its_sheet(
    request: pytest.FixtureRequest,
) -> None:
    """A batch_edit deployment run with review=True suspends (its process exits, the worker is
    free); the UI's Resume dialog shows the contact sheet's images (presigned links to the bucket)
    above the typed form; resumed through the API as the form sends it, the run starts again on
    the worker, takes the answer, pays for nothing it made before and drops the row."""
    node, chromium = _browser_tools()
    stack: E2EStack = request.getfixturevalue("e2e_stack")
    from prefect.client.orchestration import get_client
    from prefect.flow_runs import resume_flow_run

    from tests.support.images import png_bytes

    from .conftest import start_run, wait_for_review, wait_for_runs

    client = stack.s3.client()
    for i, colour in enumerate(["teal", "tomato", "gold"]):
        client.put_object(
            Bucket=stack.bucket, Key=f"review-photos/p{i}.png", Body=png_bytes((128, 128), colour)
        )
    edits_before = len(_edit_requests(stack))
    parameters = {"images": f"s3://{stack.bucket}/review-photos/", "review": True, "review_timeout": 900}
    run_id, created = start_run(stack, "backgrounds", parameters)
    sheet = wait_for_review(stack.server, run_id, "suspended-review-1-1-description", stack.log_tail)
    assert len(_edit_requests(stack)) == edits_before + 3
    assert "round 1" in sheet

    shots = stack.root / "review-shots"
    job = {"chromium": chromium, "outDir": str(shots), "reviewUrl": f"{stack.ui_url}/runs/flow-run/{run_id}"}
    seen = _browse(node, job)["review"]
    labels = [label.removesuffix(" (Optional)") for label in seen["labels"]]
    assert {"Approve All", "Redo", "Drop", "Reviewer"} <= set(labels), seen["labels"]
    assert "review of step edit, round 1" in seen["text"]
    images = seen["images"]  # every row's before and after, displayed
    assert len(images) == 6 and all(i["naturalWidth"] > 0 for i in images), images
    assert all(i["presigned"] and i["src"].startswith(stack.s3.endpoint_url) for i in images), images
    with Image.open(shots / "review-form.png") as picture:
        colours = picture.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is None or len(colours) > 50, "review-form.png looks blank"
    if os.environ.get("GPT_IMAGE_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        with Image.open(shots / "review-form.png") as picture:
            picture.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(
                SCREENSHOTS / "review-form.png", optimize=True
            )

    with stack.api():
        resume_flow_run(run_id, run_input={"approve_all": True, "redo": [], "drop": ["2"], "reviewer": ""})
    (finished,) = wait_for_runs(stack, [(run_id, created)])
    assert finished.state_type == "COMPLETED", f"{finished.state_message}\n{stack.log_tail()}"
    assert "1 row(s) dropped at review" in (finished.state_message or "")
    assert len(_edit_requests(stack)) == edits_before + 3  # the run started again and paid nothing more
    with stack.api(), get_client(sync_client=True) as prefect:
        names = [s.name for s in prefect.read_flow_run_states(run_id)]
    assert "Suspended" in names and "Resuming" in names, names
    events = _review_events(stack, run_id)
    assert events and events[0]["payload"]["mode"] == "suspend" and events[0]["payload"]["rows"] == 3, events
    # the attempt after the resume passed the answered review without a new event
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with stack.api(), get_client(sync_client=True) as prefect:
        logs = prefect.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=200, offset=0
        )
    messages = [log.message for log in logs]
    assert sum("wait for a decision" in m for m in messages) == 1, messages
    assert sum("answered before this run started again" in m for m in messages) == 1, messages


def _review_events(stack: E2EStack, run_id: Any) -> list[dict[str, Any]]:
    """The review events of run ``run_id`` the server holds, once it holds any."""
    import httpx

    from prefect_gpt_image.flows import REVIEW_EVENT

    query = {
        "filter": {"event": {"name": [REVIEW_EVENT]}, "resource": {"id": [f"prefect.flow-run.{run_id}"]}},
        "limit": 10,
    }
    deadline = time.monotonic() + 60
    while True:
        response = httpx.post(f"{stack.server.api_url}/events/filter", json=query, timeout=30)
        response.raise_for_status()
        events: list[dict[str, Any]] = response.json()["events"]
        if events or time.monotonic() > deadline:
            return events
        time.sleep(0.5)
