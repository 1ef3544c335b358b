"""Batch manifests: one prompt per row, from a CSV or JSONL file, local or ``s3://``.

A row has a ``prompt`` and may override any image option (``size``, ``quality``, ``n``, ...) and
``variant``. Every row is validated before anything is paid for; a bad row is reported with its
line number and does not stop the good ones.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["BatchRow", "parse_manifest", "read_manifest_text"]

_INT_FIELDS = {"n", "output_compression", "variant", "partial_images"}


class BatchRow(BaseModel):
    """One image request of a batch: a prompt plus per-row option overrides."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(description="What to draw.")
    size: str | None = Field(None, description="Override the batch size, e.g. 1536x1024.")
    quality: str | None = Field(None, description="Override the batch quality.")
    n: int | None = Field(None, description="Override the number of images (1..10).")
    output_format: str | None = Field(None, description="Override the output format.")
    output_compression: int | None = Field(None, description="0..100, jpeg/webp only.")
    background: str | None = Field(None, description="Override the background.")
    moderation: str | None = Field(None, description="auto or low.")
    variant: int | None = Field(None, description="Ask for a new image for an identical request.")
    id: str | None = Field(None, description="Your own row id, echoed in the results table.")

    def overrides(self) -> dict[str, Any]:
        """The options this row sets (without prompt, variant and id)."""
        return self.model_dump(exclude_none=True, exclude={"prompt", "variant", "id"})


def read_manifest_text(location: str, read_s3: Any = None) -> str:
    """The text of a manifest at a local path or ``s3://bucket/key``.

    ``read_s3(uri) -> bytes`` reads S3 objects (the caller passes its store's reader).
    """
    scheme = urlsplit(location).scheme
    if scheme == "s3":
        if read_s3 is None:
            raise ValueError("an s3:// manifest needs an S3 reader")
        return bytes(read_s3(location)).decode("utf-8")
    if scheme not in ("", "file"):
        raise ValueError(f"manifest must be a local path or s3:// URI, not {scheme}://")
    path = Path(urlsplit(location).path if scheme == "file" else location)
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read manifest {location!r}: {exc.strerror or exc}") from None


def parse_manifest(text: str, *, name: str = "") -> list[BatchRow | tuple[int, str]]:
    """Rows of a CSV (with a header) or JSONL manifest; a bad row becomes ``(line, reason)``.

    The format follows the name's extension, else the first character (``{`` means JSONL).
    """
    stripped = text.lstrip()
    is_jsonl = name.endswith((".jsonl", ".ndjson", ".json")) or (
        not name.endswith(".csv") and stripped.startswith("{")
    )
    rows: list[BatchRow | tuple[int, str]] = []
    if is_jsonl:
        for line_no, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                rows.append((line_no, f"not valid JSON: {exc.msg}"))
                continue
            rows.append(_row(line_no, data))
        return rows
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "prompt" not in reader.fieldnames:
        raise ValueError("a CSV manifest needs a header row with a 'prompt' column")
    for record in reader:
        line_no = reader.line_num
        data = {k: v for k, v in record.items() if k is not None and v not in (None, "")}
        for key in _INT_FIELDS & data.keys():
            value = data[key]
            data[key] = (
                int(value) if isinstance(value, str) and value.strip().lstrip("-").isdigit() else value
            )
        rows.append(_row(line_no, data))
    return rows


def _row(line_no: int, data: Any) -> BatchRow | tuple[int, str]:
    if not isinstance(data, dict):
        return (line_no, "a row must be an object with a 'prompt'")
    try:
        return BatchRow.model_validate(data)
    except ValueError as exc:
        errors = getattr(exc, "errors", None)
        if callable(errors):
            parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors()]
            return (line_no, "; ".join(parts))
        return (line_no, str(exc))
