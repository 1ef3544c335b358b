"""What went wrong with a store, in plain words, and what to set: the one place that reads a
boto3 or file-system error for people.

:func:`diagnose` names the cause of a storage failure (never the keys, never a presigned query:
only botocore's error *code* is kept, not its message) and whether it is a *configuration*
mistake, which no retry can fix, decided per botocore error code:

* not retried (configuration): no credentials, an access key the server does not know, a secret
  that does not match it (``SignatureDoesNotMatch``), access denied, no such bucket, an invalid
  bucket name, a bucket in another region, a local folder that cannot be written;
* retried (transient): a refused or timed-out connection (the server may be restarting, even at
  the first try of a run), 5xx answers and throttling, and anything not recognised.

:func:`what_to_set` says what to change for a store's failure: the AWS variables or the S3
bucket block's fields the store was made from, the bucket, the endpoint, the region or the folder.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Literal

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from .base import ImageStore

__all__ = ["Diagnosis", "Kind", "diagnose", "what_to_set"]

Kind = Literal[
    "credentials",
    "access-key",
    "signature",
    "denied",
    "no-bucket",
    "no-object",
    "bucket-name",
    "region",
    "folder",
    "unreachable",
    "server",
    "other",
]

_CONFIGURATION: frozenset[Kind] = frozenset(
    {"credentials", "access-key", "signature", "denied", "no-bucket", "bucket-name", "region", "folder"}
)
_CODES: dict[str, Kind] = {
    "InvalidAccessKeyId": "access-key",
    "SignatureDoesNotMatch": "signature",
    "AccessDenied": "denied",
    "AllAccessDisabled": "denied",
    "AccountProblem": "denied",
    "403": "denied",  # a HEAD's answer has no body: its status is its code
    "NoSuchBucket": "no-bucket",
    "NoSuchKey": "no-object",
    "404": "no-object",
    "InvalidBucketName": "bucket-name",
    "PermanentRedirect": "region",
    "301": "region",
    "AuthorizationHeaderMalformed": "region",
    "IllegalLocationConstraintException": "region",
}
_CAUSES: dict[Kind, str] = {
    "credentials": "no AWS credentials on this worker",
    "access-key": "the S3 server does not know this access key id",
    "signature": "the secret access key does not match the access key id",
    "denied": "access denied",
    "no-bucket": "the bucket does not exist",
    "no-object": "no such object",
    "bucket-name": "the bucket name is not a valid S3 bucket name",
    "region": "the bucket is in another region than the client's",
    "folder": "the folder cannot be written",
    "unreachable": "the S3 endpoint cannot be reached",
}
_FOLDER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.EISDIR}


@dataclass(frozen=True)
class Diagnosis:
    """A storage failure read for people: its ``kind``, its ``cause`` in plain words (with the
    error's class and botocore code, never its message) and whether it is a ``configuration``
    mistake (retrying cannot fix it)."""

    kind: Kind
    cause: str
    configuration: bool


def diagnose(exc: BaseException) -> Diagnosis:
    """The kind and cause of storage failure ``exc`` (a boto3/botocore or OS error)."""
    kind, code = _classify(exc)
    name = type(exc).__name__
    detail = f"{name} {code}" if code and code != name else name
    if kind in _CAUSES:
        cause = f"{_CAUSES[kind]} ({detail})"
    elif kind == "server":
        cause = f"the S3 server failed ({detail})"
    elif isinstance(exc, OSError) and exc.strerror:
        cause = f"{exc.strerror.lower()} ({detail})"
    else:
        cause = f"S3 error {code}" if code else detail
    return Diagnosis(kind=kind, cause=cause, configuration=kind in _CONFIGURATION)


def _classify(exc: BaseException) -> tuple[Kind, str]:
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return "credentials", ""
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError, ConnectionClosedError)):
        return "unreachable", ""
    if isinstance(exc, ReadTimeoutError):
        return "server", ""
    if isinstance(exc, ParamValidationError) and "bucket" in str(exc).lower():
        return "bucket-name", ""
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if code in _CODES:
            return _CODES[code], code
        return ("server" if status >= 500 or code in ("SlowDown", "RequestTimeout") else "other"), code
    if isinstance(exc, FileNotFoundError):
        return "no-object", ""
    if isinstance(exc, OSError) and exc.errno in _FOLDER_ERRNOS:
        return "folder", ""
    if isinstance(exc, BotoCoreError):
        return "other", ""
    return "other", ""


def what_to_set(store: ImageStore, diagnosis: Diagnosis) -> str:
    """What to change so that ``store`` works after ``diagnosis``: a sentence naming the AWS
    variables or the S3 bucket block's fields ``store`` was made from (never their values)."""
    # Imported here: the S3 backend's attributes are read, and .s3 imports nothing of this module.
    from .s3 import S3ImageStore

    if not isinstance(store, S3ImageStore):
        if diagnosis.kind == "folder":
            return "Set storage to a folder this worker can create and write (or fix its permissions)"
        return "Check the folder's disk and permissions; the call is retried"
    block = store.credentials_block
    if block is None:
        key_id, secret = "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"
        endpoint = "AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3)"
        region = "AWS_DEFAULT_REGION (or AWS_REGION)"
        keys, held = f"{key_id} and {secret}", ""
        elsewhere = (
            f"{keys} (or AWS_PROFILE, or an instance role) where the flow runs, or set storage to an "
            "S3 bucket block that holds keys ('s3-bucket/NAME', or a GptImageStorage block with s3_bucket)"
        )
    else:
        key_id, secret = "aws_access_key_id", "aws_secret_access_key"
        held = f" in the credentials of {block}"
        endpoint = f"endpoint_url in the aws_client_parameters{held}"
        region = f"region_name{held}"
        keys = f"{key_id} and {secret}{held}"
        elsewhere = f"{keys} (the UI's Blocks page, or python deployments/blocks.py)"
    bucket = store.bucket
    fixes: dict[Kind, str] = {
        "credentials": f"Set {elsewhere}",
        "access-key": f"Check {keys}, and that {endpoint} names the server these keys belong to",
        "signature": f"Set {secret} to the secret of {key_id}{held}",
        "denied": (
            f"Use keys allowed to list, read and write bucket {bucket!r} (s3:ListBucket, s3:GetObject, "
            f"s3:PutObject), or set storage to a bucket these keys may use ({keys})"
        ),
        "no-bucket": (
            f"Create bucket {bucket!r} (aws s3 mb s3://{bucket}), or set storage to an existing bucket; "
            f"check that {endpoint} names the server that has it"
        ),
        "bucket-name": (
            "Set storage to s3://BUCKET/PREFIX with a bucket name of 3-63 lower-case letters, digits, "
            "dots and hyphens"
        ),
        "region": f"Set {region} to the bucket's region",
        "unreachable": (
            f"Nothing answered: if the server is not merely restarting, set {endpoint} to the URL of "
            "your S3-compatible server (unset for AWS itself); the call is retried"
        ),
        "server": "The S3 server failed; the call is retried",
    }
    return fixes.get(diagnosis.kind, f"Check storage's bucket, keys and {endpoint}; the call is retried")
