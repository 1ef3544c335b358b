"""A bounded task runner for image batches in sync flows."""

from __future__ import annotations

from typing import Any, cast

from prefect.futures import PrefectFuture
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from prefect_gpt_image.blocks import GptImageSettings

__all__ = ["bounded_task_runner"]


def bounded_task_runner(
    max_workers: int | None = None, settings: GptImageSettings | None = None
) -> TaskRunner[PrefectFuture[Any]]:
    """A ``ThreadPoolTaskRunner`` with a bounded pool, for flows that submit many image tasks.

    Prefect's default pool is unbounded (200 submitted tasks make about 200 threads, nearly all
    waiting for a concurrency slot). The default size is twice the settings' ``concurrency_limit``
    (at least 4): enough for every slot to be busy while other tasks read inputs, hit the cache or
    store results. Use it as ``@flow(task_runner=bounded_task_runner())`` (typed as the
    ``TaskRunner`` that ``@flow`` expects, which a bare ``ThreadPoolTaskRunner[Any]`` is not to mypy).
    """
    if max_workers is None:
        limit = (settings or GptImageSettings()).concurrency_limit
        max_workers = max(4, 2 * limit)
    if max_workers < 1:
        raise ValueError("max_workers must be at least 1")
    return cast("TaskRunner[PrefectFuture[Any]]", ThreadPoolTaskRunner(max_workers=max_workers))
