"""Where ``batch_edit`` finds its images: a folder, an ``s3://bucket/prefix/``, a list of URIs, or
a manifest's column.

An S3 prefix is listed page by page (``ListObjectsV2`` with continuation tokens), so a bucket of
any size is read whole; only png, jpeg and webp files are taken, in name order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prefect_gpt_image.api.inputpolicy import InputPolicy
from prefect_gpt_image.calls import local_input
from prefect_gpt_image.storage import ImageStore, S3ImageStore

from .manifest import read_records
from .reading import reading

__all__ = ["IMAGE_SUFFIXES", "S3_PAGE_SIZE", "ImageSource", "image_sources", "is_manifest"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
"""File names taken from a folder or prefix (any case)."""
S3_PAGE_SIZE = 1000
"""Keys asked for per ``ListObjectsV2`` page (S3's own maximum)."""
_MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".json")


class ImageSource:
    """One input of a batch edit: its row number, the image's location, and its row's columns."""

    __slots__ = ("columns", "error", "number", "uri")

    def __init__(self, number: int, uri: str, columns: dict[str, Any], error: str | None = None) -> None:
        self.number, self.uri, self.columns, self.error = number, uri, columns, error


def image_sources(
    images: str | list[str], store: ImageStore, *, policy: InputPolicy, column: str = "image"
) -> list[ImageSource]:
    """Every input image of ``images``: a list of URIs or paths, a folder, an ``s3://bucket/prefix/``,
    or a CSV/JSONL manifest whose ``column`` holds each row's image (the other columns fill the
    prompt template). A manifest row without the column is kept as an error; the store's own
    images found under a folder or prefix are left out (a rerun does not edit its outputs).

    ``policy`` says which folders, buckets and manifests may be named (ValueError otherwise);
    each image found is checked again when its row reads it."""
    if isinstance(images, list):
        return [ImageSource(i, str(uri), {column: str(uri)}) for i, uri in enumerate(images, start=1)]
    location = images.strip()
    if not location:
        raise ValueError("images: give a folder, an s3://bucket/prefix/, a manifest or a list of URIs")
    if is_manifest(location):
        return _from_manifest(location, store, column, policy)
    if urlsplit(location).scheme == "s3":
        store_bucket = store.bucket if isinstance(store, S3ImageStore) else None
        try:
            policy.check_bucket(urlsplit(location).netloc, store_bucket=store_bucket)
        except ValueError as exc:
            raise ValueError(f"images: {exc}") from None
        with reading("images", location, store_bucket):
            uris = _s3_images(location, store)
    else:
        try:
            folder = local_input(location, store, policy)
        except ValueError as exc:
            raise ValueError(f"images: {exc}") from None
        uris = _folder_images(folder, shown=location)
    # The store's own images (earlier outputs, when the folder or prefix holds the store) are no inputs.
    outputs = store.uri_for(store.key("images")).rstrip("/") + "/"
    uris = [uri for uri in uris if not uri.startswith(outputs)]
    return [ImageSource(i, uri, {column: uri}) for i, uri in enumerate(uris, start=1)]


def is_manifest(images: str | list[str]) -> bool:
    """Whether ``images`` names a CSV/JSONL manifest (by its extension)."""
    return isinstance(images, str) and images.strip().lower().endswith(_MANIFEST_SUFFIXES)


def _from_manifest(location: str, store: ImageStore, column: str, policy: InputPolicy) -> list[ImageSource]:
    out: list[ImageSource] = []
    records = read_records(location, store, policy=policy, require=column)
    for number, (line, data) in enumerate(records, start=1):
        if isinstance(data, str):
            out.append(ImageSource(number, "", {}, f"line {line}: {data}"))
        elif not str(data.get(column) or "").strip():
            out.append(ImageSource(number, "", data, f"line {line}: no {column!r} column (the image)"))
        else:
            out.append(ImageSource(number, str(data[column]), data))
    return out


def _folder_images(folder: Path, *, shown: str) -> list[str]:
    if not folder.is_dir():
        raise ValueError(f"images: {shown!r} is no folder (give a folder, s3:// prefix, manifest or list)")
    return sorted(
        str(p.resolve()) for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _s3_images(uri: str, store: ImageStore) -> list[str]:
    parts = urlsplit(uri)
    bucket, prefix = parts.netloc, parts.path.lstrip("/")
    if prefix.lower().endswith(IMAGE_SUFFIXES):  # one object
        return [uri]
    same = isinstance(store, S3ImageStore) and store.bucket == bucket
    client = (
        store.client
        if isinstance(store, S3ImageStore) and same
        else S3ImageStore.from_uri(f"s3://{bucket}").client
    )
    keys: list[str] = []
    token: str | None = None
    while True:
        page = (
            client.list_objects_v2(
                Bucket=bucket, Prefix=prefix, MaxKeys=S3_PAGE_SIZE, ContinuationToken=token
            )
            if token
            else client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=S3_PAGE_SIZE)
        )
        keys.extend(
            obj["Key"] for obj in page.get("Contents", []) if obj["Key"].lower().endswith(IMAGE_SUFFIXES)
        )
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            break
    return [f"s3://{bucket}/{key}" for key in sorted(keys)]
