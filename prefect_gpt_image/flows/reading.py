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

from botocore.exceptions import BotoCoreError, ClientError

from prefect_gpt_image.api import GptImageError
from prefect_gpt_image.storage.diagnosis import diagnose

__all__ = ["InputSourceError", "reading"]


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
    diagnosis = diagnose(exc)  # the cause in plain words, as the storage's errors say it
    where = (
        f"bucket {bucket!r} is the storage's bucket, read with the storage block's credentials: check "
        "that block (python deployments/blocks.py --s3-bucket-block NAME, or the UI's Blocks page)"
        if store_bucket == bucket
        else "a bucket other than the storage's is read with boto3's standard credentials on the worker "
        "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile or an instance role; AWS_ENDPOINT_URL "
        "for an S3-compatible server); a prefix in the storage block's bucket uses that block's"
    )
    if diagnosis.kind in (
        "no-bucket",
        "no-object",
    ):  # nothing to fix in the credentials: the URI names nothing
        return (
            f"{parameter}: cannot read {uri!r}: {diagnosis.cause}. Set the {parameter!r} parameter to an "
            "existing folder, s3:// prefix or object"
        )
    return (
        f"{parameter}: cannot read {uri!r}: {diagnosis.cause}. Set the {parameter!r} parameter to a folder "
        f"or s3:// URI this worker can read; {where}"
    )
