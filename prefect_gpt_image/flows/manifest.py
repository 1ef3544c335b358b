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

from prefect_gpt_image.api.inputpolicy import InputPolicy
from prefect_gpt_image.calls import local_input
from prefect_gpt_image.storage import ImageStore, S3ImageStore, resolve_store

from .reading import reading
from .templates import TemplateError, fill_template

__all__ = ["BatchRow", "batch_row", "parse_manifest", "parse_records", "read_manifest_text", "read_records"]

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


def read_records(
    location: str, store: ImageStore, *, policy: InputPolicy, require: str | None = "prompt"
) -> list[tuple[int, dict[str, Any] | str]]:
    """The rows of the manifest at ``location`` (see :func:`parse_records`); an ``s3://`` manifest
    is read with ``store``'s client when it is in the store's bucket, else with boto3's defaults.

    ``policy`` says where a manifest may be: a local one inside its roots (symlinks and ``..``
    resolved), an ``s3://`` one in the store's bucket or an allowed one; ValueError otherwise.
    """
    readable = location
    store_bucket = store.bucket if isinstance(store, S3ImageStore) else None
    try:
        scheme = urlsplit(location).scheme
        if scheme == "s3":
            policy.check_bucket(urlsplit(location).netloc, store_bucket=store_bucket)
        elif scheme in ("", "file"):
            readable = str(local_input(location, store, policy))
    except ValueError as exc:
        raise ValueError(f"manifest: {exc}") from None
    with reading("manifest", location, store_bucket):
        text = read_manifest_text(readable, read_s3=_s3_reader(store))
    return parse_records(text, name=location, require=require)


def _s3_reader(store: ImageStore) -> Any:
    def read(uri: str) -> bytes:
        bucket = uri.split("/", 3)[2]
        reader = (
            store
            if isinstance(store, S3ImageStore) and store.bucket == bucket
            else resolve_store(f"s3://{bucket}")
        )
        return reader.read_bytes(uri)

    return read


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
    return [
        _row(line_no, data) if isinstance(data, dict) else (line_no, data)
        for line_no, data in parse_records(text, name=name, require="prompt")
    ]


def parse_records(
    text: str, *, name: str = "", require: str | None = None
) -> list[tuple[int, dict[str, Any] | str]]:
    """Every row of a CSV (with a header) or JSONL manifest as ``(line, columns)``, or
    ``(line, reason)`` for a line that is no row; empty CSV cells are left out, the integer
    options (``n``, ``variant``, ...) read as integers. A CSV must have the column ``require``."""
    stripped = text.lstrip()
    is_jsonl = name.endswith((".jsonl", ".ndjson", ".json")) or (
        not name.endswith(".csv") and stripped.startswith("{")
    )
    rows: list[tuple[int, dict[str, Any] | str]] = []
    if is_jsonl:
        for line_no, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                rows.append((line_no, f"not valid JSON: {exc.msg}"))
                continue
            not_row = f"a row must be an object with a {require!r}" if require else "a row must be an object"
            rows.append((line_no, data if isinstance(data, dict) else not_row))
        return rows
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or (require is not None and require not in reader.fieldnames):
        raise ValueError(f"a CSV manifest needs a header row with a {require or 'column name'!r} column")
    for record in reader:
        line_no = reader.line_num
        data = {k: v for k, v in record.items() if k is not None and v not in (None, "")}
        for key in _INT_FIELDS & data.keys():
            value = data[key]
            data[key] = (
                int(value) if isinstance(value, str) and value.strip().lstrip("-").isdigit() else value
            )
        rows.append((line_no, data))
    return rows


def batch_row(
    number: int, columns: dict[str, Any], template: str | None = None
) -> BatchRow | tuple[int, str]:
    """Row ``number`` of a batch from its manifest ``columns``, or ``(number, reason)``. With a
    ``template`` the prompt is filled from the columns, and the columns that are no option of
    :class:`BatchRow` are the template's (not errors)."""
    if template is None:
        return _row(number, columns)
    try:
        prompt = fill_template(template, columns, where=f"row {number}")
    except TemplateError as exc:
        return (number, str(exc))
    options = {k: v for k, v in columns.items() if k in BatchRow.model_fields and k != "prompt"}
    return _row(number, {**options, "prompt": prompt})


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
