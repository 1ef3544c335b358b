"""Reading input images and masks: refs, local paths, ``s3://`` URIs, ``http(s)://`` URLs, bytes.

Each input is read whole and checked (format, size, pixels, integrity) before anything is paid
for; its SHA-256 then goes into the cache key and the manifest's lineage. What a location may name
is the run's :class:`~prefect_gpt_image.api.inputpolicy.InputPolicy` (hosts, folders, buckets): a
refused one is an :class:`InputImageError` naming the input, and nothing was read from it.

Within :func:`read_once` (a batch or pipeline run) each remote input (URL or ``s3://``) is
fetched once: its bytes wait in a temporary folder for the run's later reads (the plan checks it,
the call sends it), so a run never fetches the same input twice and the call sends exactly what
the plan checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import TypeAlias
from urllib.parse import urlsplit

import httpx
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from prefect_gpt_image.api.images import MAX_INPUT_BYTES, InputImage, load_input_image
from prefect_gpt_image.api.inputpolicy import InputPolicy
from prefect_gpt_image.api.netpolicy import fetch_checked, safe_url
from prefect_gpt_image.storage import ImageStore, LocalImageStore, S3ImageStore, resolve_store
from prefect_gpt_image.storage.local import path_from_file_uri

from .errors import ImageStorageError, InputImageError
from .refs import ImageRef

__all__ = ["ImageInput", "InputCache", "local_input", "read_input", "read_once", "run_cache"]

ImageInput: TypeAlias = "ImageRef | str | os.PathLike[str] | bytes"
"""An input image or mask: an :class:`ImageRef` from an earlier task, a local path or
``file://`` URI, an ``s3://bucket/key`` URI (read with the task's store when it is the same
bucket, else with boto3's standard credentials), an ``http(s)://`` URL, or the bytes."""

_URL_TIMEOUT = httpx.Timeout(60.0, connect=10.0)


class _Failed:
    """A location whose read failed for good in this run (the reason, without the input's label)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class InputCache:
    """The remote inputs one run has read, each fetched once: the bytes of each location in a
    temporary folder (not memory: a batch may name thousands), or why it cannot be read.

    Thread-safe: the plan reads inputs from several threads; two rows naming the same location at
    once wait for one fetch.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._entries: dict[str, tuple[Path, str] | _Failed] = {}
        self._folder: Path | None = None

    def read(self, location: str, fetch: Callable[[], bytes]) -> bytes:
        """The bytes of ``location``: fetched with ``fetch`` the first time, from the folder after.

        ``fetch`` raises ValueError for a location that cannot be read (remembered, raised again)
        or another error for a transient failure (not remembered: a later read tries again).
        """
        with self._lock:
            lock = self._locks.setdefault(location, threading.Lock())
        with lock:
            entry = self._entries.get(location)
            if isinstance(entry, _Failed):
                raise ValueError(entry.reason)
            if entry is not None:
                path, sha = entry
                data = path.read_bytes()
                if hashlib.sha256(data).hexdigest() != sha:
                    raise ImageStorageError(f"the run's copy of {safe_url(location)} changed on disk")
                return data
            try:
                data = fetch()
            except ValueError as exc:
                self._entries[location] = _Failed(str(exc))
                raise
            path = self._keep(location, data)
            self._entries[location] = (path, hashlib.sha256(data).hexdigest())
            return data

    def _keep(self, location: str, data: bytes) -> Path:
        with self._lock:
            if self._folder is None:
                self._folder = Path(tempfile.mkdtemp(prefix="gpt-image-inputs-"))
            folder = self._folder
        path = folder / hashlib.sha256(location.encode("utf-8")).hexdigest()
        path.write_bytes(data)
        return path

    def close(self) -> None:
        """Remove the fetched bytes."""
        with self._lock:
            folder, self._folder = self._folder, None
            self._entries.clear()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


_RUN_CACHE: ContextVar[InputCache | None] = ContextVar("gpt_image_input_cache", default=None)


@contextlib.contextmanager
def read_once() -> Iterator[InputCache]:
    """Within the block, each remote input is fetched once (see :class:`InputCache`); reads in
    other threads see the cache when the context is copied to them (``asyncio.to_thread`` does)."""
    current = _RUN_CACHE.get()
    if current is not None:  # a run inside a run shares the outer one's reads
        yield current
        return
    cache = InputCache()
    token = _RUN_CACHE.set(cache)
    try:
        yield cache
    finally:
        _RUN_CACHE.reset(token)
        cache.close()


def run_cache() -> InputCache | None:
    """The cache of the enclosing :func:`read_once`, if any (to hand to threads that do not
    inherit the context, e.g. a thread pool's)."""
    return _RUN_CACHE.get()


def read_input(
    source: ImageInput,
    store: ImageStore,
    *,
    what: str,
    policy: InputPolicy,
    max_bytes: int = MAX_INPUT_BYTES,
    cache: InputCache | None = None,
) -> InputImage:
    """Read and check one input (``what`` names it in errors, e.g. ``images[0]`` or ``mask``) as
    ``policy`` allows; ``cache`` (default: the one of :func:`read_once`, if any) keeps remote reads.

    Raises InputImageError for a missing, refused or invalid image, ImageStorageError when the
    store or host holding it cannot be reached (nothing was paid; a retry may succeed).
    """
    cache = cache if cache is not None else _RUN_CACHE.get()
    expected_sha: str | None = None
    if isinstance(source, ImageRef):
        expected_sha = source.sha256
        data, name = _read_location(source.uri, store, what, max_bytes, policy, cache)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data, name = bytes(source), None
    elif isinstance(source, (str, os.PathLike)):
        data, name = _read_location(os.fspath(source), store, what, max_bytes, policy, cache)
    else:
        raise InputImageError(
            f"{what}: expected an ImageRef, a path, an s3:// or http(s):// URI, or bytes; "
            f"got {type(source).__name__}"
        )
    if expected_sha is not None and hashlib.sha256(data).hexdigest() != expected_sha:
        raise InputImageError(f"{what}: the stored image no longer matches its ref's sha256 {expected_sha}")
    # A PNG is checked by its integrity data (every chunk's CRC), never decoded whole: as sure for
    # truncation and corruption, and a decompression bomb stays compressed (its header's pixel
    # count is refused first). A JPEG or WebP within the pixel cap is decoded.
    try:
        image = load_input_image(data, max_bytes=max_bytes, decode=False)
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


def local_input(location: str, store: ImageStore, policy: InputPolicy) -> Path:
    """The local file or folder a path or ``file://`` URI names, symlinks and ``..`` resolved,
    inside the policy's roots (or the store's own folder); ValueError when it is not."""
    if "://" in location and urlsplit(location).scheme.lower() == "file":
        path = path_from_file_uri(location)
    else:
        path = Path(location).expanduser()
    own = store.root if isinstance(store, LocalImageStore) else None
    return policy.check_path(path, also=own)


def _read_location(
    location: str,
    store: ImageStore,
    what: str,
    max_bytes: int,
    policy: InputPolicy,
    cache: InputCache | None,
) -> tuple[bytes, str | None]:
    scheme = urlsplit(location).scheme.lower() if "://" in location else ""
    if scheme in ("s3", "http", "https"):
        name = urlsplit(location).path.rsplit("/", 1)[-1] or None

        def fetch() -> bytes:
            if scheme == "s3":
                return _read_s3(location, store, policy)
            return _read_url(location, max_bytes, policy)

        try:
            data = cache.read(location, fetch) if cache is not None else fetch()
        except ImageStorageError as exc:
            raise ImageStorageError(f"{what}: {exc}") from None
        except ValueError as exc:
            raise InputImageError(f"{what}: {exc}") from None
        if len(data) >= max_bytes:
            raise InputImageError(
                f"{what}: {safe_url(location)} is {len(data)} bytes; must be under {max_bytes}"
            )
        return data, name
    if scheme and scheme != "file":
        raise InputImageError(f"{what}: unsupported scheme {scheme}:// (use a path, s3:// or https://)")
    try:
        path = local_input(location, store, policy)
    except ValueError as exc:
        raise InputImageError(f"{what}: {exc}") from None
    try:
        size = path.stat().st_size
        if size >= max_bytes:
            raise InputImageError(f"{what}: {path} is {size} bytes; must be under {max_bytes} bytes")
        return path.read_bytes(), path.name
    except OSError as exc:
        raise InputImageError(f"{what}: cannot read {str(path)!r}: {exc.strerror or exc}") from None


def _read_s3(uri: str, store: ImageStore, policy: InputPolicy) -> bytes:
    """The object at ``uri``; ValueError when it cannot be read (refused bucket, missing object,
    denied), ImageStorageError when the store cannot be reached."""
    bucket = urlsplit(uri).netloc
    same_bucket = isinstance(store, S3ImageStore) and store.bucket == bucket
    policy.check_bucket(bucket, store_bucket=store.bucket if isinstance(store, S3ImageStore) else None)
    try:
        reader = store if same_bucket else resolve_store(f"s3://{bucket}")
        return reader.read_bytes(uri)
    except FileNotFoundError:
        raise ValueError(f"no object at {uri}") from None
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status in (403, 404):
            raise ValueError(f"cannot read {uri} (HTTP {status})") from None
        raise ImageStorageError(f"reading {uri} failed: {exc}") from None
    except (ValueError, ParamValidationError) as exc:  # a malformed URI: no retry can help
        reason = " ".join(str(exc).split())
        raise ValueError(f"{uri} is not an s3://bucket/key URI ({reason})") from None
    except BotoCoreError as exc:
        raise ImageStorageError(f"reading {uri} failed: {exc}") from None


def _read_url(url: str, max_bytes: int, policy: InputPolicy) -> bytes:
    """The body of ``url`` (its hosts checked, see :func:`~prefect_gpt_image.api.netpolicy.fetch_checked`);
    ValueError for a refused host or no image, ImageStorageError when the transport failed."""
    try:
        return fetch_checked(url, policy=policy.hosts, max_bytes=max_bytes, timeout=_URL_TIMEOUT)
    except httpx.HTTPError as exc:
        raise ImageStorageError(f"GET {safe_url(url)} failed ({type(exc).__name__})") from None
