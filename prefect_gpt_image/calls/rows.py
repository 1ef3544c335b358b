"""A paid call as a row (or a row's step) of a batch or chain: :func:`run_row_call`, the same
billing-safe call as the image tasks, with their retries, without a Prefect task run of its own."""

from __future__ import annotations

from functools import partial

from prefect_gpt_image.api import (
    EditRequest,
    GenerateRequest,
)
from prefect_gpt_image.blocks import GptImageCredentials, GptImageSettings
from prefect_gpt_image.storage import ImageStore

from .call import CallResult, run_image_call
from .context import run_logger
from .retry import with_retries

__all__ = ["run_row_call"]


async def run_row_call(
    request: GenerateRequest | EditRequest,
    *,
    variant: int,
    credentials: GptImageCredentials | None,
    settings: GptImageSettings,
    store: ImageStore,
    what: str,
) -> CallResult:
    """:func:`run_image_call` for a row (or a row's step) of a batch: the image tasks' guarantees
    and their retries (:func:`~.retry.with_retries`), without a Prefect task run of its own (one
    cost the flow process and the Prefect server more CPU than the rest of the call; the batch's
    table lists every call). ``what`` names the row in the retry warnings."""
    return await with_retries(
        partial(
            run_image_call,
            request,
            variant=variant,
            refresh_cache=False,
            credentials=credentials,
            settings=settings,
            store=store,
            on_partial=None,
        ),
        logger=run_logger(),
        what=what,
    )
