"""Tasks and flows that work called from sync and from async code, written once (async).

Prefect runs an async ``@task`` or ``@flow`` called from sync code not at all: the call returns an
un-awaited coroutine and nothing happens. :func:`sync_or_async` gives an async task or flow the
dispatch of Prefect's integrations (``async_dispatch`` in prefect-aws and prefect-slack): called
where the caller is async (an async flow or task, or code under a running event loop) it returns
the awaitable as before; called from sync code (a sync flow or task, a plain script) it runs to
completion and returns the result, on Prefect's own run-sync event loop, with the caller's run
context (so a task called in a sync flow is a task run of that flow). ``.aio(...)`` always returns
the awaitable; ``_sync=True`` / ``_sync=False`` forces a path, as with ``async_dispatch``.
``.submit()``, ``.map()``, ``.with_options()``, deployments and workers are Prefect's own, but for
two things: ``.map`` passes a pydantic model (a settings block, an ImageRef) to every call as one
value, and submitted calls run their body on Prefect's shared run-sync loop (see
:meth:`SyncOrAsyncTask._on_shared_loop`).
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, ParamSpec, TypeVar, overload

from prefect import Flow, Task
from prefect._internal.compatibility.async_dispatch import is_in_async_context
from prefect.client.schemas.objects import State
from prefect.utilities.annotations import unmapped
from prefect.utilities.asyncutils import run_coro_as_sync
from prefect.utilities.callables import get_call_parameters
from pydantic import BaseModel

from prefect_gpt_image.api.models import FORBIDDEN_FIELDS
from prefect_gpt_image.api.suggest import check_keywords
from prefect_gpt_image.calls import BatchFailedError

from .submission import Admission, SharedLoopSubmitter

__all__ = ["Admission", "SyncOrAsyncFlow", "SyncOrAsyncTask", "sync_or_async"]

P = ParamSpec("P")
R = TypeVar("R")
_CALL_KEYWORDS = frozenset({"return_state", "wait_for"})
"""Keywords Prefect takes beside the function's parameters (``.map`` also takes ``deferred``)."""


class _Dispatch(Generic[P, R]):
    """The call of a task or flow whose function is async, dispatched by the caller's context."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run and return the result from sync code; return the awaitable from async code (typed
        ``Any``: which one depends on the caller; ``.aio`` is typed)."""
        forced = kwargs.pop("_sync", None)
        self._check_keywords(kwargs, _CALL_KEYWORDS)
        awaitable = self._awaitable(*args, **kwargs)
        run_sync = bool(forced) if forced is not None else not is_in_async_context()
        return run_coro_as_sync(awaitable) if run_sync else awaitable

    def _awaitable(self, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, R]:
        return super().__call__(*args, **kwargs)  # type: ignore[misc, no-any-return]

    @property
    def aio(self) -> Callable[..., Coroutine[Any, Any, R]]:
        """The call that always returns an awaitable (for async code that must not dispatch)."""

        def checked(*args: Any, **kwargs: Any) -> Coroutine[Any, Any, R]:
            self._check_keywords(kwargs, _CALL_KEYWORDS)
            return self._awaitable(*args, **kwargs)

        return checked

    def _check_keywords(self, kwargs: dict[str, Any], extra: frozenset[str]) -> None:
        """Refuse a misspelled keyword with the closest parameter's name, before Prefect binds the
        call (its ``ParameterBindError`` prints the whole signature and names no fix), so it reads
        the same from a sync flow, an async flow and a script, and nothing has run."""
        fn: Callable[..., Any] = self.fn  # type: ignore[attr-defined]
        parameters = inspect.signature(fn).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            return
        valid = {n for n, p in parameters.items() if p.kind is not inspect.Parameter.POSITIONAL_ONLY}
        check_keywords(kwargs, valid | extra, f"{fn.__name__}()", FORBIDDEN_FIELDS)

    def with_options(self, *args: Any, **kwargs: Any) -> Any:
        """Prefect's ``with_options``, keeping the dispatch (and the admission of a task)."""
        copy = super().with_options(*args, **kwargs)  # type: ignore[misc]
        copy.__class__ = type(self)
        if "_admission" in self.__dict__:
            copy._admission = self.__dict__["_admission"]
        return copy


class SyncOrAsyncTask(_Dispatch[P, R], Task[P, Coroutine[Any, Any, R]]):
    """A Prefect task written async that sync code calls like a sync task (see the module doc)."""

    def _awaitable(self, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, R]:
        admission = self._admission_of()
        if admission is None:
            awaitable = super()._awaitable(*args, **kwargs)
        else:
            awaitable = _admitted(
                admission(args, kwargs), functools.partial(super()._awaitable, *args, **kwargs)
            )
        return awaitable if kwargs.get("return_state") else _result_of_own_state(awaitable)

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        """Prefect's ``submit``; the task's engine runs on Prefect's shared run-sync event loop
        (see :mod:`.submission`)."""
        self._check_keywords(kwargs, _CALL_KEYWORDS)
        submitter = SharedLoopSubmitter.of_current_flow(self._on_shared_loop(), self._admission_of())
        if submitter is None:
            return Task.submit(self._on_shared_loop(), *args, **kwargs)
        return_state, wait_for = kwargs.pop("return_state", False), kwargs.pop("wait_for", None)
        future = submitter.submit(self, get_call_parameters(self.fn, args, kwargs), wait_for)
        if return_state:
            future.wait()
            return future.state
        return future

    def map(self, *args: Any, **kwargs: Any) -> Any:
        """Prefect's ``map``, each call run as :meth:`submit` runs it, where a pydantic model (a
        settings or credentials block, an ImageRef) is one value for every call: Prefect would
        map over its fields (a model is iterable)."""
        self._check_keywords(kwargs, _CALL_KEYWORDS | {"deferred"})
        args = tuple(map(_one_value, args))
        kwargs = {k: _one_value(v) for k, v in kwargs.items()}
        submitter = SharedLoopSubmitter.of_current_flow(self._on_shared_loop(), self._admission_of())
        if submitter is None or kwargs.get("deferred"):
            return Task.map(self._on_shared_loop(), *args, **kwargs)
        return_state, wait_for = kwargs.pop("return_state", False), kwargs.pop("wait_for", None)
        kwargs.pop("deferred", None)
        parameters = get_call_parameters(self.fn, args, kwargs, apply_defaults=False)
        futures = submitter.map(self, parameters, wait_for)
        if return_state:
            for future in futures:
                future.wait()
            return [future.state for future in futures]
        return futures

    def _admission_of(self) -> Admission | None:
        admission: Admission | None = self.__dict__.get("_admission")
        return admission

    def _on_shared_loop(self) -> Task[P, R]:
        """This task as a sync task whose body runs the async one on Prefect's run-sync loop.

        A task runner runs a submitted async task under ``asyncio.run`` in its worker thread: a new
        event loop per call, each with its own HTTP connection pools and clients (measured: twice
        the CPU per image of the same calls awaited on one loop). Submitted as this sync twin, the
        worker thread only waits while the body runs on one loop shared by every call."""
        twin: Task[P, R] | None = self.__dict__.get("_twin")
        if twin is None:
            body = self.fn
            admission = self._admission_of()

            @functools.wraps(body)
            def run_on_shared_loop(*args: Any, **kwargs: Any) -> Any:
                if admission is None:
                    return run_coro_as_sync(body(*args, **kwargs))
                start = functools.partial(body, *args, **kwargs)
                return run_coro_as_sync(_admitted(admission(args, kwargs), start))

            twin = copy.copy(self)  # type: ignore[assignment]
            assert twin is not None
            twin.__class__ = Task
            twin.fn = run_on_shared_loop
            twin.isasync = False
            self.__dict__["_twin"] = twin
        return twin


def _one_value(value: Any) -> Any:
    return unmapped(value) if isinstance(value, BaseModel) else value


async def _admitted(admission: AbstractAsyncContextManager[Any], start: Callable[[], Awaitable[Any]]) -> Any:
    """Start the task run (``start``) once admitted, and leave when it ends."""
    async with admission:
        return await start()


async def _result_of_own_state(awaitable: Coroutine[Any, Any, Any]) -> Any:
    """A task may return the State it ends in (a cache hit returns ``Cached``); Prefect's task
    engine then hands that State to a direct caller, who wants its result (futures and flows
    already resolve it)."""
    value = await awaitable
    return await value.aresult() if isinstance(value, State) else value


class SyncOrAsyncFlow(_Dispatch[P, R], Flow[P, Coroutine[Any, Any, R]]):
    """A Prefect flow written async that a script or a sync flow calls like a sync flow.

    A batch flow ends ``Failed`` with its result as the state's data when rows failed (so the
    UI, a deployment and ``return_state=True`` callers see every row). Prefect cannot raise such
    a state (``TypeError: Unexpected result for failed state``, with the whole result's repr), so
    a call without ``return_state`` raises :class:`BatchFailedError` instead: the state's message
    (a few lines) and the result attached."""

    def _awaitable(self, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, R]:
        if kwargs.get("return_state"):
            return super()._awaitable(*args, **kwargs)
        return _result_of_flow_state(super()._awaitable(*args, **{**kwargs, "return_state": True}))


async def _result_of_flow_state(awaitable: Coroutine[Any, Any, Any]) -> Any:
    """The result of the flow run's final state; :class:`BatchFailedError` for a ``Failed`` state
    whose data is a result (a model), not an exception."""
    state: State[Any] = await awaitable
    if state.is_failed():
        data = await state.aresult(raise_on_failure=False)
        if isinstance(data, BaseModel):
            raise BatchFailedError(state.message or "the run failed", result=data)
    return await state.aresult()


def _resolve_annotations(fn: Callable[..., Any]) -> None:
    """Replace ``fn``'s annotations written as strings (``from __future__ import annotations``)
    by the objects they name, where they resolve now.

    A flow run in a subprocess (``flow.serve()``, Prefect's ``run_flow_in_subprocess``) gets the
    flow by value through cloudpickle, which keeps only the globals the function's code uses: a
    name used only in an annotation (``options: ImageOptions | None``) is lost, and the child's
    parameter validation fails with "``Batch_GenerateModel`` is not fully defined". With the
    annotations as objects, they travel with the function. An annotation naming something not
    defined yet (a return type defined further down) stays a string; Prefect validates only the
    parameters."""
    resolved: dict[str, Any] = {}
    for name, annotation in fn.__annotations__.items():
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, fn.__globals__)  # noqa: S307 (the module's own annotation)
            except NameError:
                pass
        resolved[name] = annotation
    fn.__annotations__ = resolved


@overload
def sync_or_async(
    obj: Task[P, Coroutine[Any, Any, R]], *, admission: Admission | None = None
) -> SyncOrAsyncTask[P, R]: ...


@overload
def sync_or_async(
    obj: None = None, *, admission: Admission
) -> Callable[[Task[P, Coroutine[Any, Any, R]]], SyncOrAsyncTask[P, R]]: ...


@overload
def sync_or_async(obj: Flow[P, Coroutine[Any, Any, R]]) -> SyncOrAsyncFlow[P, R]: ...


def sync_or_async(obj: Any = None, *, admission: Admission | None = None) -> Any:
    """``obj`` (an async task or flow) made callable from sync code too; use it over ``@task`` or
    ``@flow``. ``admission(args, kwargs)``, for a task, gives an async context manager that an
    awaited call enters before its task run starts (to bound how many are in progress at once);
    with it, use as ``@sync_or_async(admission=...)``."""
    if obj is None:
        return functools.partial(sync_or_async, admission=admission)
    if not getattr(obj, "isasync", False):
        raise TypeError(f"{obj!r} is not async: sync_or_async is for async tasks and flows")
    if isinstance(obj, Flow):
        obj.__class__ = SyncOrAsyncFlow
        _resolve_annotations(obj.fn)
    else:
        obj.__class__ = SyncOrAsyncTask
        if admission is not None:
            obj._admission = admission
    return obj
