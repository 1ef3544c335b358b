"""What a contact sheet and a gallery show of a run, whatever made it: each row as a
:class:`SheetRow` of :class:`Frame` s (before → after: an edit's input, then every step's
images), from a batch's :class:`RowResult` s or a chain's :class:`StepResult` s; and where each
frame's thumbnail is (:class:`Thumbs`: made on demand when missing, a ``data:`` URI for a local
store, a link for S3)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect_gpt_image.api.inputpolicy import InputPolicy
from prefect_gpt_image.calls import (
    data_uri,
    ensure_thumbnails,
    read_input,
    run_cache,
    thumbnail_key,
    thumbnails_per_run,
)
from prefect_gpt_image.storage import ImageStore, LocalImageStore
from prefect_gpt_image.tasks import ImageRef

from .batch_report import BatchResult, RowResult
from .chain.steps import ChainResult, StepResult

__all__ = ["Frame", "SheetRow", "SheetRows", "Thumbs", "sheet_rows"]

SheetRows = BatchResult | ChainResult | Sequence[RowResult] | Sequence[StepResult]
"""What a contact sheet or a gallery takes: a batch's rows or a chain's steps."""


@dataclass(frozen=True)
class Frame:
    """One picture of a row: a stored image (``ref``), an input outside the results (``source``,
    a URI, with its sha256 when known), or a step that made none (``note``: why)."""

    label: str
    ref: ImageRef | None = None
    source: str | None = None
    source_sha: str | None = None
    prompt: str = ""
    note: str | None = None

    @property
    def sha256(self) -> str | None:
        """The sha256 of the image shown, if any."""
        return self.ref.sha256 if self.ref is not None else self.source_sha


@dataclass(frozen=True)
class SheetRow:
    """One row of a run: its number, id, status, prompt, error and pictures in order."""

    row: int
    id: str | None
    status: str
    prompt: str
    error: str | None
    frames: list[Frame] = field(default_factory=list)


def sheet_rows(rows: SheetRows) -> list[SheetRow]:
    """Every row of ``rows`` (a batch's or a chain's), in row order."""
    if isinstance(rows, BatchResult):
        items: Sequence[RowResult | StepResult] = rows.rows
    elif isinstance(rows, ChainResult):
        items = rows.steps
    else:
        items = rows
    out: list[SheetRow] = []
    steps: dict[int, list[StepResult]] = {}
    for item in items:
        if isinstance(item, RowResult):
            out.append(_batch_row(item))
        else:
            if item.row not in steps:
                steps[item.row] = []
                out.append(SheetRow(item.row, item.id, "", "", None))  # a place, filled below
            steps[item.row].append(item)
    return [_chain_row(steps[r.row]) if r.row in steps and not r.status else r for r in out]


def _batch_row(r: RowResult) -> SheetRow:
    many = len(r.images) > 1
    frames = [
        Frame(label=f"image {i}" if many else "image", ref=ref, prompt=r.prompt)
        for i, ref in enumerate(r.images, start=1)
    ]
    if r.status != "stored":
        frames.append(Frame(label="image", note=r.status, prompt=r.prompt))
    return SheetRow(r.row, r.id, r.status, r.prompt, r.error, frames)


def _chain_row(steps: list[StepResult]) -> SheetRow:
    first = steps[0]
    frames: list[Frame] = []
    if first.source and not first.source.startswith("step "):
        made = first.images[0] if first.images else None
        sha = made.parents[0] if made is not None and made.parents else None
        frames.append(Frame(label="source", source=first.source, source_sha=sha))
    for s in steps:
        many = len(s.images) > 1
        frames += [
            Frame(label=f"{s.step} {i}" if many else s.step, ref=ref, prompt=s.prompt)
            for i, ref in enumerate(s.images, start=1)
        ]
        if s.status != "stored":
            frames.append(Frame(label=s.step, note=s.status, prompt=s.prompt))
    statuses = {s.status for s in steps}
    status = next((st for st in ("invalid", "failed", "dropped", "skipped") if st in statuses), "stored")
    wrong = next((s for s in steps if s.status in ("invalid", "failed")), None)
    error = f"{wrong.step}: {wrong.error or wrong.status}" if wrong is not None else None
    prompt = next((s.prompt for s in reversed(steps) if s.prompt), "")
    return SheetRow(first.row, first.id, status, prompt, error, frames)


class Thumbs:
    """The thumbnails of a run's frames: made once each (the folder listed once; only the
    missing ones made), then shown as a ``data:`` URI (a local store: the Prefect UI does not
    load ``file://``) or a link (S3: presigned, or under ``public_base_url``). Blocking: run it
    in a thread from async code."""

    def __init__(
        self, store: ImageStore, rows: Sequence[SheetRow], logger: Any, policy: InputPolicy | None = None
    ) -> None:
        """Make the thumbnails the first ``THUMBNAILS_PER_RUN`` of ``rows`` need that the store
        does not hold yet (later rows show one only if it was made before). An edit's input
        outside the store is read under ``policy`` (none: it is shown by name only)."""
        self.store = store
        self.embed = isinstance(store, LocalImageStore)
        wanted: dict[str, Callable[[], bytes | Path]] = {}
        known: set[str] = set()
        for index, row in enumerate(rows):
            for frame in row.frames:
                reader = self._reader(frame, policy)
                if frame.sha256 is None:
                    continue
                if reader is not None and index < thumbnails_per_run():
                    wanted.setdefault(frame.sha256, reader)
                else:  # a later row: shown by its thumbnail only if one was made before
                    known.add(frame.sha256)
        self.present = ensure_thumbnails(store, wanted.items(), logger, known)
        self._srcs: dict[str, str | None] = {}

    def _reader(self, frame: Frame, policy: InputPolicy | None) -> Callable[[], bytes | Path] | None:
        store = self.store
        if frame.ref is not None:
            key = store.image_key(frame.ref.sha256, frame.ref.format)
            if isinstance(store, LocalImageStore):
                return lambda: store.path_for(key)
            return lambda: store.read_bytes(key)
        if frame.source is not None and policy is not None:
            # The run's reads (read_once): its inputs were fetched for the plan and the call; the
            # thumbnails are made in other threads, which do not inherit the context.
            source, cache = frame.source, run_cache()
            return lambda: read_input(source, store, what="source", policy=policy, cache=cache).data
        return None

    def src(self, frame: Frame) -> str | None:
        """Where the browser finds ``frame``'s thumbnail, or None when it has none."""
        sha = frame.sha256
        if sha is None or sha not in self.present:
            return None
        if sha not in self._srcs:
            key = thumbnail_key(self.store, sha)
            try:
                if self.embed:
                    self._srcs[sha] = data_uri(self.store.read_bytes(key), "jpeg")
                else:
                    self._srcs[sha] = self.store.link_for(key)
            except Exception:
                self._srcs[sha] = None
        return self._srcs[sha]
