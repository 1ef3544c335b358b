"""The storage block: where generated images, their manifests and the cache records go."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time

from prefect.blocks.core import Block
from prefect_aws import S3Bucket
from pydantic import Field

from prefect_gpt_image.storage import MAX_PRESIGN_TTL, ImageStore, S3ImageStore, resolve_store
from prefect_gpt_image.storage.resolve import safe_location

from ._meta import DOCUMENTATION_URL, LOGO_URL

__all__ = ["STORE_REUSE_SECONDS", "GptImageStorage"]

STORE_REUSE_SECONDS = 300.0
"""How long an S3 store (and its boto3 client) is reused for the same configuration: short
enough that temporary (assumed-role) credentials are renewed."""
_store_cache: dict[str, tuple[float, ImageStore]] = {}
_cache_lock = threading.Lock()


class GptImageStorage(Block):
    """Where images go: a local folder, an ``s3://bucket/prefix`` URI, or a prefect-aws
    ``S3Bucket`` block (which takes precedence over ``location``).

    Images are stored content-addressed with a JSON manifest beside each; the tasks keep their
    cache records in the same place, so a rerun on another machine finds them. Links shown in
    the Prefect UI are presigned URLs valid ``presign_ttl_seconds`` (at most 7 days), or lasting
    URLs under ``public_base_url`` when the prefix is publicly readable (e.g. through a CDN).

    Example:
        An S3 bucket through a saved prefect-aws block::

            from prefect_aws import AwsCredentials, S3Bucket
            from prefect_gpt_image.blocks import GptImageStorage

            aws = AwsCredentials.load("aws")
            bucket = S3Bucket(bucket_name="images", bucket_folder="gpt", credentials=aws)
            GptImageStorage(s3_bucket=bucket, presign_ttl_seconds=86400).save("images")

            store = GptImageStorage.load("images").get_store()
    """

    _block_type_name = "GPT Image Storage"
    _logo_url = LOGO_URL  # type: ignore[assignment]
    _documentation_url = DOCUMENTATION_URL  # type: ignore[assignment]
    _description = "Where gpt-image-2 results, manifests and cache records are stored: a folder or S3."

    location: str | None = Field(
        default=None,
        description=(
            "A local folder or an s3://bucket/prefix URI (boto3's standard credentials). Unset: "
            "$GPT_IMAGE_STORAGE, else ./gpt-image-output. Ignored when an S3 bucket block is set."
        ),
        examples=["./gpt-image-output", "s3://my-bucket/images"],
    )
    s3_bucket: S3Bucket | None = Field(
        default=None,
        description="A prefect-aws S3 bucket block (its folder is the prefix); takes precedence.",
        title="S3 bucket",
    )
    public_base_url: str | None = Field(
        default=None,
        description="Base URL under which stored S3 keys are publicly readable (CDN, public-read prefix).",
    )
    presign_ttl_seconds: int = Field(
        default=3600,
        ge=1,
        le=MAX_PRESIGN_TTL,
        description="Lifetime of presigned S3 links, in seconds (at most 7 days).",
    )

    def get_store(self, *, parameter: str = "storage") -> ImageStore:
        """The :class:`~prefect_gpt_image.storage.ImageStore` these settings describe, given as
        ``parameter`` (its error messages name it, and this block when it is a saved one).

        S3 stores are reused for a few minutes per configuration (making a boto3 client costs
        about 0.2 s of CPU, once per task otherwise); local stores are made each time.
        """
        origin = self._origin(parameter)
        fingerprint = self._fingerprint()
        if fingerprint is None:
            return self._make_store(parameter, origin)
        fingerprint += origin or ""
        now = time.monotonic()
        with _cache_lock:
            cached = _store_cache.get(fingerprint)
            if cached is not None and now - cached[0] < STORE_REUSE_SECONDS:
                return cached[1]
        store = self._make_store(parameter, origin)
        with _cache_lock:
            _store_cache[fingerprint] = (now, store)
            for stale in [k for k, (made, _) in _store_cache.items() if now - made >= STORE_REUSE_SECONDS]:
                del _store_cache[stale]
        return store

    def _origin(self, parameter: str) -> str | None:
        """Where the store comes from, for its error messages: this block if saved, else what it
        holds; None: ``$GPT_IMAGE_STORAGE`` or the default folder (:func:`resolve_store` says)."""
        if self._block_document_name:
            return f"{parameter} (GptImageStorage block {self._block_document_name!r})"
        if self.s3_bucket is not None:
            name = self.s3_bucket._block_document_name
            return f"{parameter} (S3Bucket block {name!r})" if name else f"{parameter} (an S3Bucket block)"
        location = (self.location or "").strip()
        return f"{parameter}={safe_location(location)!r}" if location else None

    def _make_store(self, parameter: str, origin: str | None) -> ImageStore:
        location = (self.location or "").strip()
        store: ImageStore
        if self.s3_bucket is not None:
            store = S3ImageStore.from_s3_bucket_block(
                self.s3_bucket, public_base_url=self.public_base_url, presign_ttl=self.presign_ttl_seconds
            )
        elif location.lower().startswith("s3://"):
            try:
                store = S3ImageStore.from_uri(
                    location, public_base_url=self.public_base_url, presign_ttl=self.presign_ttl_seconds
                )
            except ValueError as exc:
                raise ValueError(f"{origin}: {exc}. Set it to an s3://bucket/prefix URI") from None
        else:
            store = resolve_store(location or None, parameter=parameter)
        if origin is not None:
            store.origin = origin
        return store

    def _fingerprint(self) -> str | None:
        """A digest of everything an S3 store is made from (secrets included, never kept in
        clear), or None for a local store."""
        location = (self.location or "").strip().lower()
        if self.s3_bucket is None and not location.startswith("s3://"):
            return None
        material = self.model_dump_json(context={"include_secrets": True})
        if self.s3_bucket is None:  # boto3's standard chain: the environment matters
            material += json.dumps(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))
        return hashlib.sha256(material.encode()).hexdigest()
