"""Errors the image tasks raise on top of the API client's (``prefect_gpt_image.api.errors``).

    GptImageError (prefect_gpt_image.api.errors)
    ├── ImageTaskError                 base of the errors the image tasks raise themselves
    │   ├── BudgetExceededError        a per-run cap would be exceeded: nothing was sent
    │   ├── InputImageError            an input image or mask could not be read: nothing was sent
    │   ├── CacheLockTimeoutError      another run held this image's lock too long: nothing was sent
    │   ├── ImageStorageError          the store failed before the paid call: nothing was sent
    │   │   └── ImagesSpooledError     paid images were kept in the local spool; a rerun stores them
    │   ├── ImagesLostError            paid images could be neither stored nor spooled
    │   └── PartialDeliveryError       (also a DownloadError) some images of an answer were given
    │                                  up: those that arrived are stored, the rest billed, not delivered
    └── BatchFailedError               rows of a batch flow (or a step of image_pipeline) failed; the
                                       run's result is attached

Each keeps the standard base it had (``InputImageError`` is a ``ValueError``,
``CacheLockTimeoutError`` a ``TimeoutError``), so existing handlers still catch them.

Which errors Prefect may retry is decided in :mod:`prefect_gpt_image.calls.retry`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect_gpt_image.api.errors import DownloadError, GptImageError

__all__ = [
    "BatchFailedError",
    "BudgetExceededError",
    "CacheLockTimeoutError",
    "ImageStorageError",
    "ImageTaskError",
    "ImagesLostError",
    "ImagesSpooledError",
    "InputImageError",
    "PartialDeliveryError",
]


class ImageTaskError(GptImageError):
    """Base class of the errors raised by the image tasks themselves."""


class BudgetExceededError(ImageTaskError):
    """The call would exceed a per-flow-run cap (``max_images_per_run`` or ``max_cost_per_run``).

    Raised before anything is sent, so nothing was paid; ``cap`` names the setting.
    """

    def __init__(self, message: str, *, cap: str) -> None:
        super().__init__(message)
        self.cap = cap


class InputImageError(ImageTaskError, ValueError):
    """An input image or mask could not be read or is not a valid image. Nothing was sent."""


class CacheLockTimeoutError(ImageTaskError, TimeoutError):
    """Another run kept the lock of the same image request longer than a call can take.

    Nothing was sent; a retry waits for the lock again (a stale lock expires by itself).
    """


class ImageStorageError(ImageTaskError):
    """Reading from or writing to the image store failed.

    Before the paid call nothing was spent; after it the images were spooled (see
    :class:`ImagesSpooledError`), so either way a retry pays nothing twice. The message names the
    ``storage`` parameter (or what it was resolved from), the store, the cause and what to set
    (:mod:`prefect_gpt_image.calls.store_check`). ``configuration`` is True for a mistake no retry
    can fix (no credentials, a wrong key, access denied, no such bucket, ...): it is not retried.
    """

    def __init__(self, message: str, *, configuration: bool = False) -> None:
        super().__init__(message)
        self.configuration = configuration


class ImagesSpooledError(ImageStorageError):
    """The API returned images but storing them failed: they are kept in the local spool.

    ``spool_path`` is where; the next run with the same request stores them from there without
    a new paid call, then clears the spool entry.
    """

    def __init__(self, message: str, *, spool_path: Path, count: int, configuration: bool = False) -> None:
        super().__init__(message, configuration=configuration)
        self.spool_path = spool_path
        self.count = count


class ImagesLostError(ImageTaskError):
    """The API returned (and billed) images, but they could be neither stored nor spooled.

    The message names the request id and the images' SHA-256. Not retried: a retry would pay
    again.
    """


class PartialDeliveryError(ImageTaskError, DownloadError):
    """An answer of ``n`` images of which some result URLs were given up (see
    ``RetryPolicy.media_retry_seconds``): every image that arrived is stored, ``refs`` lists them
    (with their links), and ``undelivered`` images of ``request_id`` were billed but not
    delivered. A :class:`~prefect_gpt_image.api.DownloadError` too, so handlers of lost downloads
    still catch it.

    The call's cache record is *partial*: it lists the stored images and how many are missing, so
    it is never served as the whole answer; the next run of the same request asks the API only for
    the missing images (``n`` = their number), stores them under the same cache key and makes the
    record whole, paying nothing again for the stored ones.
    """

    def __init__(
        self,
        message: str,
        *,
        refs: list[Any],
        undelivered: int,
        url: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, url=url, request_id=request_id)
        self.refs = refs
        self.undelivered = undelivered


class BatchFailedError(GptImageError):
    """Rows of a batch flow, or a step of ``image_pipeline``, failed: what the flow raises when
    called without ``return_state=True`` (with it, the returned state is ``Failed`` as before).

    The message is a few lines whatever the batch's size: the counts by error type, the first
    failed rows (number, id, error) and where the run's table artifact and CSV report are.
    ``result`` is the run's result, so the stored rows can still be used: a ``BatchResult``
    (``batch_generate``) or a ``ChainResult`` (``batch_edit``, ``batch_pipeline``,
    ``image_pipeline``). It pickles with its result (Prefect persists a failed run's exception).
    """

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result
