"""Turn whatever a user passes as "storage" into an :class:`ImageStore`."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from .base import ImageStore
from .local import STORAGE_ENV, LocalImageStore, default_local_root, path_from_file_uri
from .s3 import S3ImageStore

if TYPE_CHECKING:
    from prefect_aws import S3Bucket

__all__ = ["resolve_store", "safe_location"]

_SUPPORTED = (
    "an s3://bucket/prefix URI, a local path or file:// URI, a prefect-aws S3Bucket block, or an ImageStore"
)
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def resolve_store(
    target: ImageStore | S3Bucket | str | os.PathLike[str] | None = None, *, parameter: str = "storage"
) -> ImageStore:
    """The image store for ``target``, given as ``parameter`` (named in its error messages).

    None means ``$GPT_IMAGE_STORAGE`` (a path or an ``s3://`` URI), else ./gpt-image-output;
    ``s3://bucket/prefix`` an S3 store (boto3's standard credentials and endpoint); any other
    string or path a local folder; an ``S3Bucket`` block its bucket; an ImageStore itself.
    A location that names no store (a malformed URI, an unknown scheme) is a ValueError naming
    ``parameter``, the location and what to set.
    """
    if isinstance(target, ImageStore):
        return target
    if target is None:
        configured = os.environ.get(STORAGE_ENV, "").strip()
        if configured:
            return _from_string(
                configured, f"{parameter} (unset, so ${STORAGE_ENV}={safe_location(configured)!r})"
            )
        return _named(LocalImageStore(default_local_root()), f"{parameter} (unset: the default folder)")
    if isinstance(target, os.PathLike):
        return _named(LocalImageStore(target), f"{parameter}={os.fspath(target)!r}")
    if isinstance(target, str):
        return _from_string(target, f"{parameter}={safe_location(target)!r}")
    from prefect_aws import S3Bucket

    if isinstance(target, S3Bucket):
        store = S3ImageStore.from_s3_bucket_block(target)
        return _named(store, f"{parameter} ({store.credentials_block})")
    raise ValueError(f"{parameter}: cannot store images in a {type(target).__name__}: expected {_SUPPORTED}")


def safe_location(location: str) -> str:
    """``location`` as an error message may show it: a URI without user info, query or fragment
    (where keys or signatures would be)."""
    text = location.strip()
    if _SCHEME_RE.match(text) is None:
        return text
    parts = urlsplit(text)
    if "@" not in parts.netloc and not parts.query and not parts.fragment:
        return text
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def _named(store: ImageStore, origin: str) -> ImageStore:
    store.origin = origin
    return store


def _from_string(target: str, origin: str) -> ImageStore:
    text = target.strip()
    try:
        if not text:
            raise ValueError("empty storage location")
        match = _SCHEME_RE.match(text)
        if match is None:
            return _named(LocalImageStore(Path(text)), origin)
        scheme = match.group(1).lower()
        if scheme == "s3":
            return _named(S3ImageStore.from_uri(text), origin)
        if scheme == "file":
            return _named(LocalImageStore(path_from_file_uri(text)), origin)
        raise ValueError(f"unsupported storage scheme {scheme}://")
    except ValueError as exc:
        raise ValueError(f"{origin}: {exc}. Set it to {_SUPPORTED}") from None
