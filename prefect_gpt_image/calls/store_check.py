"""Storage failures that say what to set, and the check a call makes before it pays.

:func:`storage_error` is the one place a store's failure becomes an
:class:`~.errors.ImageStorageError` a person can act on: the parameter the store came from
(``storage``, or the ``$GPT_IMAGE_STORAGE`` or block it was resolved from), where it writes (no
key, no presigned query), the cause in plain words and what to set
(:mod:`prefect_gpt_image.storage.diagnosis`). A configuration mistake (no credentials, a wrong key,
access denied, no such bucket, a bucket in another region, a folder that cannot be written) is
marked ``configuration`` and not retried; a refused connection, a timeout or a 5xx is retried.

:func:`check_store` runs :meth:`~prefect_gpt_image.storage.ImageStore.ensure_ready` before a call
or a batch spends anything, once per store and process (one request for S3, a temporary file for a
folder): a store that cannot work costs no API request.
"""

from __future__ import annotations

from prefect_gpt_image.storage import ImageStore
from prefect_gpt_image.storage.diagnosis import diagnose, what_to_set

from .context import in_thread
from .errors import ImageStorageError

__all__ = ["NOTHING_SENT", "check_store", "explain_failure", "storage_error"]

NOTHING_SENT = "nothing was sent (no API request, nothing paid)"
"""How a storage error before the paid call ends."""


def explain_failure(store: ImageStore, error: BaseException, doing: str) -> tuple[str, bool]:
    """The sentence for ``store``'s ``error`` while ``doing`` (e.g. "writing to"): the store's
    origin, where it writes, the cause and what to set; and whether it is a configuration
    mistake (not retried)."""
    diagnosis = diagnose(error)
    message = (
        f"{store.origin}: {doing} {store.location()} failed: {diagnosis.cause}. "
        f"{what_to_set(store, diagnosis)}"
    )
    return message, diagnosis.configuration


def storage_error(store: ImageStore, error: BaseException, doing: str, outcome: str) -> ImageStorageError:
    """The :class:`ImageStorageError` of ``store``'s ``error`` while ``doing``, its message ending
    with ``outcome`` (what happened to the call: nothing sent, images spooled, ...)."""
    message, configuration = explain_failure(store, error, doing)
    return ImageStorageError(f"{message}; {outcome}", configuration=configuration)


async def check_store(store: ImageStore) -> None:
    """Check that ``store`` can work before anything is paid (once per store and process); an
    :class:`ImageStorageError` saying what to set if not, before any API request."""
    if store.ready:  # checked before: every call of a batch asks, so no thread hop for it
        return
    try:
        await in_thread(store.ensure_ready)
    except Exception as exc:
        raise storage_error(store, exc, "checking", NOTHING_SENT) from exc
