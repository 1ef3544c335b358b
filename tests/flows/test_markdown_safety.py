"""What Prefect's UI would show: flows run on a real Prefect server with prompts, ids, column
values and file names holding image, link, autolink, HTML, heading and table syntax; every
artifact is read back from the server and rendered as markdown (markdown artifacts' data, every
artifact's description, every string cell of the table artifacts: the UI renders them all).
No image, link or HTML element comes from the user's text, no heading but the plugin's own, no
table break; the user's strings read back as the text they are; the only links and images are
the plugin's own (a stored image, the CSV report). The batch's CSV report neutralises cells that
would start a spreadsheet formula."""

from __future__ import annotations

import csv
import io
import json
from typing import Any
from urllib.parse import quote

import pytest

from prefect_gpt_image.flows import (
    BatchResult,
    BlendStep,
    ChainResult,
    EditStep,
    ImageOptions,
    MaskRegion,
    PipelineResult,
    batch_edit,
    batch_generate,
    image_pipeline,
)
from prefect_gpt_image.tasks import ImageRef
from tests.support.images import png_bytes
from tests.support.markdown import Rendered, as_shown, cell_text, render
from tests.support.prefect import flow_run_artifacts

from .conftest import run

IMAGE = "![pixel](http://127.0.0.1:9/pixel.png)"
LINK = '[click me](http://127.0.0.1:9/phish) <a href="http://127.0.0.1:9/a">here</a>'
AUTOLINK = "www.example.com http://127.0.0.1:9/bare me@example.com readme.md"
HTML = "<img src=x onerror=alert(1)><script>alert(2)</script>"
HEADING = "\n# HEADING ONE\nSETEXT\n====="
TABLE = " | a | b |\n|---|---|\n| c | d |"
# A store prefix (a run parameter) with markdown syntax: it is in every stored image's URI.
PREFIX = "`tick` <b>bold</b> *em* [x](y) | www.example.com"

# Tags the plugin's own markdown uses: anything else (script, iframe, ...) came from user text.
TEMPLATE_TAGS = {
    "h1",
    "h2",
    "h3",
    "p",
    "blockquote",
    "strong",
    "code",
    "ul",
    "li",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
    "a",
    "img",
}


def _base(url: str) -> str:
    """A presigned link without its signature (each link to an object is signed anew)."""
    return url.split("?", 1)[0]


class Viewer:
    """Checks what a viewer of the artifacts would get; ``links``: the object URLs (unsigned)
    the plugin may link to."""

    def __init__(self, links: set[str]) -> None:
        self.links = links

    def ours(self, url: str | None) -> bool:
        """A presigned link of the plugin's to one of its objects."""
        return url is not None and _base(url) in self.links and "X-Amz-Signature=" in url

    def markdown(self, markdown: str, *, headings: set[str]) -> Rendered:
        """A markdown artifact: the plugin's tags only, its own links and images only, headings
        only from ``headings``."""
        rendered = render(markdown)
        assert {tag for tag, _ in rendered.elements} <= TEMPLATE_TAGS, rendered.html
        for attrs in rendered.tags("a"):
            assert self.ours(attrs["href"]), attrs
        for attrs in rendered.tags("img"):
            assert self.ours(attrs["src"]), attrs
        for level in ("h1", "h2", "h3", "h4", "h5", "h6"):
            for text in rendered.texts(level):
                assert text in headings, (level, text)
        return rendered

    def description(self, description: str | None) -> str:
        """An artifact's description: plain text, or text and the plugin's own links."""
        rendered = render(description or "")
        assert {tag for tag, _ in rendered.elements} <= {"p", "a"}, rendered.html
        for attrs in rendered.tags("a"):
            assert self.ours(attrs["href"]), attrs
        return rendered.text.strip()

    def table(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A table artifact's rows as the UI shows them: each string cell rendered on its own
        (plain text, or the image column's link to a stored image reading its URI)."""
        shown = []
        for row in rows:
            cells: dict[str, Any] = {}
            for name, value in row.items():
                if not isinstance(value, str):
                    cells[name] = value
                elif name == "image" and value:
                    rendered = render(value)
                    assert [tag for tag, _ in rendered.elements] == ["p", "a"], rendered.html
                    assert self.ours(rendered.tags("a")[0]["href"])
                    cells[name] = rendered.text.strip()
                else:
                    cells[name] = cell_text(value)
            shown.append(cells)
        return shown


def _artifacts(state: Any) -> list[dict[str, Any]]:
    return flow_run_artifacts(state.state_details.flow_run_id)


def _rows(artifact: dict[str, Any]) -> list[dict[str, Any]]:
    data = artifact["data"]
    return list(json.loads(data) if isinstance(data, str) else data)


def _manifest(local_s3: Any, bucket: str, name: str, rows: list[dict[str, str]]) -> str:
    """``rows`` as a JSONL manifest in the bucket; its s3:// URI."""
    body = "".join(json.dumps(row) + "\n" for row in rows).encode()
    local_s3.client().put_object(Bucket=bucket, Key=f"manifests/{name}", Body=body)
    return f"s3://{bucket}/manifests/{name}"


def _links(refs: list[ImageRef]) -> set[str]:
    assert all(ref.link for ref in refs)
    return {_base(ref.link or "") for ref in refs}


def test_pipeline_artifacts_show_hostile_prompts_as_text(env: Any) -> None:
    _, local_s3, storage = env
    storage = f"{storage}/{PREFIX}"
    bucket = storage.removeprefix("s3://").split("/")[0]
    local_s3.client().put_object(Bucket=bucket, Key="refs/style.png", Body=png_bytes((256, 256), "teal"))
    prompts = {
        "generate": f"{IMAGE} {HTML} a kite{HEADING}",
        "edit": f"{LINK} {AUTOLINK}{TABLE}",
        "blend": f"# {AUTOLINK} *em* ~~s~~ `code` | x |\n    indented",
    }
    state = run(
        image_pipeline(
            prompts["generate"],
            options=ImageOptions(size="1024x1024", quality="low"),
            edit=EditStep(prompt=prompts["edit"], region=MaskRegion(left=0, top=0, right=1, bottom=0.5)),
            blend=BlendStep(prompt=prompts["blend"], references=[f"s3://{bucket}/refs/style.png"]),
            storage=storage,
            return_state=True,
        )
    )
    assert state.is_completed(), state.message
    result: PipelineResult = state.result()  # type: ignore[assignment]
    refs = {"generate": result.generated[0], "edit": result.edited[0], "blend": result.blended[0]}  # type: ignore[index]
    viewer = Viewer(_links(list(refs.values())))
    artifacts = _artifacts(state)

    # every image artifact: the plugin's stored image, its description the prompt as text
    images = [a for a in artifacts if a["type"] == "image"]
    assert len(images) == 3
    for artifact in images:
        assert viewer.ours(artifact["data"])
        step = next(s for s, ref in refs.items() if _base(ref.link or "") == _base(artifact["data"]))
        assert viewer.description(artifact["description"]) == as_shown(f"1024x1024 png: {prompts[step]}")

    # every call's card: the prompt quoted as text, links only to the call's own image
    cards = [a for a in artifacts if a["type"] == "markdown" and a["key"].startswith("gpt-image-call-")]
    assert len(cards) == 3
    for card in cards:
        rendered = viewer.markdown(card["data"], headings={"gpt-image: generated"})
        (quoted,) = rendered.texts("blockquote")
        step = next(s for s, prompt in prompts.items() if as_shown(prompt) in quoted)
        assert quoted.strip() == as_shown(prompts[step]) and refs[step].uri in rendered.texts("td")
        assert [a["href"] for a in rendered.tags("a")] and all(
            _base(a["href"] or "") == _base(refs[step].link or "") for a in rendered.tags("a")
        )
        described = viewer.description(card["description"])
        assert described == as_shown(f"gpt-image call (generated): {prompts[step]}")

    # the pipeline's chain: each step's prompt as text, each step's stored image
    (chain,) = [a for a in artifacts if a["key"] == "gpt-image-pipeline"]
    headings = {"gpt-image pipeline", "1. generate", "2. edit", "3. blend"}
    rendered = viewer.markdown(chain["data"], headings=headings)
    assert rendered.texts("h1") == ["gpt-image pipeline"]
    assert rendered.texts("h2") == ["1. generate", "2. edit", "3. blend"]
    assert [q.strip() for q in rendered.texts("blockquote")] == [as_shown(p) for p in prompts.values()]
    assert all(f"stored at {ref.uri}" in rendered.text for ref in refs.values())
    assert all(PREFIX in ref.uri for ref in refs.values())
    assert [_base(i["src"] or "") for i in rendered.tags("img")] == [
        _base(r.link or "") for r in refs.values()
    ]
    described = viewer.description(chain["description"])
    assert described == as_shown(f"gpt-image pipeline: {prompts['generate'][:120]}")


def test_batch_table_and_plan_show_hostile_rows_as_text(env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ids, prompts, a refused option's value (in the error) and a refused call's gateway error
    in a batch's table (over TABLE_ROWS, so the description links the CSV report), and in the
    plan's table."""
    from prefect_gpt_image.flows import batch_report

    _, local_s3, storage = env
    monkeypatch.setattr(batch_report, "TABLE_ROWS", 4)
    bucket = storage.removeprefix("s3://").split("/")[0]
    storage = f"{storage}/{PREFIX}"
    rows = [
        {"id": HTML, "prompt": f"{IMAGE} a kite{HEADING}"},
        {"id": LINK, "prompt": f"{LINK} two kites{TABLE}"},
        {"id": f"r3{TABLE}", "prompt": f"{AUTOLINK} three kites"},
        {"id": f"r4 {IMAGE}", "prompt": "four kites", "quality": IMAGE},  # invalid: the error quotes it
        {"id": "r5", "prompt": f"{HTML} [sandbox:block]"},  # refused by the gateway
    ]
    kwargs: dict[str, Any] = {
        "manifest": _manifest(local_s3, bucket, "hostile.jsonl", rows),
        "options": ImageOptions(size="1024x1024"),
        "storage": storage,
        "return_state": True,
    }

    planned = run(batch_generate(**kwargs, plan_only=True))
    assert planned.is_completed(), planned.message
    (plan_table,) = [a for a in _artifacts(planned) if a["key"] == "gpt-image-plan"]
    viewer = Viewer(set())
    shown = viewer.table(_rows(plan_table))
    assert [(r["row"], r["id"], r["status"]) for r in shown] == [
        (i, as_shown(row["id"]), "invalid" if i == 4 else "call") for i, row in enumerate(rows, start=1)
    ]
    assert f"quality={IMAGE!r}" in shown[3]["error"]
    viewer.description(plan_table["description"])

    state = run(batch_generate(**kwargs))
    assert state.is_failed() and "2 of 5 rows failed" in (state.message or "")
    result: BatchResult = state.result(raise_on_failure=False)  # type: ignore[assignment]
    flow_run_id = state.state_details.flow_run_id
    report = f"{storage.removeprefix(f's3://{bucket}/')}/reports/batch-{flow_run_id}.csv"
    stored = [ref for r in result.rows for ref in r.images]
    endpoint = _base(stored[0].link or "").split(f"/{bucket}/", 1)[0]
    viewer = Viewer(_links(stored) | {f"{endpoint}/{bucket}/{quote(report, safe='/~')}"})
    artifacts = _artifacts(state)
    (table,) = [a for a in artifacts if a["key"] == "gpt-image-batch"]
    shown = viewer.table(_rows(table))
    # over TABLE_ROWS: the failed rows first
    by_row = {r.row: r for r in result.rows}
    assert [r["row"] for r in shown] == [4, 5, 1, 2]
    for cells in shown:
        original = by_row[cells["row"]]
        assert cells["id"] == as_shown(original.id or "") and cells["prompt"] == as_shown(original.prompt)
        assert cells["error"] == as_shown((original.error or "")[:300])
        assert cells["request_id"] == (original.request_id or "")
        assert cells["image"] == (original.images[0].uri if original.images else "")
    assert f"quality={IMAGE!r}" in shown[0]["error"] and shown[1]["request_id"]
    description = render(table["description"])
    assert [viewer.ours(a["href"]) for a in description.tags("a")] == [True]
    assert viewer.description(table["description"]).endswith("every row: CSV")
    (progress,) = [a for a in artifacts if a["key"] == "gpt-image-batch-progress"]
    viewer.description(progress["description"])


def test_batch_edit_artifacts_show_hostile_ids_columns_and_file_names_as_text(env: Any) -> None:
    """batch_edit over a manifest: ids, a prompt template filled from hostile columns, image
    file names with markdown syntax, and a missing image (its error names the URI)."""
    _, local_s3, storage = env
    bucket = storage.removeprefix("s3://").split("/")[0]
    client = local_s3.client()
    names = ["photos/[a](b) *c* <i>d</i> #1.png", "photos/e_f_ `g` | h.png"]
    for i, name in enumerate(names):
        client.put_object(Bucket=bucket, Key=name, Body=png_bytes((64, 64), ("red", "blue")[i]))
    rows = [
        {"id": HTML, "image": f"s3://{bucket}/{names[0]}", "product": f"{IMAGE} mug{HEADING}"},
        {"id": f"{LINK}{TABLE}", "image": f"s3://{bucket}/{names[1]}", "product": AUTOLINK},
        {"id": "missing", "image": f"s3://{bucket}/photos/{IMAGE}.png", "product": "gone"},
    ]
    state = run(
        batch_edit(
            images=_manifest(local_s3, bucket, "edits.jsonl", rows),
            prompt="{product} on a white studio",
            region=MaskRegion(left=0, top=0, right=0.5, bottom=0.5),
            storage=storage,
            return_state=True,
        )
    )
    assert state.is_failed() and "1 of 3 rows failed" in (state.message or "")
    result: ChainResult = state.result(raise_on_failure=False)  # type: ignore[assignment]
    stored = [ref for s in result.steps for ref in s.images]
    viewer = Viewer(_links(stored))
    artifacts = _artifacts(state)
    (table,) = [a for a in artifacts if a["key"] == "gpt-image-batch-edit"]
    shown = viewer.table(_rows(table))
    assert [(c["id"], c["source"]) for c in shown] == [(as_shown(r["id"]), r["image"]) for r in rows]
    assert [c["step"] for c in shown] == ["edit"] * 3
    assert rows[2]["image"] in shown[2]["error"]
    assert [c["image"] for c in shown[:2]] == [s.images[0].uri for s in result.steps[:2]]

    (chains,) = [a for a in artifacts if a["key"] == "gpt-image-batch-edit-chains"]
    rows_shown = [f"row {i} ({as_shown(r['id'])})" for i, r in enumerate(rows, 1)]
    rendered = viewer.markdown(chains["data"], headings={"gpt-image batch edit", "1. edit", *rows_shown})
    assert rendered.texts("h2") == rows_shown
    # the invalid row's step was never filled in: an empty quote, then its error
    quotes = [as_shown(f"{r['product']} on a white studio") for r in rows[:2]] + [""]
    assert [q.strip() for q in rendered.texts("blockquote")] == quotes
    assert rows[2]["image"] in rendered.text
    assert len(rendered.tags("img")) == 2
    for artifact in artifacts:
        viewer.description(artifact["description"])


def test_csv_report_neutralises_cells_that_would_start_a_formula(
    env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prompts and ids beginning with = + - @ (and a tab): the report read from the store has
    them after a leading quote; numbers (row, images, cost) stay numbers; other cells as given."""
    from prefect_gpt_image.flows import batch_report

    _, local_s3, storage = env
    monkeypatch.setattr(batch_report, "TABLE_ROWS", 1)  # a report is written over TABLE_ROWS rows
    bucket = storage.removeprefix("s3://").split("/")[0]
    rows = [
        {"id": '=HYPERLINK("http://127.0.0.1:9/x","open")', "prompt": "=1+2 a kite"},
        {"id": "+id", "prompt": "+a kite"},
        {"id": "-id", "prompt": "-a kite"},
        {"id": "@id", "prompt": "@SUM(A1:A2) a kite"},
        {"id": "\tid", "prompt": "\t=a kite"},
        {"id": "plain", "prompt": "a plain kite"},
    ]
    manifest = _manifest(local_s3, bucket, "formulas.jsonl", rows)
    options = ImageOptions(size="1024x1024")
    state = run(batch_generate(manifest=manifest, options=options, storage=storage, return_state=True))
    assert state.is_completed(), state.message
    prefix = storage.removeprefix(f"s3://{bucket}/")
    key = f"{prefix}/reports/batch-{state.state_details.flow_run_id}.csv"
    body = local_s3.client().get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    report = list(csv.DictReader(io.StringIO(body)))
    assert [(r["id"], r["prompt"]) for r in report] == [
        ((f"'{row['id']}", f"'{row['prompt']}") if row["id"] != "plain" else (row["id"], row["prompt"]))
        for row in rows
    ]
    for number, line in enumerate(report, start=1):
        assert line["row"] == str(number) and line["images"] == "1" and line["status"] == "stored"
        assert float(line["cost"]) > 0 and line["cost"] == repr(float(line["cost"]))
        assert line["image"].startswith("http://127.0.0.1") and line["error"] == ""
