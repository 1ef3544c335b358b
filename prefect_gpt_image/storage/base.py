"""The image store interface: content-addressed images, their manifests and small JSON records.

Layout under a store's prefix::

    {prefix}/images/{sha256}.{ext}    the image (ext png, jpeg or webp), never overwritten, with
                                      string metadata (``sha256`` and what the writer adds)
    {prefix}/...json                  small JSON records (cache records, ...), may be rewritten

A *key* is always the full object key (prefix included), as in :attr:`StoredObject.key`; build one
with :meth:`ImageStore.key`. Each backend implements a handful of primitives; every public
operation (validation, hashing, JSON) is written once, here.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import re
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from prefect_gpt_image.api.images import CONTENT_TYPES, ImageFormat, sniff_format

__all__ = [
    "CONTENT_TYPES",
    "IMAGES_FOLDER",
    "MAX_PRESIGN_TTL",
    "ImageStore",
    "StoredObject",
    "check_key",
    "check_ttl",
    "run_concurrently",
]

_WRITERS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="gpt-image-store")
"""Runs the extra writes of :func:`run_concurrently` (I/O-bound, short)."""


def run_concurrently(*calls: Callable[[], Any]) -> list[Any]:
    """Run ``calls`` (store operations) at once: the first in this thread, the others in a small
    shared pool. Returns their results in order once all are done; raises the first error in
    order. Independent writes then cost one round trip to the store instead of one each."""
    if not calls:
        return []
    # Each in a copy of the caller's context, as asyncio.to_thread does (what the caller set, e.g.
    # the time records are dated with, holds in the pool too).
    futures = [_WRITERS.submit(contextvars.copy_context().run, call) for call in calls[1:]]
    first: BaseException | None = None
    results: list[Any] = [None]
    try:
        results[0] = calls[0]()
    except BaseException as exc:
        first = exc
    for future in futures:
        error = future.exception()
        if error is not None and first is None:
            first = error
        results.append(None if error is not None else future.result())
    if first is not None:
        raise first
    return results


_PROBES: dict[object, Future[None]] = {}
"""The :meth:`ImageStore.ensure_ready` checks in flight, by store."""
_PROBES_LOCK = threading.Lock()

JSON_CONTENT_TYPE = "application/json"
IMAGES_FOLDER = "images"
"""The folder of the images under a store's prefix."""
MAX_PRESIGN_TTL = 7 * 24 * 3600
"""SigV4 presigned URLs live at most 7 days."""

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_MAX_KEY_BYTES = 1024
_CHUNK = 1024 * 1024


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative object key, else raise ValueError.

    Refused: empty keys, absolute paths, empty, ``.`` or ``..`` segments, backslashes and control
    characters, so a key never escapes a store's root or prefix on any backend.
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"invalid key {key!r}: must be a non-empty string")
    if key.startswith("/"):
        raise ValueError(f"invalid key {key!r}: absolute paths are not allowed")
    if "\\" in key or any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        raise ValueError(f"invalid key {key!r}: backslashes and control characters are not allowed")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"invalid key {key!r}: empty, '.' and '..' segments are not allowed")
    if len(key.encode()) > _MAX_KEY_BYTES:
        raise ValueError(f"invalid key: longer than {_MAX_KEY_BYTES} bytes")
    return key


def check_ttl(ttl: int) -> int:
    """Return ``ttl`` if it is a valid presigned-URL lifetime (1 s to 7 days), else ValueError."""
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_PRESIGN_TTL:
        raise ValueError(f"ttl must be whole seconds from 1 to {MAX_PRESIGN_TTL} (7 days), got {ttl!r}")
    return ttl


def _normalize_prefix(prefix: str) -> str:
    prefix = prefix.rstrip("/")
    return check_key(prefix) if prefix else ""


def _check_sha256(sha256: str) -> str:
    if not isinstance(sha256, str) or not _SHA256_RE.match(sha256.lower()):
        raise ValueError(f"invalid sha256 {sha256!r}: expected 64 hexadecimal characters")
    return sha256.lower()


def _check_ext(ext: str) -> ImageFormat:
    formats: tuple[ImageFormat, ...] = get_args(ImageFormat)
    for fmt in formats:
        if ext == fmt:
            return fmt
    raise ValueError(f"invalid image extension {ext!r}: expected one of {', '.join(formats)}")


_METADATA_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_MAX_METADATA_BYTES = 1024


def _check_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """``metadata`` if every backend can keep it as it is: lower-case names (S3 lower-cases them),
    printable ASCII values (HTTP headers), 1 KiB in all (S3 allows 2 KiB per object)."""
    out: dict[str, str] = {}
    for name, value in metadata.items():
        if not isinstance(name, str) or not _METADATA_NAME_RE.match(name) or name == "sha256":
            raise ValueError(f"invalid metadata name {name!r}: lower-case letters, digits and '-'")
        if not isinstance(value, str) or not all(32 <= ord(ch) < 127 for ch in value):
            raise ValueError(f"invalid metadata value for {name!r}: printable ASCII only")
        out[name] = value
    if sum(len(k) + len(v) for k, v in out.items()) > _MAX_METADATA_BYTES:
        raise ValueError(f"metadata larger than {_MAX_METADATA_BYTES} bytes")
    return out


def _file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass(frozen=True)
class StoredObject:
    """Where an image was stored: its URI and key, digest, size and type.

    ``created`` is False when the object already existed (it was left untouched).
    """

    uri: str
    key: str
    sha256: str
    size_bytes: int
    content_type: str
    created: bool


class ImageStore(ABC):
    """Where image bytes go: a local folder or an S3 bucket, behind one small interface.

    Images are content-addressed and written once (a second put is a no-op reporting
    ``created=False``, even under concurrent writers); manifests and JSON records may be
    rewritten. All operations are synchronous; run them in a thread from async code.
    """

    prefix: str
    """The key prefix of everything this store writes ("" for none), without a trailing slash."""
    origin: str = "storage"
    """Where this store was configured, for error messages: the parameter and what it was resolved
    from (``storage='s3://bucket/prefix'``, ``$GPT_IMAGE_STORAGE``, a block), never a secret."""
    _ready = False  # checked by ensure_ready (also for a subclass that skips __init__)

    def __init__(self, prefix: str = "") -> None:
        """Set and check the key prefix (a trailing slash is dropped)."""
        self.prefix = _normalize_prefix(prefix)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.describe()}>"

    # -- keys -----------------------------------------------------------------------------------

    def key(self, *parts: str) -> str:
        """The full key of ``parts`` joined with "/" under this store's prefix, checked."""
        return check_key("/".join(p for p in (self.prefix, *parts) if p))

    def image_key(self, sha256: str, ext: str) -> str:
        """The key of an image: ``{prefix}/images/{sha256}.{ext}``."""
        return self.key(IMAGES_FOLDER, f"{_check_sha256(sha256)}.{_check_ext(ext)}")

    # -- operations -----------------------------------------------------------------------------

    def put_image(
        self, sha256: str, ext: str, data: bytes | Path, metadata: Mapping[str, str] | None = None
    ) -> StoredObject:
        """Store an image under its digest unless it is already there (then ``created=False``).

        ``data`` is the bytes or a file (streamed, not read into memory). ``metadata`` (lower-case
        ASCII names and values, e.g. the record that describes the image) is stored with it,
        beside ``sha256``; an image already there keeps its own. Raises ValueError if ``sha256``
        is not the digest of the data or the data is not a ``ext`` image.
        """
        sha256 = _check_sha256(sha256)
        meta = {**_check_metadata(metadata or {}), "sha256": sha256}
        fmt = _check_ext(ext)
        key = self.image_key(sha256, fmt)
        if isinstance(data, Path):
            with data.open("rb") as f:
                head = f.read(16)
            actual, size = _file_sha256(data), data.stat().st_size
        else:
            head, actual, size = data[:16], hashlib.sha256(data).hexdigest(), len(data)
        if actual != sha256:
            raise ValueError(f"sha256 mismatch: given {sha256}, data hashes to {actual}")
        sniffed = sniff_format(head)
        if sniffed != fmt:
            raise ValueError(f"data is {sniffed or 'not a PNG, JPEG or WebP image'}, not {fmt}")
        content_type = CONTENT_TYPES[fmt]
        created = self._create(key, data, content_type, meta)
        return StoredObject(
            uri=self._uri(key),
            key=key,
            sha256=sha256,
            size_bytes=size,
            content_type=content_type,
            created=created,
        )

    def put_json(self, key: str, obj: Any) -> None:
        """Write a small JSON record at ``key`` (overwriting), with Content-Type application/json."""
        data = json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True).encode()
        self.put_bytes(key, data, JSON_CONTENT_TYPE)

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        """Write ``data`` at ``key`` (overwriting) with ``content_type``: a report or a record."""
        self._write(check_key(key), data, content_type)

    def get_json(self, key: str) -> Any:
        """The JSON record at ``key``, or None if there is none."""
        data = self._read(check_key(key))
        return None if data is None else json.loads(data)

    def exists(self, key: str) -> bool:
        """Whether an object is stored at ``key``."""
        return self._head(check_key(key)) is not None

    def metadata(self, key: str) -> dict[str, str] | None:
        """The metadata of the object at ``key`` (``{}`` for a JSON record), or None if there is
        no object. One round trip: it also answers :meth:`exists`."""
        return self._head(check_key(key))

    def read_bytes(self, uri_or_key: str) -> bytes:
        """The bytes at a key or at a URI of this store; FileNotFoundError if missing."""
        key = check_key(self._key_from(uri_or_key))
        data = self._read(key)
        if data is None:
            raise FileNotFoundError(f"no object at {self._uri(key)}")
        return data

    def list_names(self, folder: str, *, at_most: int) -> set[str] | None:
        """The names of the objects in ``{prefix}/{folder}/`` (not in its subfolders), or None if
        there are more than ``at_most``. On S3 a request per 1,000 names: a batch lists what is
        stored once instead of asking for each of its rows, while that is cheaper."""
        listed = self._list(self.key(folder) + "/", at_most)
        return None if listed is None else set(listed)

    def list_modified(self, folder: str) -> dict[str, float]:
        """Every object in ``{prefix}/{folder}/`` (not in its subfolders): its name and when it
        was last written (seconds since the epoch, the backend's clock). On S3 a request per
        1,000 names; a reader of many records skips those written before the time it wants
        without reading them."""
        listed = self._list(self.key(folder) + "/", sys.maxsize)
        assert listed is not None  # never more than sys.maxsize
        return listed

    def uri_for(self, key: str) -> str:
        """The URI of ``key``: ``s3://bucket/key`` or an absolute local path."""
        return self._uri(check_key(key))

    def link_for(self, key: str, ttl: int | None = None) -> str:
        """A URL a person can open for ``key``.

        A presigned GET valid ``ttl`` seconds (default: the store's, at most 7 days), a public
        URL when the store has a public base URL, or a ``file://`` URI for a local store.
        """
        return self._link(check_key(key), None if ttl is None else check_ttl(ttl))

    @abstractmethod
    def describe(self) -> str:
        """Where this store writes, for people and logs (never any secret)."""

    def location(self) -> str:
        """Where this store writes, in short (the folder, or the bucket, prefix and endpoint)."""
        return self.describe()

    def ensure_ready(self) -> None:
        """Check that this store can work (:meth:`_probe`: S3 credentials and bucket, a local
        folder's writability), once per store and process: a call about to pay checks first, so a
        store that cannot work costs nothing. Concurrent callers share one check in flight and its
        outcome; a failure is not remembered (the next call checks again), a success is. Raises
        the backend's error."""
        if self._is_ready():
            return
        token = self._ready_token()
        with _PROBES_LOCK:
            shared = _PROBES.get(token)
            mine = shared is None
            if shared is None:
                shared = _PROBES[token] = Future()
        if not mine:
            shared.result()  # the check in flight's outcome (its error, re-raised)
            return
        try:
            if not self._is_ready():
                self._probe()
                self._mark_ready()
        except BaseException as exc:
            shared.set_exception(exc)
            raise
        else:
            shared.set_result(None)
        finally:
            with _PROBES_LOCK:
                _PROBES.pop(token, None)

    @property
    def ready(self) -> bool:
        """Whether :meth:`ensure_ready` has already succeeded for this store in this process (no
        I/O: a call may ask on the event loop and skip the check's thread)."""
        return self._is_ready()

    def _probe(self) -> None:  # noqa: B027 - a store with nothing to check checks nothing
        """One cheap check that this store can work; raises the backend's error if not."""

    def _ready_token(self) -> object:
        """What identifies this store among the checks in flight."""
        return self

    def _is_ready(self) -> bool:
        return self._ready

    def _mark_ready(self) -> None:
        self._ready = True

    # -- backend primitives (keys are already checked) -----------------------------------------

    @abstractmethod
    def _create(self, key: str, data: bytes | Path, content_type: str, metadata: dict[str, str]) -> bool:
        """Write ``data`` with ``metadata`` (``sha256`` among it) at ``key`` only if nothing is
        there; return whether it was written."""

    @abstractmethod
    def _write(self, key: str, data: bytes, content_type: str) -> None:
        """Write ``data`` at ``key``, replacing what is there."""

    @abstractmethod
    def _read(self, key: str) -> bytes | None:
        """The bytes at ``key``, or None if nothing is there."""

    @abstractmethod
    def _head(self, key: str) -> dict[str, str] | None:
        """The metadata of the object at ``key`` (``{}`` if it has none), or None if there is none."""

    @abstractmethod
    def _list(self, prefix: str, at_most: int) -> dict[str, float] | None:
        """The keys under ``prefix`` (ending in "/"), without it and without deeper folders, each
        with when it was last written (seconds since the epoch); None once more than ``at_most``
        are found."""

    @abstractmethod
    def _uri(self, key: str) -> str:
        """The URI of ``key``."""

    @abstractmethod
    def _link(self, key: str, ttl: int | None) -> str:
        """A URL a person can open for ``key``."""

    @abstractmethod
    def _key_from(self, uri_or_key: str) -> str:
        """The key of a URI of this store (ValueError for another store's), or the key itself."""
