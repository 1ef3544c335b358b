"""The gpt-image-2 HTTP client: request/response models, errors and the client itself.

This layer does not import Prefect, so it can be used (and tested) on its own. Its modules:

- ``client``: :class:`AsyncImagesClient` and :class:`ImagesClient`, and one attempt of a call
- ``wire`` (the HTTP request of a call), ``answers`` (reading a JSON answer and its images),
  ``streaming`` (reading an SSE answer), ``retrying`` (the retry loop), ``callbacks`` (what a
  caller is told during a call)
- ``models`` (requests and the contract's rules), ``responses`` (answers and result images)
- ``errors``: every exception of the package, in one hierarchy
- ``config`` (settings, timeouts, retry policy, which key goes where), ``download`` (fetching and
  checking result images), ``images`` (input images), ``netpolicy`` / ``inputpolicy`` (what a run
  may fetch and read), ``loops`` (the sync client's event-loop thread)
"""

from .callbacks import PartialCallback, RetryEvent
from .client import AsyncImagesClient, ImagesClient
from .config import DEFAULT_BASE_URL, OPENAI_BASE_URL, ClientConfig, RetryPolicy, Timeouts
from .errors import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ConnectionFailedError,
    DownloadError,
    GptImageError,
    InsufficientQuotaError,
    InvalidResponseError,
    ModerationError,
    NotFoundError,
    OutcomeUnknownError,
    PermissionDeniedError,
    RateLimitError,
    RequestTooLargeError,
    RequestValidationError,
    ResponseTimeoutError,
    ServerError,
    StreamErrorEvent,
    UnsafeURLError,
)
from .images import InputImage, load_input_image
from .models import EditRequest, GenerateRequest
from .responses import GeneratedImage, ImagesResponse, PartialImage, StreamEvent

__all__ = [
    "DEFAULT_BASE_URL",
    "OPENAI_BASE_URL",
    "APIConnectionError",
    "APIStatusError",
    "AsyncImagesClient",
    "AuthenticationError",
    "BadRequestError",
    "ClientConfig",
    "ConfigurationError",
    "ConnectionFailedError",
    "DownloadError",
    "EditRequest",
    "GenerateRequest",
    "GeneratedImage",
    "GptImageError",
    "ImagesClient",
    "ImagesResponse",
    "InputImage",
    "InsufficientQuotaError",
    "InvalidResponseError",
    "ModerationError",
    "NotFoundError",
    "OutcomeUnknownError",
    "PartialCallback",
    "PartialImage",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestTooLargeError",
    "RequestValidationError",
    "ResponseTimeoutError",
    "RetryEvent",
    "RetryPolicy",
    "ServerError",
    "StreamErrorEvent",
    "StreamEvent",
    "Timeouts",
    "UnsafeURLError",
    "load_input_image",
]
