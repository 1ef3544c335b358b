"""The gpt-image-2 HTTP client: request/response models, errors and the client itself.

This layer does not import Prefect, so it can be used (and tested) on its own.
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
