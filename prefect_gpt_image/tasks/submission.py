"""Submitted and mapped runs of an async task, their engines on Prefect's shared run-sync loop.

Prefect's default task runner (``ThreadPoolTaskRunner``) runs each submitted async task under
``asyncio.run`` in a worker thread of its own, and a sync task under Prefect's sync task engine
there: either way one engine per thread, each with its own event loop or blocking API client,
all contending for the interpreter (measured on 200 mapped calls: 58 ms of CPU per image, against
47 ms for the same calls awaited on one loop, and a start of 1.1-1.9 s before the first request).

:class:`SharedLoopSubmitter` starts the task's async engine on the one run-sync loop instead,
with one Prefect API client shared by the engines there, and keeps what the runner gives: a
future per run, its cancel event (:class:`_CancelEvent`), and a flow that waits for its
submitted runs when it ends (one waiting thread per ``.map``/``.submit`` call, in the runner's
pool). A mapped fan-out is made whole, then started one call at a time until the calls in
progress fill their places in front of the limit (each once the one before came for its API
slot), then the rest at once. A call whose parameters hold futures (or that waits for others),
and every call under a bounded pool (``max_workers``) or another task runner, goes the runner's
own way (``fallback``): the async engine would block the shared loop waiting for futures.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import sys
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import Context, copy_context
from dataclasses import dataclass
from typing import Any

from prefect import Task
from prefect._internal.concurrency.threads import get_run_sync_loop
from prefect._internal.uuid7 import uuid7
from prefect.client.schemas.objects import RunInput, State
from prefect.context import AsyncClientContext, FlowRunContext
from prefect.futures import PrefectConcurrentFuture, PrefectFuture, PrefectFutureList
from prefect.settings import PREFECT_API_URL
from prefect.task_engine import run_task_async
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect.utilities.asyncutils import RUNNING_ASYNC_FLAG, RUNNING_IN_RUN_SYNC_LOOP_FLAG
from pydantic import BaseModel

from prefect_gpt_image.calls.concurrency.admission import progress, started_together

__all__ = ["Admission", "SharedLoopSubmitter"]

Admission = Callable[[tuple[Any, ...], dict[str, Any]], AbstractAsyncContextManager[Any]]
"""What a task call enters before its task run starts, made from its arguments (args, kwargs)."""
_log = logging.getLogger("prefect.gpt_image")


class SharedLoopSubmitter:
    """The current flow's default task runner, submitting async task runs onto the shared loop.

    ``fallback`` is the same task as a sync task (its body on the shared loop), submitted through
    the runner itself when a call must wait for futures."""

    _started = True  # TaskRunner.map checks it

    def __init__(
        self, runner: ThreadPoolTaskRunner[Any], fallback: Task[Any, Any], admission: Admission | None
    ):
        self._runner, self._fallback, self._admission = runner, fallback, admission
        self._held: list[_Start] | None = None

    @classmethod
    def of_current_flow(
        cls, fallback: Task[Any, Any], admission: Admission | None
    ) -> SharedLoopSubmitter | None:
        """One for the current flow run's task runner if it is Prefect's default, started, with
        no bound on its threads; else None: a bounded pool (``max_workers``) and other runners
        (Dask, Ray, a user's own) are used as they are."""
        context = FlowRunContext.get()
        runner = getattr(context, "task_runner", None)
        if type(runner) is not ThreadPoolTaskRunner or getattr(runner, "_executor", None) is None:
            return None
        if getattr(runner, "_max_workers", 0) != sys.maxsize:
            return None
        if not isinstance(getattr(runner, "_cancel_events", None), dict):
            return None
        return cls(runner, fallback, admission)

    def submit(
        self,
        task: Task[Any, Any],
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectFuture[Any]] | None = None,
        dependencies: dict[str, set[RunInput]] | None = None,
    ) -> PrefectFuture[Any]:
        """Start one task run of ``task`` with ``parameters``; its future."""
        if wait_for or self._runner._executor is None or _holds_futures(parameters.values()):
            return self._runner.submit(self._fallback, parameters, wait_for, dependencies)
        task_run_id = uuid7()
        cancel_event = _CancelEvent()
        self._runner._cancel_events[task_run_id] = cancel_event
        api_url = str(PREFECT_API_URL.value() or "ephemeral")
        engine = _engine(task, task_run_id, parameters, dependencies, cancel_event, self._admission, api_url)
        start = _Start(engine, copy_context(), concurrent.futures.Future())
        if self._held is not None:
            self._held.append(start)
        else:
            self._start([start])
        return PrefectConcurrentFuture(task_run_id=task_run_id, wrapped_future=start.future)

    def map(
        self,
        task: Task[Any, Any],
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectFuture[Any]] | None = None,
    ) -> PrefectFutureList[Any]:
        """Prefect's mapping of ``parameters`` (what is iterable, what is unmapped), each call
        made by :meth:`submit`; all are started together once made (made while the loop runs the
        first ones, each would wait for the loop's thread to give the interpreter back)."""
        self._held = []
        try:
            futures = TaskRunner.map(self, task, parameters, wait_for)  # type: ignore[arg-type]
        finally:
            held, self._held = self._held, None
            for start in held:  # their first slots are then asked for in one lease
                started_together(start.context, len(held))
            if held:
                self._start(held)
        return futures

    def _start(self, starts: list[_Start]) -> None:
        """Start ``starts`` on the shared loop, and have the runner wait for them when the flow
        ends (one waiting thread), as it waits for the runs it started itself."""
        runner = get_run_sync_loop()
        if runner.loop is None:
            runner.start()  # type: ignore[no-untyped-call]
        loop = runner.loop
        assert loop is not None
        if self._admission is not None and len(starts) > 1:
            loop.call_soon_threadsafe(_start_first_wave, loop, starts)
        else:
            loop.call_soon_threadsafe(_create_tasks, loop, starts)
        executor = self._runner._executor
        if executor is not None:
            executor.submit(concurrent.futures.wait, [start.future for start in starts])


class _CancelEvent(threading.Event):
    """A submitted run's cancel event, which the task runner sets when the flow run ends (every
    one, in its ``__exit__``); the engine checks it as the run starts.

    With Prefect's own unbounded pool every submitted run has started by then. Ours may still be
    waiting for their place in front of the limit (a ``.map`` of more calls than that), and a
    flow whose body returned without reading them would have them end ``Crashed`` instead of
    waiting for them as it does for the rest. So it is set only while an exception is being
    handled (the flow run stopped by SIGTERM, Ctrl-C or a crash): then no new paid call starts.
    A flow run called inside a caller's ``except`` block counts as stopped: Prefect's way."""

    def set(self) -> None:
        if sys.exc_info()[1] is not None:
            super().set()


@dataclass
class _Start:
    """An engine to start on the shared loop, in the submitting caller's context."""

    engine: Coroutine[Any, Any, State[Any]]
    context: Context
    future: concurrent.futures.Future[State[Any]]


def _create_tasks(loop: asyncio.AbstractEventLoop, starts: list[_Start]) -> None:
    """(On the shared loop.) One asyncio task per engine, its outcome set on its future."""
    for start in starts:
        if not start.future.set_running_or_notify_cancel():
            start.engine.close()
            continue
        task = loop.create_task(_as_run_sync(start.engine), context=start.context)
        task.add_done_callback(functools.partial(_settle, start.future))


def _start_first_wave(loop: asyncio.AbstractEventLoop, starts: list[_Start]) -> None:
    """(On the shared loop.) Start ``starts`` one after another, each once the one before came
    for its API slot (or ended, or :data:`_NEXT_AFTER` passed), until one has to wait to be
    admitted: then the others at once. Started together, the first paid request of a fan-out
    waited for every admitted call's task run to start (the first wave's 32 under a limit of 16)."""
    starter = loop.create_task(_first_wave(loop, starts))
    _starting.add(starter)
    starter.add_done_callback(_starting.discard)


async def _first_wave(loop: asyncio.AbstractEventLoop, starts: list[_Start]) -> None:
    for index, start in enumerate(starts):
        arrivals, queued = progress()
        _create_tasks(loop, [start])
        if index + 1 == len(starts):
            return
        deadline = loop.time() + _NEXT_AFTER
        while True:
            now_arrived, now_queued = progress()
            if now_queued > queued or start.future.done():  # the places are full, or a cache hit
                _create_tasks(loop, starts[index + 1 :])
                return
            if now_arrived > arrivals or loop.time() > deadline:
                break
            await asyncio.sleep(0.001)


def _settle(future: concurrent.futures.Future[State[Any]], task: asyncio.Task[State[Any]]) -> None:
    if task.cancelled():
        future.set_exception(concurrent.futures.CancelledError())
    elif (error := task.exception()) is not None:
        future.set_exception(error)
    else:
        future.set_result(task.result())


async def _as_run_sync(engine: Coroutine[Any, Any, State[Any]]) -> State[Any]:
    """``engine`` flagged as Prefect flags what ``run_coro_as_sync`` runs on its loop: sync code
    under it that runs a coroutine then does so in a new thread, not on this (busy) loop."""
    RUNNING_IN_RUN_SYNC_LOOP_FLAG.set(True)
    RUNNING_ASYNC_FLAG.set(True)
    return await engine


async def _engine(
    task: Task[Any, Any],
    task_run_id: Any,
    parameters: dict[str, Any],
    dependencies: dict[str, set[RunInput]] | None,
    cancel_event: threading.Event,
    admission: Admission | None,
    api_url: str,
) -> State[Any]:
    """The async task engine of one run (its final state), once admitted, with the shared client
    of its server."""

    def engine() -> Coroutine[Any, Any, State[Any]]:
        return run_task_async(  # type: ignore[return-value]
            task=task,
            task_run_id=task_run_id,
            parameters=parameters,
            return_type="state",
            dependencies=dependencies,
            context={"cancel_event": cancel_event},
        )

    async with _shared_client(api_url):
        if admission is None:
            return await engine()
        async with admission((), parameters):
            return await engine()


class _SharedClient:
    """One Prefect API client for the engines on the shared loop that talk to one server, opened
    by the first and closed when the last ends. An engine started where no async client is in its
    context (a sync flow's thread) would open one of its own: a new connection pool per task run
    (measured: twice the CPU per image of engines sharing one)."""

    def __init__(self) -> None:
        self._users = 0
        self._opened: asyncio.Future[AsyncClientContext | None] | None = None

    @asynccontextmanager
    async def use(self) -> AsyncIterator[None]:
        """The calling engine uses the client (as its context's async client) until it leaves."""
        self._users += 1
        try:
            if self._opened is None:
                self._opened = asyncio.ensure_future(_open_client())
            context = await asyncio.shield(self._opened)
            if context is None:  # could not open: the engine opens its own, as Prefect does
                yield
                return
            token = AsyncClientContext.__var__.set(context)
            try:
                yield
            finally:
                AsyncClientContext.__var__.reset(token)
        finally:
            self._users -= 1
            if self._users == 0 and self._opened is not None:
                opened, self._opened = self._opened, None
                context = opened.result() if opened.done() and not opened.exception() else None
                if context is not None:  # closed after the last engine's run is settled, not before
                    closing = asyncio.ensure_future(context.client.__aexit__(None, None, None))
                    _closing.add(closing)
                    closing.add_done_callback(_closing.discard)


async def _open_client() -> AsyncClientContext | None:
    context = AsyncClientContext()
    try:
        await context.client.__aenter__()
    except Exception:
        _log.debug("no shared Prefect client for submitted task runs", exc_info=True)
        return None
    return context


_NEXT_AFTER = 0.05
"""Seconds the first wave waits at most for a call to come for its API slot before the next starts."""
_starting: set[asyncio.Task[None]] = set()
_clients: dict[str, _SharedClient] = {}
_closing: set[asyncio.Future[Any]] = set()
"""Clients being closed (a reference keeps each closing task alive until it is done)."""


def _shared_client(api_url: str) -> AbstractAsyncContextManager[None]:
    """The shared client of the server at ``api_url`` (used only on the shared loop)."""
    shared = _clients.get(api_url)
    if shared is None:
        shared = _clients[api_url] = _SharedClient()
    return shared.use()


def _holds_futures(values: Iterable[Any], depth: int = 2) -> bool:
    """Whether ``values`` (or the lists, tuples, sets and dicts in them, ``depth`` levels down)
    hold a Prefect future or state; models and other objects are leaves."""
    for value in values:
        if isinstance(value, PrefectFuture | State):
            return True
        if depth and not isinstance(value, BaseModel | str | bytes):
            inner = value.values() if isinstance(value, dict) else value
            if isinstance(value, list | tuple | set | frozenset | dict) and _holds_futures(inner, depth - 1):
                return True
    return False
