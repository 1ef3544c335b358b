"""A chain's artifacts: the row x step table and the first rows' chains as markdown (every string
escaped: the UI renders it)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact

from prefect_gpt_image.calls import (
    md_image,
    md_link,
    md_table,
    md_text,
    usd,
)

from .steps import ChainResult

SheetPublisher = Callable[[ChainResult, str, str], Awaitable[Any]]
"""Publishes a run's contact sheet and gallery (result, artifact key, title); given by the flows,
which build on both this package and the sheets (:func:`~..sheets.sheet_publisher`)."""

__all__ = ["chain_markdown", "publish_chain_markdown", "publish_chain_table"]


_PREVIEW_ROWS = 3


async def publish_chain_table(result: ChainResult, *, key: str, description: str) -> None:
    """Every row x step as a table artifact: source, output link, request id, whether it was
    served from the store, what this run paid for it (cost) against the price model's estimate,
    status, error (every string cell escaped: the UI renders it as markdown)."""
    table = []
    for s in result.steps:
        first = s.images[0] if s.images else None
        table.append(
            {
                "row": s.row,
                "id": s.id or "",
                "step": s.step,
                "status": s.status,
                "source": s.source,
                "image": md_link(first.uri, first.link) if first else "",
                "request_id": s.request_id or "",
                "served": s.served,
                "cost": round(s.cost, 4),
                "estimate": round(s.estimate, 4),
                "maybe_billed": ", ".join(s.maybe_billed),
                "error": (s.error or "")[:300],
                "review": s.review[-1].summary() if s.review else "",
            }
        )
    await acreate_table_artifact(table=md_table(table), key=key, description=description)


def chain_markdown(result: ChainResult, *, title: str, rows: int = _PREVIEW_ROWS) -> str:
    """The run's bill (paid, served, estimate), then the first ``rows`` rows' chains with their
    images, step by step; every string of a row
    (id, step name, prompt, error, URIs, request id) escaped, the image built by ``md_image``."""
    lines = [f"# {md_text(title)}", "", md_text(result.bill().with_estimate()), ""]
    grouped = list(result.rows().items())
    for number, steps in grouped[:rows]:
        if len(grouped) > 1:
            lines += [f"## row {number}" + (f" ({md_text(steps[0].id)})" if steps[0].id else ""), ""]
        heading = "###" if len(grouped) > 1 else "##"
        for index, s in enumerate(steps, start=1):
            lines += [f"{heading} {index}. {md_text(s.step)}", "", f"> {md_text(s.prompt)}", ""]
            if not s.images:
                lines += [md_text(f"{s.status}: {s.error or ''}"), ""]
                continue
            ref = s.images[0]
            parents = ", ".join(p[:16] for p in ref.parents)
            lines += [
                md_image(s.step, ref.link) if ref.link else md_text(ref.uri),
                "",
                md_text(
                    f"{ref.width}x{ref.height} {ref.format}, sha256 {ref.sha256[:16]}, "
                    f"request id {ref.request_id or '-'}, "
                    + (
                        f"served from the store (cost {usd(ref.cost)} when made)"
                        if s.served
                        else f"paid {usd(s.cost)}"
                    )
                ),
                "",
                md_text(f"stored at {ref.uri}" + (f"; made from {parents}" if ref.parents else "")),
                "",
            ]
    if len(grouped) > rows:
        lines.append(f"... and {len(grouped) - rows} more rows (see the table artifact)")
    return "\n".join(lines)


async def publish_chain_markdown(
    result: ChainResult,
    *,
    key: str,
    title: str,
    description: str,
    publish_sheet: SheetPublisher | None = None,
    sheet_key: str | None = None,
) -> None:
    """:func:`chain_markdown` as a markdown artifact; with ``publish_sheet`` (given by the flow:
    :func:`~..sheets.sheet_publisher`), the run's contact sheet first (``sheet_key``, default
    ``key-sheet``; its pages link the run's gallery)."""
    if publish_sheet is not None:
        await publish_sheet(result, sheet_key or f"{key}-sheet", title)
    markdown = chain_markdown(result, title=title)
    await acreate_markdown_artifact(markdown=markdown, key=key, description=description)
