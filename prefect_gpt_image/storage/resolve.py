"""Turn whatever a user passes as "storage" into an :class:`ImageStore`."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from .base import ImageStore
from .local import STORAGE_ENV, LocalImageStore, default_local_root, path_from_file_uri
from .s3 import S3ImageStore

if TYPE_CHECKING:
    from prefect_aws import S3Bucket

__all__ = ["resolve_store"]

_SUPPORTED = (
    "an s3://bucket/prefix URI, a local path or file:// URI, a prefect-aws S3Bucket block, or an ImageStore"
)
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def resolve_store(target: ImageStore | S3Bucket | str | os.PathLike[str] | None = None) -> ImageStore:
    """The image store for ``target``.

    None means ``$GPT_IMAGE_STORAGE`` (a path or an ``s3://`` URI), else ./gpt-image-output;
    ``s3://bucket/prefix`` an S3 store (boto3's standard credentials and endpoint); any other
    string or path a local folder; an ``S3Bucket`` block its bucket; an ImageStore itself.
    """
    if isinstance(target, ImageStore):
        return target
    if target is None:
        configured = os.environ.get(STORAGE_ENV, "").strip()
        return resolve_store(configured) if configured else LocalImageStore(default_local_root())
    if isinstance(target, os.PathLike):
        return LocalImageStore(target)
    if isinstance(target, str):
        return _from_string(target)
    from prefect_aws import S3Bucket

    if isinstance(target, S3Bucket):
        return S3ImageStore.from_s3_bucket_block(target)
    raise ValueError(f"cannot store images in a {type(target).__name__}: expected {_SUPPORTED}")


def _from_string(target: str) -> ImageStore:
    text = target.strip()
    if not text:
        raise ValueError(f"empty storage location: expected {_SUPPORTED}")
    match = _SCHEME_RE.match(text)
    if match is None:
        return LocalImageStore(Path(text))
    scheme = match.group(1).lower()
    if scheme == "s3":
        return S3ImageStore.from_uri(text)
    if scheme == "file":
        return LocalImageStore(path_from_file_uri(text))
    raise ValueError(f"unsupported storage scheme {scheme}://: expected {_SUPPORTED}")
