"""Prefect tasks for gpt-image-2: :func:`generate_image`, :func:`edit_image`, :func:`blend_images`.

They return :class:`ImageRef` records (never bytes), cache results in the image store (so a rerun
anywhere pays nothing), make identical concurrent calls pay once (a lock per request), hold a
slot of a Prefect global concurrency limit for every paid call, keep paid images in a local spool
when storage fails, enforce per-run budgets and publish artifacts.

This package is the Prefect face of one call (the tasks, sync/async dispatch, submission, the
task runner); the call itself is the engine in :mod:`prefect_gpt_image.calls`. The names users
import from here (the errors, ``ImageRef``, ``read_manifest``, the lock managers) are re-exported.
"""

from prefect_gpt_image.calls import (
    BatchFailedError,
    BudgetExceededError,
    CacheLockTimeoutError,
    ImageInput,
    ImageLockManager,
    ImageRef,
    ImagesLostError,
    ImagesSpooledError,
    ImageStorageError,
    ImageTaskError,
    InputImageError,
    PartialDeliveryError,
    aclose_clients,
    get_lock_manager,
    is_safe_to_retry,
    read_manifest,
    retry_condition,
    use_lock_manager,
)

from .dispatch import sync_or_async
from .images import StorageOption, blend_images, edit_image, generate_image
from .runner import bounded_task_runner

__all__ = [
    "BatchFailedError",
    "BudgetExceededError",
    "CacheLockTimeoutError",
    "ImageInput",
    "ImageLockManager",
    "ImageRef",
    "ImageStorageError",
    "ImageTaskError",
    "ImagesLostError",
    "ImagesSpooledError",
    "InputImageError",
    "PartialDeliveryError",
    "StorageOption",
    "aclose_clients",
    "blend_images",
    "bounded_task_runner",
    "edit_image",
    "generate_image",
    "get_lock_manager",
    "is_safe_to_retry",
    "read_manifest",
    "retry_condition",
    "sync_or_async",
    "use_lock_manager",
]
