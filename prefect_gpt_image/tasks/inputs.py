"""Reading input images and masks: refs, local paths, ``s3://`` URIs, ``http(s)://`` URLs, bytes.

Each input is read whole and checked (format, size, decodability) before anything is paid for;
its SHA-256 then goes into the cache key and the manifest's lineage.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TypeAlias
from urllib.parse import urlsplit

import httpx
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from prefect_gpt_image.api.images import MAX_INPUT_BYTES, InputImage, load_input_image
from prefect_gpt_image.storage import ImageStore, S3ImageStore, resolve_store
from prefect_gpt_image.storage.local import path_from_file_uri

from .errors import ImageStorageError, InputImageError
from .refs import ImageRef

__all__ = ["ImageInput", "read_input"]

ImageInput: TypeAlias = "ImageRef | str | os.PathLike[str] | bytes"
"""An input image or mask: an :class:`ImageRef` from an earlier task, a local path or
``file://`` URI, an ``s3://bucket/key`` URI (read with the task's store when it is the same
bucket, else with boto3's standard credentials), an ``http(s)://`` URL, or the bytes."""

_URL_TIMEOUT = httpx.Timeout(60.0, connect=10.0)


def read_input(
    source: ImageInput, store: ImageStore, *, what: str, max_bytes: int = MAX_INPUT_BYTES
) -> InputImage:
    """Read and check one input (``what`` names it in errors, e.g. ``images[0]`` or ``mask``).

    Raises InputImageError for a missing or invalid image, ImageStorageError when the store
    holding it cannot be reached (nothing was paid; a retry may succeed).
    """
    expected_sha: str | None = None
    if isinstance(source, ImageRef):
        expected_sha = source.sha256
        data, name = _read_location(source.uri, store, what, max_bytes)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data, name = bytes(source), None
    elif isinstance(source, (str, os.PathLike)):
        data, name = _read_location(os.fspath(source), store, what, max_bytes)
    else:
        raise InputImageError(
            f"{what}: expected an ImageRef, a path, an s3:// or http(s):// URI, or bytes; "
            f"got {type(source).__name__}"
        )
    if expected_sha is not None and hashlib.sha256(data).hexdigest() != expected_sha:
        raise InputImageError(f"{what}: the stored image no longer matches its ref's sha256 {expected_sha}")
    # An ImageRef's bytes, matching its sha256, are the image checked when it was downloaded: its
    # PNG integrity data suffice (decoding every pixel again cost a batch's chain a core's time).
    decode = expected_sha is None
    try:
        image = load_input_image(data, max_bytes=max_bytes, decode=decode)
    except ValueError as exc:
        raise InputImageError(f"{what}: {exc}") from None
    if name is None:
        return image
    return InputImage(
        filename=os.path.basename(name) or image.filename,
        data=image.data,
        format=image.format,
        width=image.width,
        height=image.height,
        has_alpha=image.has_alpha,
        sha256=image.sha256,
    )


def _read_location(location: str, store: ImageStore, what: str, max_bytes: int) -> tuple[bytes, str | None]:
    scheme = urlsplit(location).scheme.lower() if "://" in location else ""
    if scheme == "s3":
        return _read_s3(location, store, what), location.rsplit("/", 1)[-1]
    if scheme in ("http", "https"):
        return _read_url(location, what, max_bytes), urlsplit(location).path.rsplit("/", 1)[-1] or None
    if scheme == "file":
        try:
            path = path_from_file_uri(location)
        except ValueError as exc:
            raise InputImageError(f"{what}: {exc}") from None
    elif scheme:
        raise InputImageError(f"{what}: unsupported scheme {scheme}:// (use a path, s3:// or https://)")
    else:
        path = Path(location).expanduser()
    try:
        size = path.stat().st_size
        if size >= max_bytes:
            raise InputImageError(f"{what}: {path} is {size} bytes; must be under {max_bytes} bytes")
        return path.read_bytes(), path.name
    except OSError as exc:
        raise InputImageError(f"{what}: cannot read {str(path)!r}: {exc.strerror or exc}") from None


def _read_s3(uri: str, store: ImageStore, what: str) -> bytes:
    bucket = urlsplit(uri).netloc
    try:
        same_bucket = isinstance(store, S3ImageStore) and store.bucket == bucket
        reader = store if same_bucket else resolve_store(f"s3://{bucket}")
        return reader.read_bytes(uri)
    except FileNotFoundError:
        raise InputImageError(f"{what}: no object at {uri}") from None
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status in (403, 404):
            raise InputImageError(f"{what}: cannot read {uri} (HTTP {status})") from None
        raise ImageStorageError(f"{what}: reading {uri} failed: {exc}") from None
    except (ValueError, ParamValidationError) as exc:  # a malformed URI: no retry can help
        reason = " ".join(str(exc).split())
        raise InputImageError(f"{what}: {uri} is not an s3://bucket/key URI ({reason})") from None
    except BotoCoreError as exc:
        raise ImageStorageError(f"{what}: reading {uri} failed: {exc}") from None


def _read_url(url: str, what: str, max_bytes: int) -> bytes:
    try:
        with httpx.stream("GET", url, timeout=_URL_TIMEOUT, follow_redirects=True) as response:
            if response.status_code != 200:
                raise InputImageError(f"{what}: GET {_safe(url)} answered HTTP {response.status_code}")
            chunks: list[bytes] = []
            total = 0
            for chunk in response.iter_bytes():
                total += len(chunk)
                if total >= max_bytes:
                    raise InputImageError(f"{what}: {_safe(url)} is larger than {max_bytes} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as exc:
        raise ImageStorageError(f"{what}: GET {_safe(url)} failed ({type(exc).__name__})") from None


def _safe(url: str) -> str:
    """``url`` without query and user info (they may hold credentials, e.g. a presigned URL)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{':' + str(parts.port) if parts.port else ''}{parts.path}"
