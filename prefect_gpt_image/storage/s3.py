"""An S3 image store: AWS S3 or any S3-compatible server (MinIO, R2, SeaweedFS, ...).

Images are written with ``If-None-Match: *`` (never overwritten, even by a concurrent writer) and
an ``x-amz-checksum-sha256`` the server verifies, so a corrupted upload is refused.
"""

from __future__ import annotations

import base64
import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlparse, urlsplit, urlunsplit

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from .base import ImageStore, check_ttl

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from prefect_aws import S3Bucket

__all__ = ["S3ImageStore", "s3_config"]

_CONFLICT_RETRIES = 3


def s3_config(endpoint_url: str | None) -> Config:
    """The client config this package needs: SigV4 (also for presigned URLs), and path-style
    addressing for a custom endpoint (S3-compatible servers rarely have per-bucket host names)."""
    if endpoint_url and not _is_aws(endpoint_url):
        return Config(signature_version="s3v4", s3={"addressing_style": "path"})
    return Config(signature_version="s3v4")


def _is_aws(endpoint_url: str) -> bool:
    host = urlparse(endpoint_url).hostname or ""
    return host.endswith((".amazonaws.com", ".amazonaws.com.cn"))


def _status(exc: ClientError) -> tuple[str, int | None]:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return code, exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def _safe_url(url: str) -> str:
    """``url`` without user info, query or fragment (they may hold credentials)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class S3ImageStore(ImageStore):
    """Images in an S3 bucket under a prefix.

    ``client`` must sign with SigV4 (``Config(signature_version="s3v4")``) for presigned links;
    :meth:`from_uri` and :meth:`from_s3_bucket_block` build such a client. With
    ``public_base_url`` (e.g. a CDN or a public-read prefix) links are ``public_base_url + key``
    and never expire; otherwise they are presigned GETs valid ``presign_ttl`` seconds.
    """

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        prefix: str = "",
        public_base_url: str | None = None,
        presign_ttl: int = 3600,
    ) -> None:
        """A store in ``bucket`` under ``prefix``, using ``client`` for every request."""
        super().__init__(prefix)
        if not bucket or "/" in bucket:
            raise ValueError(f"invalid bucket name {bucket!r}")
        self.client = client
        self.bucket = bucket
        self.public_base_url = public_base_url.rstrip("/") + "/" if public_base_url else None
        self.presign_ttl = check_ttl(presign_ttl)
        self.credentials_block: str | None = None
        """The S3 bucket block whose credentials and endpoint the client was made from (e.g.
        "S3Bucket block 'images'"), for error messages; None: boto3's standard chain (AWS_*
        variables, profiles, instance roles)."""

    @classmethod
    def from_uri(
        cls, uri: str, *, public_base_url: str | None = None, presign_ttl: int = 3600
    ) -> S3ImageStore:
        """A store for ``s3://bucket/prefix`` with boto3's standard configuration chain.

        Credentials, region and endpoint come from the environment or AWS config files
        (``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3`` point it at MinIO, R2, SeaweedFS, ...).
        """
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError("expected an s3://bucket/prefix URI")
        if parsed.query or parsed.fragment or "@" in parsed.netloc:
            raise ValueError("an s3:// URI takes only a bucket and a prefix (no query, no user)")
        session = boto3.session.Session()
        try:
            client = session.client("s3", config=Config(signature_version="s3v4"))
        except ValueError as exc:  # e.g. AWS_ENDPOINT_URL without http(s)://
            raise ValueError(
                f"{exc}: set AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) to an http(s)://host:port URL, "
                "or unset it for AWS itself"
            ) from None
        if not _is_aws(client.meta.endpoint_url):
            client = session.client("s3", config=s3_config(client.meta.endpoint_url))
        return cls(
            client,
            parsed.netloc,
            parsed.path.strip("/"),
            public_base_url=public_base_url,
            presign_ttl=presign_ttl,
        )

    @classmethod
    def from_s3_bucket_block(
        cls, block: S3Bucket, *, public_base_url: str | None = None, presign_ttl: int = 3600
    ) -> S3ImageStore:
        """A store for a prefect-aws ``S3Bucket`` block: its bucket, ``bucket_folder`` as prefix.

        The client is made from the block's credentials (``AwsCredentials`` or
        ``MinIOCredentials``) and their ``aws_client_parameters`` (endpoint, TLS, config), with
        SigV4 signing and, for a custom endpoint, path-style addressing unless the block's own
        config says otherwise.
        """
        credentials = block.credentials
        params: dict[str, Any] = credentials.aws_client_parameters.get_params_override()
        block_config: Config | None = params.pop("config", None)
        config = s3_config(params.get("endpoint_url"))
        if block_config is not None:
            config = config.merge(block_config)
        if credentials.region_name:
            params["region_name"] = credentials.region_name
        session: boto3.session.Session = credentials.get_boto3_session()
        client = session.client("s3", config=config, **params)
        store = cls(
            client,
            block.bucket_name,
            str(block.bucket_folder or "").strip("/"),
            public_base_url=public_base_url,
            presign_ttl=presign_ttl,
        )
        name = getattr(block, "_block_document_name", None)
        store.credentials_block = f"S3Bucket block {name!r}" if name else "the S3Bucket block"
        return store

    def describe(self) -> str:
        """Bucket, prefix, endpoint and kind of links (no credentials)."""
        if self.public_base_url:
            links = f"public links under {_safe_url(self.public_base_url)}"
        else:
            links = f"presigned links valid {self.presign_ttl} s"
        return f"{self.location()} ({links})"

    def location(self) -> str:
        """``S3 s3://bucket/prefix``, with the endpoint when it is not AWS (no credentials)."""
        where = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        endpoint = self.client.meta.endpoint_url
        at = "" if _is_aws(endpoint) else f" at {_safe_url(endpoint)}"
        return f"S3 {where}{at}"

    def _probe(self) -> None:
        """List at most one key under the prefix: one request that needs the credentials (signing
        fails without any, before anything is sent), the bucket, the endpoint and the region, and
        the permission the store's reads already need (s3:ListBucket, as a HEAD on the bucket
        does), answering with an error code (a HEAD's error has no body to tell them apart)."""
        prefix = f"{self.prefix}/" if self.prefix else ""
        self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=1)

    def _create(self, key: str, data: bytes | Path, content_type: str, metadata: dict[str, str]) -> bool:
        checksum = base64.b64encode(bytes.fromhex(metadata["sha256"])).decode()
        for attempt in range(_CONFLICT_RETRIES):
            try:
                if isinstance(data, Path):
                    with data.open("rb") as body:
                        self._put(key, body, content_type, checksum, metadata)
                else:
                    self._put(key, data, content_type, checksum, metadata)
                return True
            except ClientError as exc:
                code, status = _status(exc)
                if code == "PreconditionFailed" or status == 412:
                    return False
                # AWS answers 409 to a conditional write racing another one: try again.
                if (code == "ConditionalRequestConflict" or status == 409) and (
                    attempt < _CONFLICT_RETRIES - 1
                ):
                    time.sleep(0.1 * (attempt + 1))
                    continue
                raise
        raise AssertionError("unreachable")

    def _put(self, key: str, body: Any, content_type: str, checksum: str, metadata: dict[str, str]) -> None:
        self.client.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=body,
            ContentType=content_type,
            ChecksumSHA256=checksum,
            IfNoneMatch="*",
            Metadata=metadata,
        )

    def _write(self, key: str, data: bytes, content_type: str) -> None:
        self.client.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=data,
            ContentType=content_type,
            ChecksumSHA256=base64.b64encode(hashlib.sha256(data).digest()).decode(),
        )

    def _read(self, key: str) -> bytes | None:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            code, status = _status(exc)
            if code == "NoSuchKey" or status == 404:
                return None
            raise
        with response["Body"] as body:
            return body.read()

    def _head(self, key: str) -> dict[str, str] | None:
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _status(exc)[1] == 404:
                return None
            raise
        return dict(response.get("Metadata", {}))

    def _list(self, prefix: str, at_most: int) -> dict[str, float] | None:
        names: dict[str, float] = {}
        token: str | None = None
        while True:
            page = (
                self.client.list_objects_v2(
                    Bucket=self.bucket, Prefix=prefix, Delimiter="/", ContinuationToken=token
                )
                if token
                else self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, Delimiter="/")
            )
            names.update(
                (item["Key"][len(prefix) :], item["LastModified"].timestamp())
                for item in page.get("Contents", [])
            )
            if len(names) > at_most:
                return None
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return names

    def _uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _link(self, key: str, ttl: int | None) -> str:
        if self.public_base_url:
            return self.public_base_url + quote(key, safe="/")
        url = self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": key},
            ExpiresIn=self.presign_ttl if ttl is None else ttl,
        )
        if "X-Amz-Signature=" not in url:
            raise ValueError(
                "the S3 client presigns with SigV2: create it with "
                "botocore.config.Config(signature_version='s3v4')"
            )
        return url

    def _key_from(self, uri_or_key: str) -> str:
        if not uri_or_key.startswith("s3://"):
            return uri_or_key
        bucket, _, key = uri_or_key.removeprefix("s3://").partition("/")
        if bucket != self.bucket:
            raise ValueError(f"{uri_or_key} is not in this store's bucket ({self.bucket})")
        return key
