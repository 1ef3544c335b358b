"""Contact sheets: what a batch or pipeline run made, as pages of thumbnails a person can look
over in the Prefect UI, every row with its number and id, before → after for edits and chains,
failed and invalid rows with their error; and :func:`publish_sheets`, which publishes them (one
markdown artifact per page) with the run's gallery (:mod:`.gallery`).

Every string a user or the gateway controls (prompts, ids, step names, errors, URIs) is escaped
with :func:`~prefect_gpt_image.calls.md_text`; the images are built by
:func:`~prefect_gpt_image.calls.md_image` alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from prefect.artifacts import acreate_markdown_artifact

from prefect_gpt_image.api.inputpolicy import InputPolicy
from prefect_gpt_image.calls import md_image, md_link, md_text
from prefect_gpt_image.storage import ImageStore, LocalImageStore

from .gallery import gallery_key, gallery_link, write_gallery
from .sheet_rows import Frame, SheetRow, SheetRows, Thumbs, sheet_rows

__all__ = ["SHEET_PAGE_ROWS", "contact_sheet", "publish_sheets", "sheet_pages", "sheet_publisher"]

SHEET_PAGE_ROWS = 100
"""Rows per page of a contact sheet (a page of 100 thumbnails of a few KB each loads at once)."""
_ERROR_CHARS = 300
_PROMPT_CHARS = 160
_PUBLISH_AT_ONCE = 8


def contact_sheet(
    rows: SheetRows,
    store: ImageStore,
    *,
    title: str,
    page_rows: int = SHEET_PAGE_ROWS,
    gallery: str | None = None,
    policy: InputPolicy | None = None,
    logger: Any = None,
) -> list[str]:
    """The contact sheet of ``rows`` as markdown pages of ``page_rows`` rows each (every row, in
    row order): a table of row number, id, status, the row's thumbnails (before → after: an
    edit's input, then every step's images; a step that made none says why) and its prompt or
    error. Thumbnails missing from ``store`` are made first (once: see
    :func:`~prefect_gpt_image.calls.thumbs.ensure_thumbnails`); a local store's are embedded as
    ``data:`` URIs, an S3 store's linked (each followed by a link to its full image). ``gallery``: a link to
    the run's gallery, named on every page. ``policy``: what may be read to show an edit's input
    that is outside the store (unset: shown by name). Blocking (reads and writes the store): from
    async code run it with ``asyncio.to_thread``."""
    if page_rows < 1:
        raise ValueError(f"page_rows must be at least 1, got {page_rows}")
    shown = sheet_rows(rows)
    thumbs = Thumbs(store, shown, _logger(logger), policy)
    return sheet_pages(shown, thumbs, title=title, page_rows=page_rows, gallery=gallery)


def sheet_pages(
    shown: list[SheetRow], thumbs: Thumbs, *, title: str, page_rows: int, gallery: str | None
) -> list[str]:
    """:func:`contact_sheet`'s pages of rows whose thumbnails are made."""
    store = thumbs.store
    pages = [shown[i : i + page_rows] for i in range(0, len(shown), page_rows)] or [[]]
    counts = _counts(shown)
    out: list[str] = []
    for number, page in enumerate(pages, start=1):
        first, last = (page[0].row, page[-1].row) if page else (0, 0)
        lines = [
            f"# {md_text(title)}",
            "",
            f"Contact sheet, page {number} of {len(pages)}: "
            f"rows {first} to {last} of {len(shown)} ({counts})",
            "",
        ]
        if gallery is not None:
            lines += [_gallery_line(gallery, store), ""]
        lines += ["| row | id | status | before → after | prompt / error |", "|---|---|---|---|---|"]
        lines += [_line(row, thumbs, store) for row in page]
        out.append("\n".join(lines) + "\n")
    return out


def _counts(rows: list[SheetRow]) -> str:
    tally: dict[str, int] = {}
    for row in rows:
        tally[row.status] = tally.get(row.status, 0) + 1
    return ", ".join(f"{count} {status}" for status, count in sorted(tally.items())) or "no rows"


def _gallery_line(gallery: str, store: ImageStore) -> str:
    if isinstance(store, LocalImageStore):  # a file:// link does not open from the UI: name it
        return md_text(f"Every row, before and after, in the gallery: {gallery}")
    return f"Every row, before and after: {md_link('the gallery', gallery)}"


def _line(row: SheetRow, thumbs: Thumbs, store: ImageStore) -> str:
    pictures = " → ".join(_picture(frame, thumbs) for frame in row.frames) or md_text("(no image)")
    if row.error:
        note = md_text(f"{row.status}: {row.error[:_ERROR_CHARS]}")
    else:
        note = md_text(row.prompt[:_PROMPT_CHARS])
    status = f"**{md_text(row.status)}**" if row.status != "stored" else md_text(row.status)
    return f"| {row.row} | {md_text(row.id or '')} | {status} | {pictures} | {note} |"


def _picture(frame: Frame, thumbs: Thumbs) -> str:
    """A frame's thumbnail and, where the browser can open it (S3), a link to its full image.
    Not a linked image (``[![...](...)](...)``): the Prefect UI renders no image inside a link."""
    if frame.note is not None:
        return md_text(f"{frame.label}: {frame.note}")
    src = thumbs.src(frame)
    link = frame.ref.link if frame.ref is not None else None
    if link is not None and not link.startswith(("https://", "http://")):
        link = None  # a file:// link does not open from the UI
    full = f" {md_link('full', link)}" if link else ""
    if src is None:
        return md_text(f"{frame.label} (no preview)") + full
    return md_image(frame.label, src) + full


def _logger(logger: Any) -> Any:
    if logger is not None:
        return logger
    import logging

    return logging.getLogger("prefect_gpt_image.sheets")


def sheet_publisher(
    store: ImageStore, policy: InputPolicy | None, logger: Any
) -> Callable[[SheetRows, str, str], Awaitable[str | None]]:
    """:func:`publish_sheets` for ``store``, as the chain flows take it (rows, key, title): they
    cannot import this module, which builds on their results."""

    async def publish(rows: SheetRows, key: str, title: str) -> str | None:
        return await publish_sheets(rows, store, key=key, title=title, logger=logger, policy=policy)

    return publish


async def publish_sheets(
    rows: SheetRows,
    store: ImageStore,
    *,
    key: str,
    title: str,
    logger: Any,
    policy: InputPolicy | None = None,
    page_rows: int | None = None,
) -> str | None:
    """Publish the run's contact sheet and gallery: the gallery written to the store (beside the
    run's report, see :func:`~.gallery.write_gallery`) while the pages are made, then one markdown
    artifact per page, the first under ``key`` (the others on the run only, named "page k of n").
    The pages name the gallery only once it is written. The gallery's link (None when writing it
    failed). Best effort: a failure is a warning, the run goes on."""
    gallery: str | None = None
    try:
        shown = sheet_rows(rows)
        thumbs = await asyncio.to_thread(Thumbs, store, shown, logger, policy)
    except Exception as exc:
        logger.warning("Making the contact sheet's thumbnails failed: %s", exc)
        return None
    where = gallery_key(store)

    async def write() -> str | None:
        try:
            return await asyncio.to_thread(write_gallery, shown, thumbs, title=title, at=where, logger=logger)
        except Exception as exc:
            logger.warning("Writing the run's gallery failed: %s", exc)
            return None

    def make_pages(gallery: str | None) -> list[str]:
        return sheet_pages(
            shown, thumbs, title=title, page_rows=page_rows or SHEET_PAGE_ROWS, gallery=gallery
        )

    try:
        # The gallery is written while the pages are made (the run's end waits for the longer of
        # the two): its link is known before it is written.
        try:
            link: str | None = gallery_link(store, where)
        except Exception:  # writing it fails too, and says why
            link = None
        gallery, pages = await asyncio.gather(write(), asyncio.to_thread(make_pages, link))
        if (gallery is None) != (link is None):  # the pages name the gallery only if it is there
            pages = await asyncio.to_thread(make_pages, gallery)
        gate = asyncio.Semaphore(_PUBLISH_AT_ONCE)

        async def publish(number: int, page: str) -> None:
            async with gate:
                await acreate_markdown_artifact(
                    markdown=page,
                    key=key if number == 1 else None,
                    description=md_text(f"{title}: contact sheet, page {number} of {len(pages)}"),
                )

        await asyncio.gather(*(publish(n, page) for n, page in enumerate(pages, start=1)))
    except Exception as exc:
        logger.warning("Publishing the contact sheet failed: %s", exc)
        return gallery
    logger.info(
        "Contact sheet: %d page(s) of %d row(s) (artifact %r); gallery: %s",
        len(pages),
        len(shown),
        key,
        store.uri_for(where) if gallery else "not written",
    )
    return gallery
