"""Concurrency and rate limits for paid calls: a Prefect global limit, fronted by a local gate.

Every paid call holds one slot of the Prefect global concurrency limit named by the settings
(default ``gpt-image``), acquired with ``strict=True`` so a missing limit is an error, never a
silent "unlimited". The limit is created with the settings' ``concurrency_limit`` slots when it
does not exist (an existing limit keeps the value an operator gave it). With
``requests_per_minute`` set, each call also takes a token of ``<name>-rpm``, a limit with slot
decay created the same way.

Why a local gate: Prefect hands slots over slowly. A denied acquisition gets HTTP 423 and sleeps a
server-chosen Retry-After (seconds, growing with the queue), so 20 short calls under a limit of 4
take about ten times the ideal. :class:`SlotGate` is a process-local FIFO counter sized to the
limit's value (read from the server, refreshed every minute): only as many acquisitions as there
are slots reach the server, each finds a free slot at once, and the next local waiter goes the
moment a call ends. The gate is built on ``threading`` primitives and wakes async waiters through
their own loop, so it works when tasks share one event loop and when each runs in its own worker
thread and loop. Correctness across processes still comes from the server's limit: the gate only
keeps this process from queueing on it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.asyncio import concurrency, rate_limit
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import PREFECT_API_URL

__all__ = ["LimitInfo", "SlotGate", "api_slot", "ensure_limit", "gate_for"]

LIMIT_REFRESH_SECONDS = 60.0
"""How long a limit's value read from the server is trusted before it is read again."""


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


@dataclass
class LimitInfo:
    """A global concurrency limit as last read from the server."""

    name: str
    limit: int
    active: bool
    slot_decay_per_second: float
    read_at: float = field(default_factory=time.monotonic)


_limits: dict[tuple[str, str], LimitInfo] = {}
_gates: dict[tuple[str, str], SlotGate] = {}
_fetching: dict[tuple[str, str], threading.Lock] = {}
_registry_lock = threading.Lock()


def _server_key(name: str) -> tuple[str, str]:
    return (str(PREFECT_API_URL.value() or "ephemeral"), name)


async def ensure_limit(
    name: str, slots: int, slot_decay_per_second: float = 0.0, *, logger: Any = None
) -> LimitInfo:
    """The global concurrency limit ``name``, created with ``slots`` slots (and the given slot
    decay) if the server has none. Values are cached for :data:`LIMIT_REFRESH_SECONDS`."""
    key = _server_key(name)
    with _registry_lock:
        cached = _limits.get(key)
        single_flight = _fetching.setdefault(key, threading.Lock())
    if cached is not None and time.monotonic() - cached.read_at < LIMIT_REFRESH_SECONDS:
        return cached
    # One reader (and creator) per limit in this process: concurrent creates of the same name
    # make some servers answer 500 rather than 409.
    while not single_flight.acquire(blocking=False):
        await asyncio.sleep(0.01)
    try:
        with _registry_lock:
            cached = _limits.get(key)
        if cached is not None and time.monotonic() - cached.read_at < LIMIT_REFRESH_SECONDS:
            return cached
        info = await _read_or_create(name, slots, slot_decay_per_second, logger)
        with _registry_lock:
            _limits[key] = info
        return info
    finally:
        single_flight.release()


async def _read_or_create(name: str, slots: int, slot_decay_per_second: float, logger: Any) -> LimitInfo:
    async with get_client() as client:
        try:
            found = await client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                await client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(
                        name=name, limit=slots, active=True, slot_decay_per_second=slot_decay_per_second
                    )
                )
                if logger is not None:
                    logger.info(
                        "Created the global concurrency limit %r with %d slot(s)%s",
                        name,
                        slots,
                        f" and a decay of {slot_decay_per_second:g} slot/s" if slot_decay_per_second else "",
                    )
            except (ObjectAlreadyExists, httpx.HTTPStatusError) as exc:
                # Another process created it first (some servers answer 500, not 409, to the
                # race): it must be readable now, or the error stands.
                try:
                    found = await client.read_global_concurrency_limit_by_name(name)
                except ObjectNotFound:
                    raise exc from None
            else:
                found = await client.read_global_concurrency_limit_by_name(name)
    return LimitInfo(
        name=name,
        limit=int(found.limit),
        active=bool(found.active),
        slot_decay_per_second=float(found.slot_decay_per_second or 0.0),
    )


def gate_for(name: str, capacity: int) -> SlotGate:
    """The process-wide gate in front of limit ``name`` on the current server, sized ``capacity``."""
    key = _server_key(name)
    with _registry_lock:
        gate = _gates.get(key)
        if gate is None:
            gate = _gates[key] = SlotGate(max(1, capacity))
            return gate
    if gate.capacity != max(1, capacity):
        gate.set_capacity(max(1, capacity))
    return gate


@asynccontextmanager
async def api_slot(
    name: str,
    slots: int,
    *,
    requests_per_minute: int | None = None,
    rate_limit_name: str | None = None,
    lease_seconds: float = 300.0,
    logger: Any = None,
) -> AsyncIterator[None]:
    """Hold what one paid call needs: a local gate slot, a slot of global limit ``name``
    (created with ``slots`` if missing; ``strict=True``) and, with ``requests_per_minute``, a token
    of the rate limit ``rate_limit_name``."""
    info = await ensure_limit(name, slots, logger=logger)
    if not info.active and logger is not None:
        logger.warning("The global concurrency limit %r is inactive: Prefect does not enforce it", name)
    gate = gate_for(name, info.limit)
    async with gate.slot():
        if info.active:
            limit_cm = concurrency(
                name,
                occupy=1,
                strict=True,
                lease_duration=lease_seconds,
                raise_on_lease_renewal_failure=False,
            )
        else:
            limit_cm = _nothing()
        async with limit_cm:
            if requests_per_minute:
                rpm_name = rate_limit_name or f"{name}-rpm"
                await ensure_limit(rpm_name, requests_per_minute, requests_per_minute / 60.0, logger=logger)
                await rate_limit(rpm_name, occupy=1, strict=True)
            yield


@asynccontextmanager
async def _nothing() -> AsyncIterator[None]:
    yield
