"""Contact sheets and galleries, from real flow runs on the real Prefect server and the sandbox,
into a local folder and into the real S3 server (SeaweedFS): every row listed (each markdown page
rendered as a viewer would, the gallery parsed as a browser would), before → after for edits and
chains, failed and invalid rows with their error, hostile prompts and ids shown as text; the
thumbnails made once (a rerun writes none), a local store's embedded as ``data:`` images that
decode, an S3 store's presigned links that fetch."""

from __future__ import annotations

import base64
import io
import json
import re
import threading
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from PIL import Image

from prefect_gpt_image.calls import read_manifest
from prefect_gpt_image.calls.thumbs import THUMB_EDGE
from prefect_gpt_image.flows import (
    BatchResult,
    ChainResult,
    EditStep,
    GenerateStep,
    ImageOptions,
    MaskRegion,
    ProgressReport,
    batch_edit,
    batch_generate,
    batch_pipeline,
    image_pipeline,
    sheets,
    watch_progress,
)
from prefect_gpt_image.storage import ImageStore, LocalImageStore, S3ImageStore
from tests.support.images import png_bytes
from tests.support.markdown import Rendered, as_shown, render
from tests.support.prefect import flow_run_artifacts

from .conftest import run

HOSTILE = "<img src=x onerror=alert(1)><script>alert(2)</script> ![p](http://127.0.0.1:9/p.png) | x |\n# H"
HOSTILE_ID = '[click](http://127.0.0.1:9/phish) <a href="http://127.0.0.1:9/a">a</a> **b**'
SHEET_TAGS = {"h1", "p", "table", "thead", "tbody", "tr", "th", "td", "a", "img", "strong"}
GALLERY_TAGS = {
    "html", "head", "meta", "title", "style", "body", "h1", "p", "div", "input", "label", "main",
    "section", "h2", "figure", "img", "a", "figcaption", "br", "span",
}  # fmt: skip


class _Page(HTMLParser):
    """A gallery page as a browser parses it: its elements and each row section's text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.sections: dict[str, str] = {}
        self._section: str | None = None
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))
        if tag == "section":
            self._section = dict(attrs).get("id") or ""
            self.sections[self._section] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self._section = None

    def handle_data(self, data: str) -> None:
        if self._section is not None:
            self.sections[self._section] += data


def parse_gallery(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    page.close()
    assert {tag for tag, _ in page.elements} <= GALLERY_TAGS, {tag for tag, _ in page.elements}
    return page


def sheet_artifacts(state: Any, key: str) -> list[dict[str, Any]]:
    """The run's contact sheet pages, in page order (the first under ``key``)."""
    pages: dict[int, dict[str, Any]] = {}
    for artifact in flow_run_artifacts(state.state_details.flow_run_id):
        text = render(artifact.get("description") or "").text
        found = re.search(r"contact sheet, page (\d+) of (\d+)", text)
        if artifact["type"] == "markdown" and found:
            pages[int(found.group(1))] = artifact
            assert int(found.group(2)) >= len(pages)
    ordered = [pages[n] for n in sorted(pages)]
    assert ordered and ordered[0]["key"] == key and all(a["key"] is None for a in ordered[1:])
    assert sorted(pages) == list(range(1, len(pages) + 1))
    return ordered


def sheet_rows(page: Rendered) -> list[list[str]]:
    """The body rows of a sheet page's table: each cell's HTML."""
    body = page.html.split("<tbody>", 1)[1]
    return [re.findall(r"<td>(.*?)</td>", tr, re.S) for tr in re.findall(r"<tr>(.*?)</tr>", body, re.S)]


def cell(html: str) -> str:
    return unescape(re.sub(r"<[^>]+>", "", html)).strip()


def check_page(markdown: str, *, links: set[str] | None) -> Rendered:
    """A page as a viewer sees it: the sheet's own elements only, one heading (the title), every
    image a thumbnail: a ``data:`` JPEG that decodes (``links`` None) or a presigned link to one
    of ``links``, never inside a link; every link one of ``links``."""
    rendered = render(markdown)
    assert {tag for tag, _ in rendered.elements} <= SHEET_TAGS, rendered.html
    assert len(rendered.tags("h1")) == 1
    # Prefect's UI (3.9.1, checked in Chromium) renders no image inside a link: none may be
    assert not re.search(r"<a [^>]*>\s*<img", rendered.html)
    for attrs in rendered.tags("img"):
        src = attrs["src"] or ""
        if links is None:
            assert src.startswith("data:image/jpeg;base64,"), src[:80]
            thumb(base64.b64decode(src.split(",", 1)[1]))
        else:
            assert src.split("?", 1)[0] in links and "X-Amz-Signature=" in src, src
    for attrs in rendered.tags("a"):
        href = attrs["href"] or ""
        assert links is not None and href.split("?", 1)[0] in links, href
    return rendered


def thumb(data: bytes) -> Image.Image:
    """``data`` decoded: a JPEG thumbnail, a few KB, at most THUMB_EDGE px."""
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "JPEG" and max(image.size) <= THUMB_EDGE and len(data) < 16_000
    return image


class Writes:
    """Counts the store's writes of thumbnails (any backend: ``put_bytes`` under thumbs/)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.keys: list[str] = []
        original = ImageStore.put_bytes

        def counted(store: ImageStore, key: str, data: bytes, content_type: str) -> None:
            if "/thumbs/" in f"/{key}":
                self.keys.append(key)
            original(store, key, data, content_type)

        monkeypatch.setattr(ImageStore, "put_bytes", counted)


def test_batch_sheet_and_gallery_in_a_local_folder(
    prefect_env: Path, make_sandbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """batch_generate into a local folder, 5 rows on pages of 2: rows with hostile prompts, one
    invalid (an empty prompt), one refused by the gateway; every row on a page in order, each
    stored row's thumbnail embedded (a data: JPEG that decodes), the failures with their error;
    the gallery in the store lists every row; a rerun makes no thumbnail."""
    sandbox = make_sandbox(latency=0.0)
    monkeypatch.setenv("GPT_IMAGE_API_KEY", "sk-sheets")
    monkeypatch.setenv("GPT_IMAGE_BASE_URL", sandbox.base_url)
    monkeypatch.setattr(sheets, "SHEET_PAGE_ROWS", 2)
    writes = Writes(monkeypatch)
    root = tmp_path / "out"
    prompts = [f"kite {HOSTILE}", "a red kite", " ", "refused [sandbox:block]", f"{HOSTILE_ID} lake"]
    kwargs: dict[str, Any] = {
        "prompts": prompts,
        "options": ImageOptions(size="1024x1024", quality="low"),
        "storage": str(root),
        "return_state": True,
    }
    state = run(batch_generate(**kwargs))
    assert state.is_failed() and "2 of 5 rows failed" in (state.message or "")
    result: BatchResult = state.result(raise_on_failure=False)  # type: ignore[assignment]
    stored = [r for r in result.rows if r.status == "stored"]
    assert len(stored) == 3

    # thumbnails: one per stored image, made with it (from the bytes in hand), named in its manifest
    store = LocalImageStore(root)
    thumbs = sorted(p.name for p in (root / "thumbs").iterdir())
    assert thumbs == sorted(f"{r.images[0].sha256}.jpeg" for r in stored)
    assert sorted(writes.keys) == sorted(f"thumbs/{name}" for name in thumbs)
    for r in stored:
        manifest = read_manifest(store, r.images[0].sha256, "png")
        assert manifest is not None and manifest["thumbnail"] == f"thumbs/{r.images[0].sha256}.jpeg"
        thumb((root / manifest["thumbnail"]).read_bytes())

    pages = sheet_artifacts(state, "gpt-image-batch-sheet")
    assert len(pages) == 3
    seen: list[list[str]] = []
    for artifact in pages:
        rendered = check_page(artifact["data"], links=None)
        assert rendered.texts("h1") == ["gpt-image batch"]
        seen += sheet_rows(rendered)
    assert [int(cell(c[0])) for c in seen] == [1, 2, 3, 4, 5]
    by_row = {r.row: r for r in result.rows}
    for cells in seen:
        row = by_row[int(cell(cells[0]))]
        assert cell(cells[2]) == row.status
        if row.status == "stored":
            (img,) = re.findall(r'<img src="([^"]+)"', cells[3])
            shown = thumb(base64.b64decode(img.split(",", 1)[1]))
            assert shown.size == (256, 256)
            assert cell(cells[4]) == as_shown(row.prompt[:160])
        else:
            assert "<img" not in cells[3] and cell(cells[3]) == f"image: {row.status}"
            assert cell(cells[4]) == as_shown(f"{row.status}: {(row.error or '')[:300]}")
    assert "moderation_blocked" in cell(seen[3][4])

    # the gallery: every row, relative links to files that are there, the user's text as text
    gallery = root / "reports" / f"gallery-{state.state_details.flow_run_id}.html"
    assert f"the gallery: {gallery}" in render(pages[0]["data"]).text
    page = parse_gallery(gallery.read_text())
    assert list(page.sections) == [f"row-{n}" for n in range(1, 6)]
    # the status filter: a radio button per status present, each row's section classed by it
    radios = [a["id"] for t, a in page.elements if t == "input"]
    assert radios == ["f-all", "f-stored", "f-failed", "f-invalid"]
    classes = [a["class"] for t, a in page.elements if t == "section"]
    assert classes == [f"row {by_row[n].status}" for n in range(1, 6)]
    for tag, attrs in page.elements:
        for name in ("src", "href"):
            if tag in ("img", "a") and attrs.get(name):
                target = (gallery.parent / unquote(attrs[name] or "")).resolve()
                assert target.is_file() and target.is_relative_to(root), attrs
    records = [a["href"] for t, a in page.elements if t == "a" and "/cache/" in f"/{a['href']}"]
    assert len(records) == 3
    assert f"kite {HOSTILE}" in page.sections["row-1"] and HOSTILE_ID in page.sections["row-5"]
    assert by_row[4].error and by_row[4].error in page.sections["row-4"]
    assert "invalid" in page.sections["row-3"] and "prompt must not be empty" in page.sections["row-3"]

    # a rerun: the same sheet from the store, no thumbnail made or written again
    writes.keys.clear()
    again = run(batch_generate(**kwargs))
    assert again.is_failed()
    assert writes.keys == []
    assert sorted(p.name for p in (root / "thumbs").iterdir()) == thumbs
    rerun_pages = sheet_artifacts(again, "gpt-image-batch-sheet")
    assert sum(len(sheet_rows(check_page(a["data"], links=None))) for a in rerun_pages) == 5


def _s3_store(local_s3: Any, storage: str) -> S3ImageStore:
    bucket, _, prefix = storage.removeprefix("s3://").partition("/")
    return S3ImageStore(local_s3.client(), bucket, prefix)


def _fetch(url: str) -> bytes:
    answer = httpx.get(url, timeout=30)
    answer.raise_for_status()
    return answer.content


def test_batch_edit_sheet_and_gallery_in_s3(env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """batch_edit over an S3 manifest (ids and a prompt template with hostile text, a broken
    image): each row before → after (the source's thumbnail, made on demand from the input, then
    the edit's), the invalid row with its error; every image a presigned link that fetches a
    thumbnail from the S3 server, each opening its full image; the gallery in the bucket lists
    every row, its links presigned and fetching; a rerun writes no thumbnail."""
    _, local_s3, storage = env
    writes = Writes(monkeypatch)
    bucket = storage.removeprefix("s3://").split("/")[0]
    client = local_s3.client()
    rows = []
    for i in range(3):
        client.put_object(Bucket=bucket, Key=f"photos/p{i}.png", Body=png_bytes((96, 64), (i * 80, 90, 160)))
        rows.append({"id": f"{HOSTILE_ID} {i}", "image": f"s3://{bucket}/photos/p{i}.png", "what": HOSTILE})
    client.put_object(Bucket=bucket, Key="photos/broken.png", Body=b"not an image")
    rows.append({"id": "broken", "image": f"s3://{bucket}/photos/broken.png", "what": "x"})
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    client.put_object(Bucket=bucket, Key="manifests/edits.jsonl", Body=body)
    kwargs: dict[str, Any] = {
        "images": f"s3://{bucket}/manifests/edits.jsonl",
        "prompt": "{what} on a white studio",
        "region": MaskRegion(left=0, top=0, right=0.5, bottom=0.5),
        "storage": storage,
        "return_state": True,
    }
    state = run(batch_edit(**kwargs))
    assert state.is_failed() and "1 of 4 rows failed" in (state.message or "")
    result: ChainResult = state.result(raise_on_failure=False)  # type: ignore[assignment]
    store = _s3_store(local_s3, storage)
    edits = [s.images[0] for s in result.steps if s.images]
    sources = [e.parents[0] for e in edits]
    thumb_keys = {f"flows/thumbs/{sha}.jpeg" for sha in [e.sha256 for e in edits] + sources}
    endpoint = local_s3.endpoint_url.rstrip("/")
    gallery_key = f"flows/reports/gallery-{state.state_details.flow_run_id}.html"
    links = {f"{endpoint}/{bucket}/{key}" for key in [*thumb_keys, gallery_key]} | {
        f"{endpoint}/{bucket}/flows/images/{e.sha256}.png" for e in edits
    }

    (page,) = sheet_artifacts(state, "gpt-image-batch-edit-sheet")
    rendered = check_page(page["data"], links=links)
    shown = sheet_rows(rendered)
    assert [int(cell(c[0])) for c in shown] == [1, 2, 3, 4]
    assert [cell(c[1]) for c in shown] == [as_shown(r["id"]) for r in rows]
    for cells, edit in zip(shown[:3], edits, strict=True):
        before, after = re.findall(r'<img src="([^"]+)" alt="([^"]*)"', cells[3])
        assert (before[1], after[1]) == ("source", "edit")
        assert [unescape(s).split("?", 1)[0].rsplit("/", 1)[1] for s in (before[0], after[0])] == [
            f"{edit.parents[0]}.jpeg",
            f"{edit.sha256}.jpeg",
        ]
        for src, _ in (before, after):
            thumb(_fetch(unescape(src)))
        (full,) = re.findall(r'<a href="([^"]+)"', cells[3])
        assert Image.open(io.BytesIO(_fetch(unescape(full)))).size == (edit.width, edit.height)
        assert cell(cells[4]) == as_shown(f"{HOSTILE} on a white studio"[:160])
    assert cell(shown[3][2]) == "invalid" and "not a PNG, JPEG or WebP image" in cell(shown[3][4])
    assert sorted(writes.keys) == sorted(thumb_keys)

    # the gallery in the bucket, its link in the sheet (presigned); its own links presigned
    (gallery_link,) = [a["href"] for a in render(page["data"]).tags("a") if "gallery-" in (a["href"] or "")]
    html = _fetch(gallery_link or "").decode()
    assert html == store.read_bytes(gallery_key).decode()
    parsed = parse_gallery(html)
    assert list(parsed.sections) == [f"row-{n}" for n in range(1, 5)]
    for n, row in enumerate(rows, start=1):
        assert row["id"] in parsed.sections[f"row-{n}"]
    for tag, attrs in parsed.elements:
        url = attrs.get("src") if tag == "img" else attrs.get("href") if tag == "a" else None
        if url:
            assert "X-Amz-Signature=" in url
            _fetch(url)
    assert sum(1 for t, a in parsed.elements if t == "a" and "/cache/" in (a.get("href") or "")) == 3

    writes.keys.clear()
    again = run(batch_edit(**kwargs))
    assert again.is_failed() and writes.keys == []
    (rerun,) = sheet_artifacts(again, "gpt-image-batch-edit-sheet")
    links.add(f"{endpoint}/{bucket}/flows/reports/gallery-{again.state_details.flow_run_id}.html")
    assert len(sheet_rows(check_page(rerun["data"], links=links))) == 4


def test_chain_sheets_show_every_step(
    prefect_env: Path, make_sandbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """batch_pipeline (generate → edit) into a local folder: each row's every step, in order;
    image_pipeline's run has a sheet of its one row."""
    sandbox = make_sandbox(latency=0.0)
    monkeypatch.setenv("GPT_IMAGE_API_KEY", "sk-sheets")
    monkeypatch.setenv("GPT_IMAGE_BASE_URL", sandbox.base_url)
    root = tmp_path / "out"
    manifest = tmp_path / "rows.csv"
    manifest.write_text("id,thing\nr1,a kite\nr2,a boat\n")
    monkeypatch.setenv("GPT_IMAGE_INPUT_ROOTS", str(tmp_path))
    state = run(
        batch_pipeline(
            manifest=str(manifest),
            steps=[
                GenerateStep(prompt="{thing}"),
                EditStep(prompt="add a rainbow", region=MaskRegion(left=0, top=0, right=1, bottom=0.3)),
            ],
            options=ImageOptions(size="1024x1024", quality="low"),
            storage=str(root),
            return_state=True,
        )
    )
    assert state.is_completed(), state.message
    result: ChainResult = state.result()  # type: ignore[assignment]
    (page,) = sheet_artifacts(state, "gpt-image-batch-pipeline-sheet")
    shown = sheet_rows(check_page(page["data"], links=None))
    assert [cell(c[1]) for c in shown] == ["r1", "r2"]
    steps = result.rows()
    for cells, number in zip(shown, (1, 2), strict=True):
        alts = re.findall(r'alt="([^"]*)"', cells[3])
        assert alts == ["generate", "edit"]
        srcs = [base64.b64decode(s.split(",", 1)[1]) for s in re.findall(r'src="([^"]+)"', cells[3])]
        expected = [(root / "thumbs" / f"{s.images[0].sha256}.jpeg").read_bytes() for s in steps[number]]
        assert srcs == expected

    # image_pipeline whose edit the gateway refuses: its one row, the generated image, the failed
    # edit in its place and the error
    one = run(
        image_pipeline(
            "a lighthouse",
            options=ImageOptions(size="1024x1024", quality="low"),
            edit=EditStep(prompt="[sandbox:block]", region=MaskRegion(left=0, top=0, right=1, bottom=0.3)),
            storage=str(root),
            return_state=True,
        )
    )
    assert one.is_failed()
    (single,) = sheet_artifacts(one, "gpt-image-pipeline-sheet")
    ((number, _, status, pictures, note),) = sheet_rows(check_page(single["data"], links=None))
    assert (cell(number), cell(status)) == ("1", "failed")
    assert re.findall(r'alt="([^"]*)"', pictures) == ["generate"] and cell(pictures).endswith("edit: failed")
    assert cell(note).startswith("failed: edit: ") and "moderation_blocked" in cell(note)


def test_a_new_image_gets_its_thumbnail_as_it_is_stored(
    prefect_env: Path, make_sandbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image call alone (no sheet, no flow) leaves its image's thumbnail beside it, made from
    the bytes in hand as the image is stored, and named in its manifest."""
    from prefect_gpt_image.tasks import generate_image

    sandbox = make_sandbox(latency=0.0)
    monkeypatch.setenv("GPT_IMAGE_API_KEY", "sk-sheets")
    monkeypatch.setenv("GPT_IMAGE_BASE_URL", sandbox.base_url)
    root = tmp_path / "out"
    (ref,) = generate_image("a kite", size="1536x1024", quality="low", storage=str(root))
    image = thumb((root / "thumbs" / f"{ref.sha256}.jpeg").read_bytes())
    assert image.size == (256, 171)  # 1536x1024 reduced by 6 (rounded up)
    manifest = read_manifest(LocalImageStore(root), ref.sha256, ref.format)
    assert manifest is not None and manifest["thumbnail"] == f"thumbs/{ref.sha256}.jpeg"


def test_thumbnails_stop_after_the_runs_first_rows(
    prefect_env: Path, make_sandbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch longer than THUMBNAILS_PER_RUN (2 here; 1,000 by default): the first rows' images
    get thumbnails (as they are stored), later rows' none (their full image is one link away,
    and in the gallery); every row is still on the sheet and in the gallery."""
    from prefect_gpt_image.calls import thumbs

    sandbox = make_sandbox(latency=0.0)
    monkeypatch.setenv("GPT_IMAGE_API_KEY", "sk-sheets")
    monkeypatch.setenv("GPT_IMAGE_BASE_URL", sandbox.base_url)
    monkeypatch.setattr(thumbs, "THUMBNAILS_PER_RUN", 2)
    root = tmp_path / "out"
    state = run(
        batch_generate(
            prompts=[f"kite {i}" for i in range(1, 5)],
            options=ImageOptions(size="1024x1024", quality="low"),
            max_parallel=1,  # rows stored in order
            storage=str(root),
            return_state=True,
        )
    )
    assert state.is_completed(), state.message
    result: BatchResult = state.result()  # type: ignore[assignment]
    shas = [r.images[0].sha256 for r in result.rows]
    assert sorted(p.name for p in (root / "thumbs").iterdir()) == sorted(f"{sha}.jpeg" for sha in shas[:2])
    store = LocalImageStore(root)
    assert [(read_manifest(store, sha, "png") or {}).get("thumbnail") for sha in shas] == [
        f"thumbs/{shas[0]}.jpeg",
        f"thumbs/{shas[1]}.jpeg",
        None,
        None,
    ]
    (page,) = sheet_artifacts(state, "gpt-image-batch-sheet")
    shown = sheet_rows(check_page(page["data"], links=None))
    assert [cell(c[0]) for c in shown] == ["1", "2", "3", "4"]
    assert ["<img" in c[3] for c in shown] == [True, True, False, False]
    assert cell(shown[3][3]) == "image (no preview)"
    gallery = root / "reports" / f"gallery-{state.state_details.flow_run_id}.html"
    images = [a["src"] for t, a in parse_gallery(gallery.read_text()).elements if t == "img"]
    assert images == [f"../thumbs/{shas[0]}.jpeg", f"../thumbs/{shas[1]}.jpeg"] + [
        f"../images/{sha}.png" for sha in shas[2:]
    ]


def test_a_batch_rows_thumbnail_is_made_in_the_background_and_the_sheet_waits_for_it(
    prefect_env: Path, make_sandbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch row does not wait for its thumbnail (decoding the image is most of a row's CPU):
    every row is done while no thumbnail could be made yet; the contact sheet then waits for
    them, shows each, and none is made twice."""
    from prefect_gpt_image.calls import thumbs

    sandbox = make_sandbox(latency=0.0)
    monkeypatch.setenv("GPT_IMAGE_API_KEY", "sk-sheets")
    monkeypatch.setenv("GPT_IMAGE_BASE_URL", sandbox.base_url)
    made: list[int] = []
    rows_done = threading.Event()
    real = thumbs.make_thumbnail

    def held(data: bytes | Path) -> bytes:
        rows_done.wait(timeout=60)  # no thumbnail before every row is done
        made.append(len(made))
        return real(data)

    def watcher(report: ProgressReport) -> None:
        if report.done == report.total and not made:
            rows_done.set()

    monkeypatch.setattr(thumbs, "make_thumbnail", held)
    root = tmp_path / "out"
    with watch_progress(watcher):
        state = run(
            batch_generate(
                prompts=[f"kite {i}" for i in range(1, 7)],
                options=ImageOptions(size="1024x1024", quality="low"),
                storage=str(root),
                return_state=True,
            )
        )
    assert state.is_completed(), state.message
    assert rows_done.is_set()  # the rows ended while their thumbnails were held back
    result: BatchResult = state.result()  # type: ignore[assignment]
    shas = sorted(r.images[0].sha256 for r in result.rows)
    assert sorted(p.name for p in (root / "thumbs").iterdir()) == [f"{sha}.jpeg" for sha in shas]
    assert len(made) == 6  # each made once: the sheet found them all
    (page,) = sheet_artifacts(state, "gpt-image-batch-sheet")
    shown = sheet_rows(check_page(page["data"], links=None))
    assert ["<img" in c[3] for c in shown] == [True] * 6
