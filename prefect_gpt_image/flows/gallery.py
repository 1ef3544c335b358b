"""The gallery of a run: one static HTML page of every row (before → after, a filter by status
in plain CSS, links to the full images and to each call's record), written to the store beside
the run's CSV report, ``{prefix}/reports/gallery-{flow_run_id}.html``.

It works where the store is: from a local folder its links are relative (open the file in a
browser); from S3 they are presigned (valid the store's ``presign_ttl``, at most 7 days) or under
``public_base_url``. Every string is HTML-escaped; the page runs no script (a
Content-Security-Policy forbids any) and loads images only from where its links say.
"""

from __future__ import annotations

import posixpath
from concurrent.futures import ThreadPoolExecutor
from html import escape
from typing import Any

from prefect_gpt_image.calls import CACHE_KEY_METADATA, record_key, thumbnail_key
from prefect_gpt_image.storage import ImageStore, LocalImageStore

from .batch_report import REPORT_FOLDER, flow_run_id
from .sheet_rows import Frame, SheetRow, Thumbs

__all__ = ["RECORD_LOOKUPS", "gallery_html", "gallery_key", "gallery_link", "write_gallery"]

RECORD_LOOKUPS = 1000
"""Images of an S3 store whose call's record the gallery links (one HEAD each, to read the
image's ``cache-key`` metadata); a larger run's gallery names the metadata instead. A local
store's are all linked (a small file read each)."""
_STATUSES = ("stored", "failed", "invalid", "skipped")

_STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
.filters label{margin-right:1em;cursor:pointer}
.row{border-top:1px solid #ddd;padding:.6em 0}
.row h2{font-size:15px;margin:.2em 0}
.frames{display:flex;flex-wrap:wrap;align-items:center;gap:.5em}
figure{margin:0;text-align:center;max-width:260px}
figure img{max-width:256px;max-height:256px;border:1px solid #ccc}
figcaption{font-size:12px;color:#555;word-break:break-word}
.arrow{font-size:20px;color:#888}
.failed h2,.invalid h2,.skipped h2,.error{color:#b00020}
.missing{display:inline-block;width:120px;padding:2em .5em;border:1px dashed #b00020;color:#b00020}
""" + "".join(f"#f-{s}:checked~main .row:not(.{s}){{display:none}}\n" for s in _STATUSES)


def write_gallery(
    shown: list[SheetRow], thumbs: Thumbs, *, title: str, at: str | None = None, logger: Any = None
) -> str:
    """Write the gallery of ``shown`` (thumbnails made) to the store; where a person opens it:
    the file's path for a local store, else its link (presigned or public). ``at``: its key
    (default: :func:`gallery_key`). Blocking."""
    store = thumbs.store
    key = at or gallery_key(store)
    page = gallery_html(shown, thumbs, title=title, at=key)
    store.put_bytes(key, page.encode(), "text/html; charset=utf-8")
    return gallery_link(store, key)


def gallery_link(store: ImageStore, key: str) -> str:
    """Where a person opens the gallery at ``key``: the file's path for a local store, else its
    link (presigned or public). Known before the gallery is written."""
    return store.uri_for(key) if isinstance(store, LocalImageStore) else store.link_for(key)


def gallery_key(store: ImageStore) -> str:
    """The key of this flow run's gallery: ``{prefix}/reports/gallery-{flow_run_id}.html``."""
    return store.key(REPORT_FOLDER, f"gallery-{flow_run_id()}.html")


def gallery_html(shown: list[SheetRow], thumbs: Thumbs, *, title: str, at: str) -> str:
    """The gallery page of ``shown`` to be stored at the key ``at`` (a local store's links are
    relative to it)."""
    links = _Links(thumbs, at)
    records = _records(thumbs.store, shown)
    counts = {s: sum(r.status == s for r in shown) for s in _STATUSES}
    filters = [
        f'<input type="radio" name="f" id="f-all" checked><label for="f-all">all ({len(shown)})</label>'
    ]
    for status in _STATUSES:
        if counts[status]:
            filters.append(
                f'<input type="radio" name="f" id="f-{status}"><label for="f-{status}">'
                f"{status} ({counts[status]})</label>"
            )
    body = [_row(row, links, records) for row in shown]
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
            "img-src * data:; style-src 'unsafe-inline'\">",
            '<meta name="referrer" content="no-referrer">',
            f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>",
            f"<h1>{escape(title)}</h1>",
            f"<p>{len(shown)} rows: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + "</p>",
            '<div class="filters">',
            *filters,
            "<main>",
            *body,
            "</main></div></body></html>",
            "",
        ]
    )


class _Links:
    """Where the gallery's links point: relative paths for a local store, else the store's links."""

    def __init__(self, thumbs: Thumbs, at: str) -> None:
        self.thumbs, self.store, self.folder = thumbs, thumbs.store, posixpath.dirname(at)
        self.local = isinstance(self.store, LocalImageStore)

    def to(self, key: str) -> str | None:
        if self.local:
            return posixpath.relpath(key, self.folder)
        try:
            return self.store.link_for(key)
        except Exception:
            return None

    def thumb(self, frame: Frame) -> str | None:
        sha = frame.sha256
        if sha is None or sha not in self.thumbs.present:
            return None
        return self.to(thumbnail_key(self.store, sha)) if self.local else self.thumbs.src(frame)

    def image(self, frame: Frame) -> str | None:
        if frame.ref is None:
            return None
        if self.local:
            return self.to(self.store.image_key(frame.ref.sha256, frame.ref.format))
        return frame.ref.link or self.to(self.store.image_key(frame.ref.sha256, frame.ref.format))


def _records(store: ImageStore, shown: list[SheetRow]) -> dict[str, str]:
    """The cache key of each shown image's call, by sha256 (from the image's metadata)."""
    refs = {f.ref.sha256: f.ref for row in shown for f in row.frames if f.ref is not None}
    if not isinstance(store, LocalImageStore) and len(refs) > RECORD_LOOKUPS:
        return {}

    def lookup(sha: str) -> tuple[str, str | None]:
        ref = refs[sha]
        try:
            metadata = store.metadata(store.image_key(sha, ref.format)) or {}
        except Exception:
            return sha, None
        return sha, metadata.get(CACHE_KEY_METADATA)

    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="gpt-image-gallery") as pool:
        return {sha: key for sha, key in pool.map(lookup, refs) if key}


def _row(row: SheetRow, links: _Links, records: dict[str, str]) -> str:
    status = row.status if row.status in _STATUSES else "failed"
    head = f"row {row.row}" + (f" · {row.id}" if row.id else "") + f" · {row.status}"
    figures = '<span class="arrow">→</span>'.join(_figure(f, links, records) for f in row.frames)
    parts = [
        f'<section class="row {status}" id="row-{row.row}">',
        f"<h2>{escape(head)}</h2>",
        f'<p class="prompt">{escape(row.prompt)}</p>' if row.prompt else "",
        f'<div class="frames">{figures}</div>',
    ]
    if row.error:
        parts.append(f'<p class="error">{escape(row.error)}</p>')
    parts.append("</section>")
    return "".join(parts)


def _figure(frame: Frame, links: _Links, records: dict[str, str]) -> str:
    label = escape(frame.label)
    if frame.note is not None:
        return f'<figure><span class="missing">{label}: {escape(frame.note)}</span></figure>'
    thumb, image = links.thumb(frame), links.image(frame)
    shown = thumb or image  # a row past the sheet's thumbnails: its full image, loaded when scrolled to
    picture = f'<img src="{escape(shown)}" alt="{label}" loading="lazy">' if shown else label
    if image:
        picture = f'<a href="{escape(image)}">{picture}</a>'
    caption = [label]
    if frame.ref is not None:
        ref = frame.ref
        caption.append(escape(f"{ref.width}x{ref.height} {ref.format}, request id {ref.request_id or '-'}"))
        if image:
            caption.append(f'<a href="{escape(image)}">full image</a>')
        record = records.get(ref.sha256)
        if record is not None:
            link = links.to(record_key(links.store, record))
            caption.append(f'<a href="{escape(link)}">record</a>' if link else "")
        elif not links.local:
            caption.append(escape(f"record: see the image's {CACHE_KEY_METADATA} metadata"))
    elif frame.source is not None:
        caption.append(escape(frame.source))
    title = f' title="{escape(frame.prompt)}"' if frame.prompt else ""
    return f"<figure{title}>{picture}<figcaption>{'<br>'.join(c for c in caption if c)}</figcaption></figure>"
