"""The gpt-image-2 HTTP client: request/response models, errors and the client itself.

This layer does not import Prefect, so it can be used (and tested) on its own.
"""

from .client import AsyncImagesClient, ImagesClient, PartialCallback, RetryEvent
from .config import DEFAULT_BASE_URL, ClientConfig, RetryPolicy, Timeouts
from .errors import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
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
from .models import (
    EditRequest,
    GeneratedImage,
    GenerateRequest,
    ImagesResponse,
    PartialImage,
    StreamEvent,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "APIConnectionError",
    "APIStatusError",
    "AsyncImagesClient",
    "AuthenticationError",
    "BadRequestError",
    "ClientConfig",
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
