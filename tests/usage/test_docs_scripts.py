"""The documentation site's examples (docs/*.md), run as written in subprocesses against the
sandbox, judged by its ledger, the store and the Prefect server (that they are the pages' text is
checked in ``test_readme.py``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.support.judge import assert_stored_equals_delivered

from .conftest import SCRIPT_TIMEOUT, SCRIPTS, RunningScript, Usage, clean_env


def _billed(sandbox: Any) -> Counter[str]:
    """Images billed per endpoint (generations, edits)."""
    billed: Counter[str] = Counter()
    for entry in sandbox.ledger.entries:
        billed[entry["endpoint"].rsplit("/", 1)[-1]] += entry["n"]
    return billed


KITES_CSV = """prompt,size,quality,n
a low square kite,1024x1024,low,1
a medium wide kite,1536x1024,medium,2
a high tall kite,1024x1536,high,1
an auto square kite,1024x1024,auto,3
a big low kite,2048x2048,low,1
"""
"""docs/cost.md's ``kites.csv``."""


def test_contact_sheet_from_your_own_code(usage: Usage) -> None:
    out = usage.run("docs_contact_sheets_kites.py").result()
    assert usage.sandbox.ledger.billed_images == 2
    stored = assert_stored_equals_delivered(usage.sandbox, usage.storage)
    assert sorted(out["images"]) == sorted(stored)
    pages = out["pages"]
    assert len(pages) == 2  # page_rows=1: a page per row
    for page, prompt in zip(pages, ["a red kite", "a blue kite"], strict=True):
        assert "kites" in page and prompt in page
        assert "data:image/" in page  # a local store's thumbnails are embedded
    assert list((usage.storage / "thumbs").rglob("*")), "the sheet made no thumbnails"


def test_bill_report_sums_what_was_paid(usage: Usage) -> None:
    run = usage.run("docs_bills_report.py")
    bill = run.result()
    ledger = usage.sandbox.ledger
    assert bill["images"] == ledger.billed_images == 2
    assert bill["paid"] == pytest.approx(sum(e["cost"] for e in ledger.entries))
    assert len(bill["flow_runs"]) == 1 and bill["flow_runs"][0]["images"] == 2
    assert f"paid ${bill['paid']:.4f} for 2 image(s) in 1 flow run(s)" in run.stdout
    reports = usage.storage / "reports"
    written = json.loads((reports / f"bill-{bill['start']}-{bill['end']}.json").read_text())
    assert written["paid"] == bill["paid"]


def test_a_plan_with_saved_prices_pays_nothing(usage: Usage) -> None:
    assert usage.run("docs_cost_prices.py").returncode == 0
    (usage.root / "kites.csv").write_text(KITES_CSV)
    out = usage.run("docs_cost_plan.py").result()
    assert out["summary"].startswith("plan: 5 call(s) to make for 8 image(s), 0 cache hit(s), 0 invalid")
    # the saved "proxy" settings priced it: OpenAI's token model, its output price replaced
    assert out["price_model"].startswith("openai-gpt-image-2+settings@")
    assert 0 < out["cost"] < 0.9087  # OpenAI's published prices: $0.9087
    assert usage.sandbox.ledger.entries == [] and usage.sandbox.ledger.requests == []


def test_the_sandbox_fixture_judges_your_own_test(tmp_path: Path) -> None:
    """docs/sandbox.md's test, run by pytest as a user's test file (the plugin comes with the package)."""
    shutil.copy(SCRIPTS / "docs_sandbox_pytest.py", tmp_path / "test_one_image.py")
    env = clean_env()
    env["DO_NOT_TRACK"] = "1"
    args = ["-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider", "test_one_image.py"]
    done = subprocess.run(
        [sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout + done.stderr


def _saved(block_type: type[Any], name: str) -> Any:
    """The block ``name`` as saved on the session's server, deleted from it (other tests may use
    the same names)."""
    from prefect.client.orchestration import get_client

    block = block_type.load(name)
    with get_client(sync_client=True) as client:
        client.delete_block_document(block._block_document_id)
    return block


def test_blocks_saved_from_python(usage: Usage) -> None:
    from prefect_gpt_image.blocks import GptImageCredentials, GptImageSettings, GptImageStorage

    run = usage.run("docs_storage_blocks_save.py")
    assert run.returncode == 0, run.tail()
    credentials = _saved(GptImageCredentials, "gpt-image")
    settings = _saved(GptImageSettings, "gpt-image")
    storage = _saved(GptImageStorage, "gpt-image")
    assert credentials.api_key.get_secret_value() == "sk-..."
    assert credentials.base_url == "https://cn.crazyrouter.com/v1"
    assert (settings.concurrency_limit, settings.max_cost_per_run) == (8, 20.0)
    assert storage.location == "s3://my-bucket/images"
    assert "sk-..." not in run.stdout + run.stderr
    assert usage.sandbox.ledger.requests == []


def test_an_s3_bucket_block_with_its_own_credentials(usage: Usage) -> None:
    from prefect_aws import AwsCredentials, S3Bucket

    run = usage.run("docs_storage_s3_bucket.py")
    assert run.returncode == 0, run.tail()
    bucket = _saved(S3Bucket, "images")
    aws = _saved(AwsCredentials, "images-aws")
    assert (bucket.bucket_name, bucket.bucket_folder) == ("my-images", "gpt-image")
    assert bucket.credentials.region_name == aws.region_name == "eu-west-1"
    assert bucket.credentials.aws_access_key_id == "AKIA..."


def _waiting_review(manifest: Path, script: RunningScript, after: int = 0) -> Any:
    """The paused flow run of the pipeline over ``manifest`` once its review form (of the round
    after ``after`` answered ones) is saved; fails if the script ends first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    deadline = time.monotonic() + SCRIPT_TIMEOUT
    paused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
    while time.monotonic() < deadline:
        assert script.process.poll() is None, script.wait().tail()
        with get_client(sync_client=True) as client:
            for run in client.read_flow_runs(flow_run_filter=paused):
                if run.parameters.get("manifest") != str(manifest):
                    continue
                key = f"paused-review-1-{after + 1}-description"
                if client.filter_flow_run_input(run.id, key, limit=1, exclude_keys=set()):
                    return run.id
        time.sleep(0.2)
    pytest.fail(f"the pipeline over {manifest} never waited for review round {after + 1}")


def test_a_pipeline_reviewed_from_a_script_edits_only_the_kept_rows(usage: Usage) -> None:
    from prefect.flow_runs import resume_flow_run

    frame = usage.root / "frame.png"
    Image.new("RGB", (96, 96), (10, 10, 10)).save(frame)
    manifest = usage.root / "products.csv"
    rows = [f"{sku},mug {sku},oak desk,blue,{frame}" for sku in ("sku-1", "sku-2", "sku-3", "sku-7")]
    manifest.write_text("\n".join(["id,product,surface,backdrop,frame", *rows]) + "\n")
    script = RunningScript("docs_review_pipeline.py", usage.env, usage.root, str(manifest))
    try:
        run_id = _waiting_review(manifest, script)
        assert _billed(usage.sandbox) == {"generations": 4}  # nothing edited before the review
        answer = usage.run("docs_review_resume.py", str(run_id))  # redo rows 2 and sku-7, drop row 3
        assert answer.returncode == 0, answer.tail()
        _waiting_review(manifest, script, after=1)  # the two redone rows, reviewed again
        assert _billed(usage.sandbox) == {"generations": 6}
        resume_flow_run(run_id, run_input={"approve_all": True, "redo": [], "drop": [], "reviewer": "ann"})
        statuses = script.wait().result()
    finally:
        script.stop()
    kept = ["stored", "stored", "stored"]
    assert statuses == {"sku-1": kept, "sku-2": kept, "sku-3": ["dropped"] * 3, "sku-7": kept}
    # the edits and blends were paid for the three kept rows only
    assert _billed(usage.sandbox) == {"generations": 6, "edits": 6}
    noted = [
        r["fields"]["prompt"]
        for r in usage.sandbox.ledger.requests
        if "warmer light" in r["fields"]["prompt"]
    ]
    assert len(noted) == 1 and "mug sku-2" in noted[0], noted  # the note went to row 2's redo only


def test_an_automation_tells_slack_a_review_waits(usage: Usage) -> None:
    """docs/review.md's automation, made on the session's server (then deleted: no event of another
    test may ever reach it; nothing is sent, the webhook's address is a placeholder)."""
    from prefect.blocks.notifications import SlackWebhook
    from prefect.client.orchestration import get_client

    from prefect_gpt_image.flows import REVIEW_EVENT

    slack_id = SlackWebhook(url="https://hooks.slack.com/services/T0/B0/placeholder").save("reviews")
    try:
        run = usage.run("docs_review_automation.py")
        with get_client(sync_client=True) as client:
            made = client.read_automations_by_name("gpt-image review waiting")
            for automation in made:
                client.delete_automation(automation.id)
        assert run.returncode == 0, run.tail()
    finally:
        with get_client(sync_client=True) as client:
            client.delete_block_document(slack_id)
    assert len(made) == 1, made
    trigger, action = made[0].trigger, made[0].actions[0]
    assert trigger.expect == {REVIEW_EVENT} and trigger.match.model_dump() == {
        "prefect.resource.id": "prefect.flow-run.*"
    }
    assert action.block_document_id == slack_id
    assert "{{ event.payload.url }}" in action.body
