"""Event-loop plumbing for the clients: a private loop thread for sync callers, and closing a
client when the loop it used shuts down.

Why a thread of our own: anyio's blocking portal runs a non-daemon thread, and Python joins those
before any ``atexit`` handler runs, so a sync client that was never closed kept the interpreter
from exiting. :class:`LoopThread` is a daemon thread that an ``atexit`` hook (or the owner's
finalizer) stops after closing what runs on it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import threading
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["LoopThread", "close_with_loop"]

T = TypeVar("T")
_EXIT_TIMEOUT = 2.0
_live: weakref.WeakSet[LoopThread] = weakref.WeakSet()


class LoopThread:
    """An asyncio event loop on a daemon thread: :meth:`run` a coroutine on it from sync code."""

    def __init__(self, name: str = "prefect-gpt-image-loop") -> None:
        """Start the loop thread (``name`` shows in thread dumps)."""
        self._loop = asyncio.new_event_loop()
        self._on_close: list[Callable[[], Awaitable[None]]] = []
        started = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(started,), name=name, daemon=True)
        self._thread.start()
        started.wait()
        _live.add(self)

    def _serve(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(started.set)
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    @property
    def closed(self) -> bool:
        """Whether the loop was stopped."""
        return not self._thread.is_alive()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result (``KeyboardInterrupt`` cancels it)."""
        if self.closed:
            coro.close()
            raise RuntimeError("the event-loop thread is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()
            raise

    def on_close(self, aclose: Callable[[], Awaitable[None]]) -> None:
        """Await ``aclose()`` on the loop before it stops (to close connections)."""
        self._on_close.append(aclose)

    def close(self, timeout: float = _EXIT_TIMEOUT) -> None:
        """Run the close callbacks (waiting up to ``timeout`` s), then stop the loop and the thread."""
        if self.closed:
            return
        callbacks, self._on_close = self._on_close, []

        async def closing() -> None:
            for aclose in callbacks:
                try:
                    await aclose()
                except Exception:  # noqa: S110 - closing is best effort
                    pass

        if callbacks:
            try:
                self.run(closing(), timeout)
            except Exception:  # noqa: S110 - a stuck close must not keep the process alive
                pass
        try:
            self._loop.call_soon_threadsafe(self._loop.stop)
        except RuntimeError:  # already closed
            return
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)


@atexit.register
def _close_at_exit() -> None:
    for loop_thread in list(_live):
        loop_thread.close()


def close_with_loop(aclose: Callable[[], Awaitable[None]]) -> AsyncGenerator[None, None]:
    """Have the running loop await ``aclose()`` when it shuts down its async generators (as
    ``asyncio.run`` does on the way out); returns the generator, which the caller must keep a
    reference to (the loop tracks it weakly; collected unfinished, it closes too)."""

    async def closer() -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            await aclose()

    generator = closer()
    # One step, to its yield, registers it with the running loop; the step needs no await.
    with contextlib.suppress(StopIteration):
        generator.asend(None).send(None)
    return generator
