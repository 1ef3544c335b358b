"""Review in the Prefect UI before more is spent (``review=True``), on the real Prefect server, the
sandbox (its ledger judges what was paid) and a real S3 bucket.

The flow runs in a thread of the test process, as a script would run it; the test waits for the
server to hold the run Paused with its form, reads the form's description as the UI does, and
resumes it through the API with the values the UI's form sends (strings in the row fields).
"""

from __future__ import annotations

import contextvars
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect import tags
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.flow_runs import resume_flow_run
from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

from prefect_gpt_image.flows import (
    REVIEW_EVENT,
    ChainResult,
    batch_edit,
    batch_generate,
    batch_pipeline,
    image_pipeline,
)
from prefect_gpt_image.flows import review as review_module
from tests.support.images import png_bytes
from tests.support.markdown import cell_text, render
from tests.support.prefect import flow_run_artifacts
from tests.support.sandbox import billed_images, sandbox_requests

from .conftest import run, saved_settings

_WAIT = 90.0
TOP = {"left": 0, "top": 0, "right": 1, "bottom": 0.25}
EDIT = "put the product on a white studio backdrop"


@pytest.fixture(autouse=True)
def _quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    """A paused run asks the server every second whether it was resumed (5 s by default)."""
    monkeypatch.setattr(review_module, "POLL_SECONDS", 1)


class Background:
    """A flow called from sync code in a thread (as a script calls it), tagged so the test finds
    its flow run on the server."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.tag = f"review-test-{uuid.uuid4().hex[:10]}"
        self.state: Any = None
        self.error: BaseException | None = None
        context = contextvars.copy_context()

        def target() -> None:
            try:
                with tags(self.tag):
                    self.state = call()
            except BaseException as exc:  # reported by result()
                self.error = exc

        self.thread = threading.Thread(target=context.run, args=(target,), daemon=True)
        self.thread.start()

    def paused(self, round_: int, review: int = 1) -> tuple[uuid.UUID, str]:
        """Wait until the server holds the run Paused with review ``review``'s form of round
        ``round_`` saved; the run's id and the form's description."""
        deadline = time.monotonic() + _WAIT
        key = f"paused-review-{review}-{round_}-description"
        while True:
            if self.error is not None or self.state is not None:
                raise AssertionError(f"the flow ended instead of pausing: {self.error or self.state}")
            with get_client(sync_client=True) as client:
                runs = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[self.tag]))
                )
                if runs and runs[0].state is not None and runs[0].state.is_paused():
                    # the form is saved right after the state
                    saved = client.filter_flow_run_input(runs[0].id, key, limit=1, exclude_keys=set())
                    if saved:
                        return runs[0].id, str(saved[0].decoded_value)
            if time.monotonic() > deadline:
                raise AssertionError(f"the run never paused for round {round_} within {_WAIT:g} s")
            time.sleep(0.2)

    def result(self) -> Any:
        self.thread.join(_WAIT)
        assert not self.thread.is_alive(), "the flow did not end"
        if self.error is not None:
            raise self.error
        return self.state


def _photos(local_s3: Any, storage: str, count: int) -> str:
    bucket = storage.removeprefix("s3://").split("/")[0]
    client = local_s3.client()
    for i in range(count):
        client.put_object(Bucket=bucket, Key=f"review/p{i}.png", Body=png_bytes((64, 64), (40 * i, 90, 160)))
    return f"s3://{bucket}/review/"


def _edits(sandbox: Any) -> list[str]:
    """The prompts of the edits the sandbox received, in order."""
    return [r["fields"]["prompt"] for r in sandbox_requests(sandbox) if r["endpoint"].endswith("edits")]


#: What the UI's Resume form sends: every field, the row fields as typed text.
def _form(redo: list[tuple[str, str]] = (), drop: list[str] = (), approve_all: bool = True) -> dict[str, Any]:  # type: ignore[assignment]
    return {
        "approve_all": approve_all,
        "redo": [{"row": row, "note": note} for row, note in redo],
        "drop": list(drop),
        "reviewer": "ann",
    }


def test_a_batch_edit_is_reviewed_redone_dropped_and_a_rerun_pays_nothing(env: Any) -> None:
    sandbox, local_s3, storage = env
    photos = _photos(local_s3, storage, 4)

    def edit() -> Any:
        return batch_edit(images=photos, prompt=EDIT, storage=storage, review=True, return_state=True)

    flow = Background(edit)
    run_id, sheet = flow.paused(1)
    assert len(_edits(sandbox)) == 4 and billed_images(sandbox) == 4  # the edits, then the pause
    assert "review of step edit, round 1" in sheet and all(f"| {n} | " in sheet for n in range(1, 5)), sheet
    assert sheet.count("![source]") == 4 and sheet.count("![edit]") == 4  # each row's before → after

    resume_flow_run(run_id, run_input=_form(redo=[("2", "warmer light"), ("4", "")], drop=["3"]))
    _, sheet = flow.paused(2)
    # exactly the redos, planned and made before the new review: row 2 with its note, row 4 as
    # it was asked the first time (a new variant: not the stored answer)
    assert sorted(_edits(sandbox)[4:]) == [EDIT, f"{EDIT} warmer light"] and billed_images(sandbox) == 6
    assert "| 2 | " in sheet and "| 4 | " in sheet and "| 1 | " not in sheet and "| 3 | " not in sheet
    resume_flow_run(run_id, run_input=_form())
    state = run(flow.result())
    assert state.is_completed(), state.message
    assert "1 row(s) dropped at review" in (state.message or "")
    result: ChainResult = state.result()  # type: ignore[assignment]
    by_row = {s.row: s for s in result.steps}
    assert {n: s.status for n, s in by_row.items()} == {1: "stored", 2: "stored", 3: "dropped", 4: "stored"}
    assert by_row[2].prompt == f"{EDIT} warmer light"
    assert [(d.round, d.decision, d.note) for d in by_row[2].review] == [
        (1, "redo", "warmer light"),
        (2, "approved", ""),
    ]
    assert [(d.decision, d.by, d.signed) for d in by_row[1].review] == [("approved", "unknown", "ann")]
    assert [d.decision for d in by_row[3].review] == ["dropped"]
    assert by_row[3].images and by_row[3].review[0].images == [by_row[3].images[0].sha256]
    assert [d.decision for d in by_row[4].review] == ["redo", "approved"]
    ledger_cost = 6 * 0.0377
    assert result.cost == pytest.approx(ledger_cost, abs=1e-3)  # the redone attempt is counted too
    table = next(a for a in flow_run_artifacts(run_id) if a["key"] == "gpt-image-batch-edit")["data"]
    rows = table if isinstance(table, list) else json.loads(table)
    reviews = {r["row"]: cell_text(r["review"]) for r in rows}
    assert reviews[2].startswith("approved by unknown (signed ann) at ") and reviews[2].endswith("round 2")
    assert reviews[3].startswith("dropped by unknown")

    # the same run again, answered the same way: everything comes from the store
    again = Background(edit)
    rerun_id, _ = again.paused(1)
    resume_flow_run(rerun_id, run_input=_form(redo=[("2", "warmer light"), ("4", "")], drop=["3"]))
    again.paused(2)
    resume_flow_run(rerun_id, run_input=_form())
    state = run(again.result())
    assert state.is_completed(), state.message
    assert billed_images(sandbox) == 6 and len(_edits(sandbox)) == 6


def _generate(prompts: list[str], storage: str, **parameters: Any) -> Background:
    """``batch_generate(review=True)`` of ``prompts`` started in the background."""
    options = {"size": "1024x1024", "quality": "low"}
    return Background(
        lambda: batch_generate(
            prompts=prompts, options=options, storage=storage, review=True, return_state=True, **parameters
        )
    )


def test_an_unanswered_review_ends_the_run_and_pays_nothing_after_it(env: Any) -> None:
    sandbox, _, storage = env
    flow = _generate(["a red kite", "a green hill"], storage, review_timeout=3)
    run_id, _ = flow.paused(1)
    state = run(flow.result())
    assert state.is_failed()
    message = state.message or ""
    expected = "review of step 'generate' (round 1): no answer within 3 s; the run ends"
    assert message.startswith(expected), message
    assert "nothing more is paid for" in message
    assert billed_images(sandbox) == 2
    with get_client(sync_client=True) as client:
        server_state = client.read_flow_run(run_id).state
    assert server_state is not None and server_state.is_failed() and server_state.message == message


def test_a_redo_over_the_runs_budget_is_refused_before_any_call(env: Any) -> None:
    sandbox, _, storage = env
    flow = _generate(
        ["a red kite", "a green hill"], storage, settings_block=saved_settings(max_images_per_run=2)
    )
    run_id, _ = flow.paused(1)
    resume_flow_run(run_id, run_input=_form(redo=[("1", "at night")]))
    state = run(flow.result())
    assert state.is_failed() and billed_images(sandbox) == 2  # the redo was planned, refused, never sent
    result = state.result(raise_on_failure=False)
    first, second = result.rows  # type: ignore[union-attr]
    assert first.status == "failed" and first.error_type == "BudgetExceededError"
    assert "max_images_per_run=2" in (first.error or "") and "1 call(s) to make" in (first.error or "")
    assert second.status == "stored" and [d.decision for d in second.review] == ["approved"]


@pytest.fixture
def live_events(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This test's events reach the server (the test session sends none: tests/conftest.py)."""
    from prefect.events.worker import EventsWorker

    monkeypatch.setattr(EventsWorker, "_client_override", None)
    yield
    EventsWorker.drain_all()


@pytest.mark.usefixtures("live_events")
def test_a_waiting_review_emits_an_event_with_the_link_and_counts(env: Any) -> None:
    sandbox, _, storage = env
    flow = _generate(["a red kite", "a green hill", "a blue lake"], storage)
    run_id, _ = flow.paused(1)
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + _WAIT
    while not events:
        response = httpx.post(
            f"{PREFECT_API_URL.value()}/events/filter",
            json={
                "filter": {
                    "event": {"name": [REVIEW_EVENT]},
                    "resource": {"id": [f"prefect.flow-run.{run_id}"]},
                },
                "limit": 10,
            },
            timeout=30,
        )
        response.raise_for_status()
        events = response.json()["events"]
        if not events:
            assert time.monotonic() < deadline, "the review event never reached the server"
            time.sleep(0.5)
    (event,) = events
    payload = event["payload"]
    assert payload["rows"] == 3 and payload["round"] == 1 and payload["step"] == "generate"
    assert payload["mode"] == "pause" and payload["url"].endswith(f"/runs/flow-run/{run_id}")
    resume_flow_run(run_id, run_input=_form(drop=["1"]))
    state = run(flow.result())
    assert state.is_completed() and billed_images(sandbox) == 3


def test_a_review_step_between_steps_lets_only_the_approved_rows_go_on(env: Any, tmp_path: Path) -> None:
    """generate → review → edit: rows named by id; the dropped row is never edited, the redone
    row's edit starts from its new image."""
    sandbox, _, storage = env
    manifest = tmp_path / "products.csv"
    manifest.write_text("id,product\nsku-1,a mug\nsku-2,a lamp\nsku-3,a vase\n")
    steps = [
        {"kind": "generate", "prompt": "{product} on a desk", "options": {"size": "1024x1024"}},
        {"kind": "review", "timeout_seconds": 600},
        {
            "kind": "edit",
            "prompt": "a blue backdrop",
            "region": {"left": 0, "top": 0, "right": 1, "bottom": 0.25},
        },
    ]
    flow = Background(
        lambda: batch_pipeline(
            manifest=str(manifest),
            steps=steps,
            options={"quality": "low"},
            storage=storage,
            return_state=True,
        )
    )
    run_id, sheet = flow.paused(1)
    assert "sku\\-2" in sheet and billed_images(sandbox) == 3  # generated, nothing edited yet
    resume_flow_run(run_id, run_input=_form(redo=[("sku-3", "in blue glass")], drop=["sku-2"]))
    flow.paused(2)
    resume_flow_run(run_id, run_input=_form())
    state = run(flow.result())
    assert state.is_completed(), state.message
    result: ChainResult = state.result()  # type: ignore[assignment]
    status = {(s.id, s.step): s.status for s in result.steps}
    assert status == {
        ("sku-1", "generate"): "stored",
        ("sku-1", "edit"): "stored",
        ("sku-2", "generate"): "dropped",
        ("sku-2", "edit"): "dropped",
        ("sku-3", "generate"): "stored",
        ("sku-3", "edit"): "stored",
    }
    requests = sandbox_requests(sandbox)
    generations = [r["fields"]["prompt"] for r in requests if r["endpoint"].endswith("generations")]
    assert generations[3:] == ["a vase on a desk in blue glass"]
    edits = [r for r in requests if r["endpoint"].endswith("edits")]
    assert len(edits) == 2 and billed_images(sandbox) == 6
    final = {s.id: s for s in result.steps if s.step == "generate"}
    edited_inputs = {r["files"][0]["sha256"] for r in edits}
    assert edited_inputs == {final["sku-1"].images[0].sha256, final["sku-3"].images[0].sha256}
    assert [d.decision for d in final["sku-3"].review] == ["redo", "approved"]


def test_image_pipeline_reviews_the_generation_before_the_edit(env: Any) -> None:
    """A dropped generation is never edited; the pipeline says it was dropped."""
    sandbox, _, storage = env
    flow = Background(
        lambda: image_pipeline(
            "a lighthouse at dawn",
            options={"size": "1024x1024", "quality": "low"},
            edit={"prompt": "add a rainbow", "region": TOP},
            storage=storage,
            review=True,
        )
    )
    run_id, _ = flow.paused(1)
    resume_flow_run(run_id, run_input=_form(drop=["1"]))
    result = flow.result()
    assert result.dropped and result.edited is None and [d.decision for d in result.review] == ["dropped"]
    assert billed_images(sandbox) == 1 and not [
        r for r in sandbox_requests(sandbox) if r["endpoint"].endswith("edits")
    ]


def test_a_review_of_130_rows_links_every_page_and_takes_answers_about_later_rows(
    prefect_env: Path, make_sandbox: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """More rows than a sheet page holds: the form's description (page 1) links every page's
    artifact, the last page lists rows 101 to 130, and a redo of row 120 and a drop of row 101
    are honoured (the sandbox's ledger: exactly one more call, for row 120's prompt)."""
    from prefect_gpt_image.flows.sheets import SHEET_PAGE_ROWS

    assert SHEET_PAGE_ROWS == review_module.SHEET_ROWS == 100
    sandbox = make_sandbox(latency=0)
    monkeypatch.setenv("GPT_IMAGE_API_KEY", "sk-review-pages-0123")
    monkeypatch.setenv("GPT_IMAGE_BASE_URL", sandbox.base_url)
    prompts = [f"a paper lantern, number {n}" for n in range(1, 131)]
    flow = _generate(prompts, str(tmp_path / "store"))
    run_id, description = flow.paused(1)
    assert billed_images(sandbox) == 130
    assert "page 1 of 2" in description and "| 100 | " in description and "| 101 | " not in description
    shown = render(description).html  # as the Resume dialog shows it
    links = re.findall(r'<a href="([^"]+)">page (\d) of 2: rows (\d+) to (\d+)</a>', shown)
    assert [(p, a, b) for _, p, a, b in links] == [("1", "1", "100"), ("2", "101", "130")], shown[:3000]
    artifacts = {a["id"]: a for a in flow_run_artifacts(run_id) if a["type"] == "markdown"}
    ui = str(PREFECT_UI_URL.value()).rstrip("/")
    pages = []
    for link, *_ in links:
        assert link.startswith(f"{ui}/artifacts/artifact/"), link
        pages.append(artifacts[link.rsplit("/", 1)[1]]["data"])  # an artifact of this run
    first, last = pages
    assert "page 1 of 2: rows 1 to 100 of 130" in first and "| 100 | " in first
    assert "page 2 of 2: rows 101 to 130 of 130" in last
    assert all(f"| {n} | " in last for n in range(101, 131)) and "| 100 | " not in last

    resume_flow_run(run_id, run_input=_form(redo=[("120", "in the rain")], drop=["101"]))
    _, description = flow.paused(2)
    assert render(description).text.startswith("1 row(s) to review") and "| 120 | " in description
    resume_flow_run(run_id, run_input=_form())
    state = run(flow.result())
    assert state.is_completed(), state.message
    generations = [r["fields"]["prompt"] for r in sandbox_requests(sandbox)]
    assert billed_images(sandbox) == 131 and generations[130:] == [f"{prompts[119]} in the rain"]
    rows = {r.row: r for r in state.result().rows}  # type: ignore[union-attr]
    assert rows[101].status == "dropped" and [d.decision for d in rows[101].review] == ["dropped"]
    assert rows[120].status == "stored" and [d.decision for d in rows[120].review] == ["redo", "approved"]
    assert sum(r.status == "stored" for r in rows.values()) == 129
