"""The process-local FIFO gate in front of a global limit: :class:`SlotGate`, so only as many
acquisitions as the limit has slots reach the Prefect server (threads and coroutines alike)."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

__all__ = ["SlotGate"]


@dataclass
class _Waiter:
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future[None] | None = None
    event: threading.Event | None = None
    granted: bool = False
    abandoned: bool = False


class SlotGate:
    """A first-come first-served counting gate for threads and for coroutines on any loop.

    ``acquire``/``release`` for threads, ``acquire_async`` for coroutines; a released slot goes
    straight to the oldest waiter. ``capacity`` may change while in use (a shrink takes effect
    as slots come back).
    """

    def __init__(self, capacity: int) -> None:
        """A gate letting ``capacity`` holders in at once."""
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._lock = threading.Lock()
        self._capacity = capacity
        self._held = 0
        self._waiters: deque[_Waiter] = deque()

    def __repr__(self) -> str:
        return f"SlotGate(capacity={self._capacity}, held={self._held}, waiting={len(self._waiters)})"

    @property
    def capacity(self) -> int:
        """How many holders may be in at once."""
        return self._capacity

    @property
    def held(self) -> int:
        """How many slots are held now."""
        return self._held

    @property
    def waiting(self) -> int:
        """How many callers wait for a slot now."""
        with self._lock:
            return sum(not w.abandoned for w in self._waiters)

    def set_capacity(self, capacity: int) -> None:
        """Change the number of slots; waiters enter at once if it grew."""
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        with self._lock:
            self._capacity = capacity
            self._dispatch()

    def acquire(self, timeout: float | None = None) -> bool:
        """Take a slot from a thread, waiting up to ``timeout`` seconds (None: for ever)."""
        with self._lock:
            if self._held < self._capacity and not self._waiters:
                self._held += 1
                return True
            waiter = _Waiter(event=threading.Event())
            self._waiters.append(waiter)
        assert waiter.event is not None
        if waiter.event.wait(timeout):
            return True
        with self._lock:
            if waiter.granted:
                return True
            waiter.abandoned = True
            return False

    async def acquire_async(self) -> None:
        """Take a slot from a coroutine; cancelling the wait never leaks a slot."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._held < self._capacity and not self._waiters:
                self._held += 1
                return
            waiter = _Waiter(loop=loop, future=loop.create_future())
            self._waiters.append(waiter)
        assert waiter.future is not None
        try:
            await waiter.future
        except BaseException:
            with self._lock:
                granted = waiter.granted
                waiter.abandoned = True
            if granted:
                self.release()
            raise

    def release(self) -> None:
        """Give a slot back; the oldest waiter gets it."""
        with self._lock:
            if self._held <= 0:
                raise RuntimeError("release() without a held slot")
            self._held -= 1
            self._dispatch()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """``async with gate.slot():`` holds a slot for the block."""
        await self.acquire_async()
        try:
            yield
        finally:
            self.release()

    def _dispatch(self) -> None:
        """Hand free slots to waiters, oldest first (called with the lock held)."""
        while self._waiters and self._held < self._capacity:
            waiter = self._waiters.popleft()
            if waiter.abandoned:
                continue
            waiter.granted = True
            self._held += 1
            if waiter.event is not None:
                waiter.event.set()
                continue
            assert waiter.loop is not None and waiter.future is not None
            try:
                waiter.loop.call_soon_threadsafe(_resolve, waiter.future)
            except RuntimeError:
                # The waiter's loop is closed: nobody will take this slot.
                waiter.abandoned = True
                self._held -= 1


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
