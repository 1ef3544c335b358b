"""Cache keys and cache records of image calls, kept in the image store itself.

The key is the SHA-256 of: the endpoint, the model and every normalized request parameter
(``request.summary()``: prompt, size, quality, n, ... and the SHA-256 of each input image and the
mask), plus ``variant``. Fields that change only how the answer travels (``stream``,
``partial_images``, ``user``) are left out. The API key, the base URL and any run id are never
part of it, so every run, on any machine, with any key, finds the same record; an input given as a
path is hashed by its bytes, not its name.

A record lives at ``{prefix}/cache/{key}.json`` in the same store as the images, so a rerun in
another process or on another machine finds it, whatever the backend (a local folder, an
``s3://`` URI, or an S3Bucket block). It holds the request summary, the refs (without links,
which expire) and each image's manifest (its lineage: model, prompt, parameters, request id,
usage, cost, inputs, runs), as plain JSON any tool can read. Each image stored by a call carries
the key in its object metadata (``cache-key``), so :func:`read_manifest` finds an image's lineage
from the image alone. One JSON object per call, not one per image plus one per call: on an
S3-compatible store every object is a round trip and a few milliseconds of the server.

A record naming fewer images than its request's ``n`` is *partial*: the answer's other result URLs
were given up (billed, never delivered). It is never served as the answer (:func:`read_record`
misses it, so plans and batch lookups count the call as to be made); the call under its lock reads
it (:func:`read_entry`), asks the API only for the missing images and rewrites it whole, so the
stored images are not paid for again.

Why not Prefect's own cache (``cache_policy`` + ``isolation_level="SERIALIZABLE"``): its records go
to the task's ``result_storage``, which must be a local path or a block saved on the server
(Prefect 3.8.8 raises ``TypeError: Result storage configuration must be persisted server-side`` for
an unsaved ``S3Bucket``, even through ``with_options``), and an ``s3://`` location has no block at
all. The store is a task parameter, so Prefect's records could not follow the images to all three
backends; they would also be cloudpickle payloads, opaque to anything but Prefect. The isolation
idea is kept: the lookup, the paid call and the record happen under a lock on the key, taken with a
Prefect ``LockManager`` (see :mod:`.locks`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Set
from dataclasses import dataclass
from functools import partial
from typing import Any

from prefect_gpt_image.api import EditRequest, GenerateRequest
from prefect_gpt_image.storage import ImageStore
from prefect_gpt_image.storage.base import run_concurrently

from .clock import utc_now
from .refs import ImageRef

__all__ = [
    "CACHE_FOLDER",
    "CACHE_KEY_METADATA",
    "TRANSPORT_FIELDS",
    "CacheRecord",
    "cache_key",
    "read_entry",
    "read_manifest",
    "read_record",
    "read_records",
    "record_key",
    "record_name",
    "write_record",
]

CACHE_FOLDER = "cache"
"""The folder of cache records under a store's prefix."""
CACHE_KEY_METADATA = "cache-key"
"""The image metadata naming the cache key (so the record) of the call that stored the image."""
TRANSPORT_FIELDS = frozenset({"stream", "partial_images", "user"})
"""Request fields that do not change the images, left out of the key."""
_KEY_VERSION = 1
CLOCK_SLACK = dt.timedelta(days=1)
"""How far the clocks of the machines writing records and of the store may disagree: a record last
written this long before a time is taken to describe nothing made after it."""


def endpoint_of(request: GenerateRequest | EditRequest) -> str:
    """``images/edits`` or ``images/generations``."""
    return "images/edits" if isinstance(request, EditRequest) else "images/generations"


def cache_key(request: GenerateRequest | EditRequest, variant: int = 0) -> str:
    """The cache key of ``request`` with ``variant`` (64 hex characters)."""
    params = {k: v for k, v in request.summary().items() if k not in TRANSPORT_FIELDS}
    material = {
        "version": _KEY_VERSION,
        "endpoint": endpoint_of(request),
        "params": params,
        "variant": variant,
    }
    blob = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def record_key(store: ImageStore, key: str) -> str:
    """The store key of the cache record of ``key``."""
    return store.key(CACHE_FOLDER, record_name(key))


def record_name(key: str) -> str:
    """The name of the cache record of ``key`` in the cache folder."""
    return f"{key}.json"


def _read(store: ImageStore, key: str) -> dict[str, Any] | None:
    """The record of ``key`` as stored, or None if there is none or it is damaged."""
    try:
        record = store.get_json(record_key(store, key))
    except ValueError:  # not JSON (a damaged write): a miss, the next success rewrites it
        return None
    return record if isinstance(record, dict) and record.get("key") == key else None


@dataclass(frozen=True)
class CacheRecord:
    """A usable cache record: the refs of its stored images, their manifests, and how many images
    of the request it answers are ``missing`` (billed but never delivered: a partial answer)."""

    refs: list[ImageRef]
    manifests: list[dict[str, Any]]
    missing: int

    @property
    def complete(self) -> bool:
        """Whether every image of the request is stored (a hit that may be served as the answer)."""
        return self.missing == 0


def read_entry(store: ImageStore, key: str, stored: Set[str] = frozenset()) -> CacheRecord | None:
    """The record of ``key`` whole or partial, or None if there is no usable record (none,
    damaged, or an image it names is not in the store). Errors reaching the store propagate.
    ``stored``: names of images (in the images folder) already known to be there.

    A record is *partial* when it names fewer images than its request's ``n``: an answer some of
    whose result URLs were given up stores the images that arrived and records them, so the next
    run asks only for the missing ones (see :func:`read_record`, which never serves it).
    """
    record = _read(store, key)
    if record is None:
        return None
    try:
        refs = [ImageRef.model_validate(item) for item in record["refs"]]
        wanted = int((record.get("request") or {}).get("n") or len(refs))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if not refs:
        return None
    found: list[ImageRef] = []
    for ref in refs:
        image_key = store.image_key(ref.sha256, ref.format)
        if image_key.rsplit("/", 1)[-1] not in stored and not store.exists(image_key):
            return None
        # The record may have been written through another mount or machine: point at this store.
        found.append(ref.model_copy(update={"uri": store.uri_for(image_key)}))
    manifests = [m for m in record.get("manifests", []) if isinstance(m, dict)]
    return CacheRecord(found, manifests, max(0, wanted - len(found)))


def read_record(store: ImageStore, key: str, stored: Set[str] = frozenset()) -> list[ImageRef] | None:
    """The refs recorded for ``key`` when the record is whole, or None if there is no usable
    record (none, damaged, an image it names is not in the store) or it is partial (some images
    of the request were never delivered: never served as the answer, see :func:`read_entry`).
    Errors reaching the store propagate. ``stored``: names of images (in the images folder)
    already known to be there, not asked for again.

    A new call writes its images and this record at once (one round trip), so a record alone
    proves nothing: it counts only when every image it names was stored. After a partly failed
    write the lookup misses and the call's spooled images are stored again, free.
    """
    entry = read_entry(store, key, stored)
    return entry.refs if entry is not None and entry.complete else None


def read_manifest(store: ImageStore, sha256: str, fmt: str) -> dict[str, Any] | None:
    """The manifest of the stored image ``sha256`` (format ``fmt``): its entry in the record of
    the call that stored it (named by the image's ``cache-key`` metadata), or None if the image is
    not stored or no record describes it."""
    metadata = store.metadata(store.image_key(sha256, fmt))
    key = (metadata or {}).get(CACHE_KEY_METADATA)
    record = _read(store, key) if key else None
    for manifest in (record or {}).get("manifests", []):
        if isinstance(manifest, dict) and manifest.get("sha256") == sha256:
            return manifest
    return None


def write_record(
    store: ImageStore,
    key: str,
    refs: list[ImageRef],
    request: dict[str, Any],
    manifests: list[dict[str, Any]],
) -> None:
    """Record ``refs`` (without links) and their ``manifests`` as the result of ``key``; fewer refs
    than ``request``'s ``n`` make a partial record (see :func:`read_entry`)."""
    store.put_json(
        record_key(store, key),
        {
            "key": key,
            "created": utc_now().isoformat(),
            "request": request,
            "refs": [ref.without_link().model_dump(mode="json") for ref in refs],
            "manifests": manifests,
        },
    )


def read_records(store: ImageStore, since: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Every cache record in ``store`` as stored (damaged ones left out), or with ``since`` (a
    timezone-aware time) those the store last wrote at most :data:`CLOCK_SLACK` before it: a
    record written earlier holds no manifest made since, so a report over recent days reads only
    the records those days touched. One listing of the cache folder (a request per 1,000 records
    on S3), then the records read a few at a time."""
    listed = store.list_modified(CACHE_FOLDER)
    cutoff = None if since is None else (since - CLOCK_SLACK).timestamp()
    keys = [
        name.removesuffix(".json")
        for name, modified in listed.items()
        if name.endswith(".json") and (cutoff is None or modified >= cutoff)
    ]
    found = run_concurrently(*(partial(_read, store, key) for key in keys))
    return [record for record in found if record is not None]
