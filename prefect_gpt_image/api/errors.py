"""Every exception the gpt-image-2 client raises, in one hierarchy.

    GptImageError                      base of everything below
    ├── ConfigurationError             no key, a key paired with the other service's URL, or a key
    │                                  over plain http to a non-loopback host: nothing was sent
    ├── RequestValidationError         refused before any HTTP request (nothing was paid)
    ├── APIStatusError                 the API answered with an error status or error event
    │   ├── BadRequestError            400: bad parameters or input images
    │   │   └── ModerationError        400 with code ``moderation_blocked``
    │   ├── AuthenticationError        401: missing or invalid key
    │   ├── PermissionDeniedError      402/403: model not allowed
    │   │   └── InsufficientQuotaError 402/403 with a quota code: no balance left
    │   ├── NotFoundError              404: wrong path or model
    │   ├── RequestTooLargeError       413: body too large
    │   ├── RateLimitError             429: retried by the client's policy
    │   ├── ServerError                5xx: retried by the client's policy
    │   └── StreamErrorEvent           an ``error`` event inside an SSE stream
    ├── APIConnectionError             transport failed
    │   ├── ConnectionFailedError      the request never left: safe to retry
    │   └── OutcomeUnknownError        sent, but no complete answer: it may have been billed
    │       └── ResponseTimeoutError   the read (or stream idle) timeout expired
    ├── InvalidResponseError           malformed JSON/SSE, or a stream with no completed image
    ├── DownloadError                  a result URL could not be fetched or is not a valid image
    │   └── UnsafeURLError             a result URL points off the allowlist
    ├── RefusedURLError                an input URL names a host the policy refuses (netpolicy)
    ├── URLFetchError                  an allowed input URL could not be fetched as an image
    └── RefusedInputError              an input path or bucket the policy refuses (inputpolicy)

Defined above this layer, on the same base (see :mod:`prefect_gpt_image.calls.errors`):
``ImageTaskError`` and its subclasses (budget, input, lock, storage errors, and
``PartialDeliveryError``, a :class:`DownloadError` of an answer some of whose images were stored),
``BatchFailedError`` (what a batch flow or ``image_pipeline`` called without ``return_state=True``
raises when rows failed, with the run's result attached), and ``TemplateError``
(:mod:`prefect_gpt_image.flows.templates`), and the local servers' ``LocalS3Error`` and
``LocalPrefectError``. A class that was a ``ValueError``, ``TimeoutError`` or ``RuntimeError``
before still is one.

Every one pickles and unpickles with its attributes (``pickle``, ``cloudpickle``): Prefect persists
a failed task's or flow's exception as its result, and reads it back.

Each error carries the request id the gateway assigned (``X-Oneapi-Request-Id``, ``x-request-id``
or the `` (request id: ...)`` suffix of the message) so a failure can be traced on the vendor side.
Messages never contain the API key: the client redacts it before an error is built.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "AuthenticationError",
    "BadRequestError",
    "ConfigurationError",
    "ConnectionFailedError",
    "DownloadError",
    "GptImageError",
    "InsufficientQuotaError",
    "InvalidResponseError",
    "ModerationError",
    "NotFoundError",
    "OutcomeUnknownError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestTooLargeError",
    "RequestValidationError",
    "ResponseTimeoutError",
    "ServerError",
    "StreamErrorEvent",
    "UnsafeURLError",
    "error_for_status",
    "request_id_from",
]

_REQUEST_ID_SUFFIX = re.compile(r"\(request id: ([A-Za-z0-9_-]+)\)\s*$")
_QUOTA_CODES = {"insufficient_user_quota", "insufficient_quota", "quota_exceeded"}


class GptImageError(Exception):
    """Base class of every error raised by :mod:`prefect_gpt_image`'s API layer.

    ``retryable`` tells whether repeating the same request is safe and may succeed;
    ``maybe_billed`` tells whether the provider may have charged for the failed request.
    """

    retryable: bool = False
    maybe_billed: bool = False

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id

    def __str__(self) -> str:
        if self.request_id and self.request_id not in self.message:
            return f"{self.message} (request id: {self.request_id})"
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as the class, ``args`` and attributes, not by calling ``__init__`` again: the
        constructors of the subclasses take keyword-only or computed arguments, which the
        default (``cls(*args)``) cannot give back. The attributes hold no secret: the key is
        redacted from every message before an error is raised."""
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


def _rebuild(cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]) -> BaseException:
    """An unpickled error of class ``cls``: its ``args`` and attributes as they were pickled."""
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error


class ConfigurationError(GptImageError, ValueError):
    """The client cannot be configured to send a request; nothing was sent.

    Raised for: no API key anywhere; an ``OPENAI_API_KEY`` that would go to
    ``GPT_IMAGE_BASE_URL`` (or another host than OpenAI's pair); a key that would travel over plain
    http to a host that is not loopback. The message says how to fix it and never holds the key.
    A ``ValueError`` too, as the missing-key error was before.
    """


class RequestValidationError(GptImageError, ValueError):
    """The request breaks a rule of the API contract; it was refused before being sent.

    ``errors`` lists one ``(field, value, rule)`` triple per broken rule.
    """

    def __init__(self, errors: list[tuple[str, Any, str]]) -> None:
        self.errors = errors
        lines = [f"{field}={_short(value)}: {rule}" for field, value, rule in errors]
        super().__init__("invalid request: " + "; ".join(lines))


class APIStatusError(GptImageError):
    """The API answered with an error: HTTP status, the envelope's type, code and param."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None,
        type: str | None = None,
        code: str | int | None = None,
        param: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.status = status
        self.type = type
        self.code = code
        self.param = param
        self.retry_after = retry_after
        """Seconds the server asked us to wait (``Retry-After`` / ``retry-after-ms``), if any."""

    def __str__(self) -> str:
        head = f"HTTP {self.status}" if self.status is not None else "stream error"
        detail = ", ".join(
            f"{k}={v}" for k, v in (("type", self.type), ("code", self.code)) if v not in (None, "")
        )
        text = f"{head} ({detail}): {self.message}" if detail else f"{head}: {self.message}"
        if self.request_id and self.request_id not in text:
            text += f" (request id: {self.request_id})"
        return text


class BadRequestError(APIStatusError):
    """400: the API refused the parameters or an input image."""


class ModerationError(BadRequestError):
    """400 ``moderation_blocked``: the prompt or an image was refused by moderation."""


class AuthenticationError(APIStatusError):
    """401: the API key is missing or invalid."""


class PermissionDeniedError(APIStatusError):
    """402/403: the key may not use this model or endpoint."""


class InsufficientQuotaError(PermissionDeniedError):
    """402/403 with a quota code: the account has no balance left."""


class NotFoundError(APIStatusError):
    """404: wrong path or unknown model."""


class RequestTooLargeError(APIStatusError):
    """413: the request body is too large."""


class RateLimitError(APIStatusError):
    """429: rate limited. Retried with backoff by the client's policy."""

    retryable = True


class ServerError(APIStatusError):
    """5xx: upstream failure, maintenance or no channel. Retried with backoff."""

    retryable = True


class StreamErrorEvent(APIStatusError):
    """An SSE ``error`` event arrived mid-stream: the generation failed after it started.

    The gateway may already have billed it, so it is not retried unless outcome-unknown retries are on.
    """

    maybe_billed = True


class APIConnectionError(GptImageError):
    """The transport failed: no HTTP answer was received."""


class ConnectionFailedError(APIConnectionError):
    """The connection could not be made, so the request was never sent. Safe to retry."""

    retryable = True


class OutcomeUnknownError(APIConnectionError):
    """The request was sent but no complete answer came back (timeout, dropped connection).

    The provider may have generated and billed the images. Retrying could pay twice, so the
    client retries it only when ``RetryPolicy.retry_outcome_unknown`` is set.
    """

    maybe_billed = True


class ResponseTimeoutError(OutcomeUnknownError):
    """The read timeout (or the idle timeout between stream events) expired."""


class InvalidResponseError(GptImageError):
    """The API's answer could not be understood: malformed JSON or SSE, or no image in it."""

    maybe_billed = True


class DownloadError(GptImageError):
    """A result image could not be fetched, or its bytes are not the image they claim to be.

    The images were generated (and billed); ``url`` says which one was lost, ``images`` holds
    the other images of the same answer that did arrive, so a caller can still keep them, and
    ``undelivered`` how many of the answer's images were billed but not delivered.
    """

    maybe_billed = True

    def __init__(self, message: str, *, url: str | None = None, request_id: str | None = None):
        super().__init__(message, request_id=request_id)
        self.url = url
        self.images: list[Any] = []
        self.undelivered = 0


class UnsafeURLError(DownloadError):
    """A result URL points outside the allowed media hosts (or to a private address)."""


def request_id_from(headers: Mapping[str, str], message: str | None = None) -> str | None:
    """The gateway's request id: ``X-Oneapi-Request-Id``, then ``x-request-id``, then the message."""
    for name in ("x-oneapi-request-id", "x-request-id"):
        value = headers.get(name)
        if value:
            return value
    if message:
        match = _REQUEST_ID_SUFFIX.search(message)
        if match:
            return match.group(1)
    return None


def error_for_status(
    status: int | None,
    body: Any,
    *,
    request_id: str | None = None,
    fallback_message: str = "",
) -> APIStatusError:
    """Build the right :class:`APIStatusError` subclass from a status and an error envelope."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        err = {}
    message = str(err.get("message") or fallback_message or f"HTTP {status}")
    type_ = err.get("type") if isinstance(err.get("type"), str) else None
    code = err.get("code") if isinstance(err.get("code"), (str, int)) else None
    param = err.get("param") if isinstance(err.get("param"), str) else None
    request_id = request_id or request_id_from({}, message)
    cls: type[APIStatusError]
    if status is None:
        cls = StreamErrorEvent
    elif status == 400:
        cls = ModerationError if code == "moderation_blocked" else BadRequestError
    elif status == 401:
        cls = AuthenticationError
    elif status in (402, 403):
        quota = code in _QUOTA_CODES or type_ in _QUOTA_CODES
        cls = InsufficientQuotaError if quota else PermissionDeniedError
    elif status == 404:
        cls = NotFoundError
    elif status == 413:
        cls = RequestTooLargeError
    elif status == 429:
        cls = RateLimitError
    elif status >= 500:
        cls = ServerError
    else:
        cls = BadRequestError
    return cls(message, status=status, type=type_, code=code, param=param, request_id=request_id)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
