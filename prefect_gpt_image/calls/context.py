"""Where a call runs: its run logger and run ids, whether it is a batch row, the client
configuration; shared by :mod:`.call`, :mod:`.delivery` and :mod:`.rows`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from prefect.settings import PREFECT_TASKS_REFRESH_CACHE

from prefect_gpt_image.api import DEFAULT_BASE_URL, ClientConfig, ConfigurationError
from prefect_gpt_image.api.pricing import PriceModel
from prefect_gpt_image.blocks import GptImageCredentials, GptImageSettings

__all__ = [
    "batch_rows",
    "call_prices",
    "client_config",
    "in_batch",
    "in_thread",
    "refresh_requested",
    "run_deployment",
    "run_ids",
    "run_logger",
]

_fallback_logger = logging.getLogger("prefect_gpt_image.tasks")
_BATCH_ROW: ContextVar[bool] = ContextVar("prefect_gpt_image_batch_row", default=False)


@contextmanager
def batch_rows() -> Iterator[None]:
    """Image calls made inside are rows of a batch whose table artifact lists each row's image,
    request id and cost: they publish no artifacts of their own (two per image would cost two
    Prefect API calls per row and fill the Artifacts page with thousands of keys) and log their
    success at DEBUG (a line per row buries the batch's warnings). Failures still log as usual."""
    token = _BATCH_ROW.set(True)
    try:
        yield
    finally:
        _BATCH_ROW.reset(token)


def in_batch() -> bool:
    """Whether the current call is a row of a batch (see :func:`batch_rows`)."""
    return _BATCH_ROW.get()


def run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The run's logger; a task run outside any flow logs to the console only (the API keeps no
    logs without a flow run, and Prefect would warn on every line)."""
    try:
        if run_ids()[0] is None:
            return get_run_logger(send_to_api=False)
        return get_run_logger()
    except MissingContextError:
        return _fallback_logger


def run_ids() -> tuple[str | None, str | None]:
    """The ids of the flow run and task run the call is made in (None outside them)."""
    task_ctx = TaskRunContext.get()
    flow_ctx = FlowRunContext.get()
    task_run_id = str(task_ctx.task_run.id) if task_ctx is not None else None
    flow_run_id: str | None = None
    if flow_ctx is not None and flow_ctx.flow_run is not None:
        flow_run_id = str(flow_ctx.flow_run.id)
    elif task_ctx is not None and task_ctx.task_run.flow_run_id is not None:
        flow_run_id = str(task_ctx.task_run.flow_run_id)
    return flow_run_id, task_run_id


_DEPLOYMENT_NAMES: dict[str, str | None] = {}


def run_deployment() -> tuple[str | None, str | None]:
    """The id and name of the deployment whose flow run makes the call (None, None outside a
    deployment's run). The id is in the run's context; the name is read from the Prefect API once
    per deployment and process (None, with a warning, if that read fails: the id still says which
    deployment paid)."""
    flow_ctx = FlowRunContext.get()
    flow_run = flow_ctx.flow_run if flow_ctx is not None else None
    deployment_id = getattr(flow_run, "deployment_id", None)
    if deployment_id is None:
        return None, None
    key = str(deployment_id)
    if key not in _DEPLOYMENT_NAMES:
        try:
            with get_client(sync_client=True) as client:
                _DEPLOYMENT_NAMES[key] = client.read_deployment(deployment_id).name
        except Exception as exc:
            _fallback_logger.warning("Reading the name of deployment %s failed: %s", key, exc)
            _DEPLOYMENT_NAMES[key] = None
    return key, _DEPLOYMENT_NAMES[key]


def refresh_requested() -> bool:
    """Whether Prefect asks for a refresh: ``task.with_options(refresh_cache=True)`` or
    ``PREFECT_TASKS_REFRESH_CACHE``."""
    task_ctx = TaskRunContext.get()
    flag = task_ctx.task.refresh_cache if task_ctx is not None else None
    return bool(flag) if flag is not None else bool(PREFECT_TASKS_REFRESH_CACHE.value())


def client_config(credentials: GptImageCredentials | None, settings: GptImageSettings) -> ClientConfig:
    """The API client's configuration: the credentials block's key and base URL, else the
    environment's (see :func:`~prefect_gpt_image.api.config.resolve_key`), with the settings'
    timeouts, retries and media hosts; :class:`ConfigurationError` when no key may be used."""
    if credentials is not None:
        return credentials.client_config(settings)
    return settings.configure(ClientConfig.from_env())


async def in_thread(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` in a worker thread (the store's blocking I/O off the event loop)."""
    return await asyncio.to_thread(fn, *args)


def call_prices(credentials: GptImageCredentials | None, settings: GptImageSettings) -> PriceModel:
    """The price model of the calls these credentials send (their endpoint's, or the one the
    settings force, with the settings' figures): see :meth:`GptImageSettings.prices`. Without a
    usable key (a plan made before any key is set) the endpoint is the credentials' base URL,
    else the default gateway's."""
    try:
        base_url = client_config(credentials, settings).base_url
    except ConfigurationError:
        base_url = credentials.base_url if credentials is not None else DEFAULT_BASE_URL
    return settings.prices(base_url)
