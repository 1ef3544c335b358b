"""Errors of a flow's inputs that say what to set: the parameter, the URI and the fix.

Every flow reads its inputs (``images``, ``manifest``) through :func:`reading`, so an S3 failure
(no credentials on the worker, a bucket that does not exist, access denied, an endpoint out of
reach) fails the run with one line naming the parameter, the URI and what to set, instead of
boto3's bare ``NoCredentialsError: Unable to locate credentials``. Nothing was paid: inputs are
read before any call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
)

from prefect_gpt_image.api import GptImageError

__all__ = ["InputSourceError", "reading"]

_MISSING = {"NoSuchBucket": "the bucket does not exist", "NoSuchKey": "no such object", "404": "not found"}
_DENIED = {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"}


class InputSourceError(GptImageError, ValueError):
    """A flow's input (``images``, ``manifest``) could not be read: the message names the
    parameter, the URI, the cause and what to set. Raised before anything is paid."""


@contextmanager
def reading(parameter: str, uri: str, store_bucket: str | None = None) -> Iterator[None]:
    """Turn an S3 failure while reading parameter ``parameter``'s ``uri`` into an
    :class:`InputSourceError` saying what to set; ``store_bucket`` is the storage's bucket (read
    with the storage block's credentials), if any."""
    try:
        yield
    except (BotoCoreError, ClientError, FileNotFoundError) as exc:
        raise InputSourceError(_explain(parameter, uri, store_bucket, exc)) from None


def _explain(parameter: str, uri: str, store_bucket: str | None, exc: Exception) -> str:
    bucket = urlsplit(uri).netloc
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        cause = "no AWS credentials on this worker"
    elif isinstance(exc, EndpointConnectionError):
        cause = "the S3 endpoint cannot be reached"
    elif isinstance(exc, FileNotFoundError):
        cause = _MISSING["NoSuchKey"]
    elif isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        cause = _MISSING.get(code) or ("access denied" if code in _DENIED else f"S3 error {code}")
    else:
        cause = "S3 failed"
    where = (
        f"bucket {bucket!r} is the storage's bucket, read with the storage block's credentials: check "
        "that block (python deployments/blocks.py --s3-bucket-block NAME, or the UI's Blocks page)"
        if store_bucket == bucket
        else "a bucket other than the storage's is read with boto3's standard credentials on the worker "
        "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile or an instance role; AWS_ENDPOINT_URL "
        "for an S3-compatible server); a prefix in the storage block's bucket uses that block's"
    )
    if cause in _MISSING.values():  # nothing to fix in the credentials: the URI names nothing
        return (
            f"{parameter}: cannot read {uri!r}: {cause} ({type(exc).__name__}: {exc}). Set the "
            f"{parameter!r} parameter to an existing folder, s3:// prefix or object"
        )
    return (
        f"{parameter}: cannot read {uri!r}: {cause} ({type(exc).__name__}: {exc}). Set the {parameter!r} "
        f"parameter to a folder or s3:// URI this worker can read; {where}"
    )
