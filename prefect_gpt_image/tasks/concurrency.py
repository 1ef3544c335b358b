"""Concurrency and rate limits for paid calls: a Prefect global limit, fronted by a local gate.

Every paid call holds one slot of the Prefect global concurrency limit named by the settings
(default ``gpt-image``), as a lease of the server's limit: a missing limit is an error, never a
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

Why not ``prefect.concurrency.asyncio.concurrency``: measured on Prefect 3.8.8 it costs one
service queue per limit name that serializes every acquisition of the process (a 423 sleep holds
up all the others), a new API client per release and a new thread with its own client per held
slot (for lease renewal). Together about 100 ms per call on an idle server, and the first
acquisition of a process about 2 s. Here one background thread (:class:`_LeaseService`) owns one
API client per server; it acquires leases (``increment-with-lease``), renews every held lease
from a single loop, and releases them. A finished call hands its slot straight to the next call
of this process waiting at the gate (or, inside :func:`hold_slots`, keeps it a moment for the
next one), so a busy process makes no server round trip per call at all; a batch takes its
first slots in one lease, ahead of its first calls (``hold_slots(prefetch=...)``). A call gives
its slot back as soon as the API answered (:meth:`ApiSlot.release`): downloading and storing
need no API capacity. The guarantee is unchanged: every paid call in flight holds a slot of a
live lease of the server's limit, so the limit is never exceeded across processes; slots not in
use are given back within :data:`IDLE_LEASE_SECONDS` (slots taken in one lease go back
together), and all of them when the process exits.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import contextvars
import logging
import random
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar
from uuid import UUID

import httpx
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError, rate_limit
from prefect.context import SettingsContext
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import PREFECT_API_URL

__all__ = [
    "IDLE_LEASE_SECONDS",
    "ApiSlot",
    "LimitInfo",
    "SlotGate",
    "api_slot",
    "ensure_limit",
    "gate_for",
    "hold_slots",
    "release_idle_leases",
    "slots_in_use",
]

LIMIT_REFRESH_SECONDS = 60.0
"""How long a limit's value read from the server is trusted before it is read again."""
IDLE_LEASE_SECONDS = 2.0
"""Longest time a lease not used by any call is kept (for the next call) before it is released."""
_PREFETCH_LEASE_SECONDS = 300.0
MAX_POLL_SECONDS = 1.0
"""Longest wait between two tries of a denied (423) acquisition: slots held by other processes
are polled at least this often, whatever Retry-After the server suggests."""

_log = logging.getLogger("prefect_gpt_image.tasks.concurrency")
_T = TypeVar("_T")


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


def slots_in_use(name: str) -> int:
    """How many calls of this process hold a slot of limit ``name`` (on the current server) now."""
    with _registry_lock:
        gate = _gates.get(_server_key(name))
    return gate.held if gate is not None else 0


class ApiSlot:
    """What :func:`api_slot` holds for one paid call; :meth:`release` gives it back early (once
    the API answered: downloading and storing the results need no API capacity)."""

    def __init__(self, gate: SlotGate, lease: _Lease | None) -> None:
        self._gate = gate
        self._lease = lease
        self._released = False

    @property
    def released(self) -> bool:
        """Whether the slot was given back."""
        return self._released

    async def release(self) -> None:
        """Give the slot back now (later calls do nothing). The lease goes to the next call of
        this process waiting at the gate, or is kept for a batch (:func:`hold_slots`), or is
        released on the server."""
        if self._released:
            return
        self._released = True
        lease, self._lease = self._lease, None
        try:
            if lease is not None:
                service = lease.service
                if self._gate.waiting or _holding(lease.key):
                    service.park(lease)
                else:
                    await _shielded(service.submit(service.release(lease)))
        finally:
            self._gate.release()


@asynccontextmanager
async def api_slot(
    name: str,
    slots: int,
    *,
    requests_per_minute: int | None = None,
    rate_limit_name: str | None = None,
    lease_seconds: float = 300.0,
    logger: Any = None,
) -> AsyncIterator[ApiSlot]:
    """Hold what one paid call needs: a local gate slot, a lease of one slot of global limit
    ``name`` (created with ``slots`` if missing; an error if it cannot be found) and, with
    ``requests_per_minute``, a token of the rate limit ``rate_limit_name``. Yields an
    :class:`ApiSlot` that may be released before the block ends."""
    info = await ensure_limit(name, slots, logger=logger)
    if not info.active and logger is not None:
        logger.warning("The global concurrency limit %r is inactive: Prefect does not enforce it", name)
    gate = gate_for(name, info.limit)
    await gate.acquire_async()
    try:
        lease = await _take_lease(name, slots, lease_seconds, logger) if info.active else None
    except BaseException:
        gate.release()
        raise
    slot = ApiSlot(gate, lease)
    try:
        if requests_per_minute:
            rpm_name = rate_limit_name or f"{name}-rpm"
            await ensure_limit(rpm_name, requests_per_minute, requests_per_minute / 60.0, logger=logger)
            await rate_limit(rpm_name, occupy=1, strict=True)
        yield slot
    finally:
        await slot.release()


async def _take_lease(name: str, slots: int, lease_seconds: float, logger: Any) -> _Lease:
    """A lease of one slot of ``name``: a parked one of this process, else a new one."""
    service = _service_for(name)
    parked = service.unpark(_server_key(name))
    if parked is not None:
        return parked
    try:
        return await _shielded(service.submit(service.acquire(name, lease_seconds)))
    except _LimitNotFound:
        # Deleted since it was read: make it again (as for a first call), then try once more.
        _forget_limit(name)
        await ensure_limit(name, slots, logger=logger)
        try:
            return await _shielded(service.submit(service.acquire(name, lease_seconds)))
        except _LimitNotFound:
            raise ConcurrencySlotAcquisitionError(
                f"The global concurrency limit {name!r} does not exist on the Prefect server "
                "(it was deleted while in use?); nothing was sent"
            ) from None


async def _shielded(future: concurrent.futures.Future[_T]) -> _T:
    """Await a service future; if the caller is cancelled, the service's work still finishes
    (a lease granted meanwhile is parked, then released, instead of being lost)."""
    wrapped = asyncio.wrap_future(future)
    try:
        return await asyncio.shield(wrapped)
    except asyncio.CancelledError:
        future.add_done_callback(_park_orphan)
        raise


def _park_orphan(future: concurrent.futures.Future[Any]) -> None:
    if future.cancelled() or future.exception() is not None:
        return
    result = future.result()
    if isinstance(result, _Lease):
        result.service.park(result)


# -- holding slots for a batch -----------------------------------------------------------------

_holds: dict[tuple[str, str], int] = {}


def _holding(key: tuple[str, str]) -> bool:
    with _registry_lock:
        return _holds.get(key, 0) > 0


@asynccontextmanager
async def hold_slots(
    name: str, *, prefetch: int = 0, slots: int = 1, release: bool = True, logger: Any = None
) -> AsyncIterator[None]:
    """While inside, a call that ends keeps its lease of limit ``name`` for the next call of this
    process (up to :data:`IDLE_LEASE_SECONDS`) instead of releasing it, saving two server round
    trips per call when calls follow each other with no one waiting at the gate (a batch with
    ``max_parallel`` at or below the limit). Leaving releases the kept leases.

    ``prefetch``: acquire up to that many leases (never more than the limit's slots) at once, in
    the background, so the first calls of a batch find them ready instead of each waiting for a
    round trip while their task runs start. ``slots`` creates the limit if missing, as
    :func:`api_slot` does. ``release=False`` leaves the kept leases for the caller to release
    with :func:`release_idle_leases` (e.g. while it does other work); unreleased, they go after
    :data:`IDLE_LEASE_SECONDS`.
    """
    key = _server_key(name)
    with _registry_lock:
        _holds[key] = _holds.get(key, 0) + 1
    fetching: list[concurrent.futures.Future[None]] = []
    try:
        if prefetch > 0:
            info = await ensure_limit(name, slots, logger=logger)
            if info.active:
                fetcher = _service_for(name)
                count = min(prefetch, info.limit)
                fetching.append(fetcher.submit(fetcher.prefetch(name, _PREFETCH_LEASE_SECONDS, count)))
        yield
    finally:
        for future in fetching:  # none left outstanding (they never wait for a busy limit)
            with contextlib.suppress(Exception):
                await asyncio.shield(asyncio.wrap_future(future))
        with _registry_lock:
            _holds[key] -= 1
            last = _holds[key] == 0
            if last:
                del _holds[key]
            service = _services.get(key[0])
        if last and release and service is not None:
            await _shielded(service.submit(service.release_parked(key)))


async def release_idle_leases(name: str | None = None) -> None:
    """Release the leases of this process not used by a call now (on the current server): those
    of limit ``name``, or of every limit."""
    with _registry_lock:
        service = _services.get(_server_key(name or "")[0])
    if service is not None:
        key = _server_key(name) if name is not None else None
        await _shielded(service.submit(service.release_parked(key)))


# -- the lease service -------------------------------------------------------------------------


class _LimitNotFound(Exception):
    """The server has no (active) limit of that name."""


class _LimitBusy(Exception):
    """Every slot of the limit is taken (and the caller would not wait)."""


@dataclass(eq=False)
class _Grant:
    """A lease on the server: ``slots`` slots of one limit, renewed and released as a whole
    (when the last of its slots is given back)."""

    id: UUID
    key: tuple[str, str]
    duration: float
    slots: int
    held: int
    renewed: float = field(default_factory=time.monotonic)


@dataclass(eq=False)
class _Lease:
    """One slot of a grant, used by one call at a time (or parked for the next call)."""

    grant: _Grant
    service: _LeaseService
    parked: float | None = None
    released: bool = False

    @property
    def key(self) -> tuple[str, str]:
        """(server, limit name)."""
        return self.grant.key


class _LeaseService:
    """One background thread and event loop, with one Prefect API client, for the leases of one
    server: acquisition (423 polled), one renewal loop for all held leases, release, parking of
    idle leases and their release when unused, and release of everything at exit."""

    def __init__(self, server: str, context: contextvars.Context) -> None:
        self.server = server
        self._context = context
        self._loop = asyncio.new_event_loop()
        self._client: PrefectClient | None = None
        self._opening: asyncio.Future[PrefectClient] | None = None
        self._grants: dict[UUID, _Grant] = {}
        self._parked: dict[tuple[str, str], deque[_Lease]] = {}
        self._signals: dict[tuple[str, str], asyncio.Event] = {}
        self._prefetching: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"gpt-image-leases {server}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        housekeeper = self._loop.create_task(self._housekeeping())
        try:
            self._loop.run_forever()
        finally:
            housekeeper.cancel()
            with contextlib.suppress(BaseException):
                self._loop.run_until_complete(asyncio.gather(housekeeper, return_exceptions=True))
            self._loop.close()

    def submit(self, coro: Coroutine[Any, Any, _T]) -> concurrent.futures.Future[_T]:
        """Run ``coro`` on the service's loop."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    async def _api(self) -> PrefectClient:
        if self._client is not None:
            return self._client
        if self._opening is None:
            self._opening = self._loop.create_future()
            try:
                # The first caller's settings (API URL, key) decide the server, as they decided
                # this service's key.
                client = self._context.run(get_client)
                await client.__aenter__()
            except BaseException as exc:
                self._opening.set_exception(exc)
                self._opening.exception()  # retrieved: later callers re-raise it themselves
                self._opening = None
                raise
            self._client = client
            self._opening.set_result(client)
            return client
        return await asyncio.shield(self._opening)

    # -- acquire, park, release ------------------------------------------------------------------

    async def acquire(
        self, name: str, duration: float, *, reuse_parked: bool = True, wait: bool = True
    ) -> _Lease:
        """A lease of one slot of ``name``.

        With ``reuse_parked`` (a call's acquisition), a lease parked by this process is taken
        first, and while a prefetch of this limit is under way the call waits for its lease
        instead of asking the server. Otherwise (a prefetch) a new lease is always asked for.
        While the limit is full the server is polled (without ``wait``: :class:`_LimitBusy` at
        once), waking early when this process parks a lease of the limit.
        """
        client = await self._api()
        key = (self.server, name)
        signal = self._signals.setdefault(key, asyncio.Event())
        while True:
            if reuse_parked:
                signal.clear()
                parked = self.unpark(key)
                if parked is not None:
                    return parked
                if self._prefetching.get(key, 0) > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(signal.wait(), MAX_POLL_SECONDS)
                    continue
            try:
                return (await self._grant(client, name, duration, 1))[0]
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 423:
                    raise ConcurrencySlotAcquisitionError(
                        f"Unable to acquire a slot of the global concurrency limit {name!r}: "
                        f"HTTP {exc.response.status_code}"
                    ) from exc
                if not wait:
                    raise _LimitBusy(name) from None
                suggested = _float(exc.response.headers.get("Retry-After"), MAX_POLL_SECONDS)
                pause = min(suggested, MAX_POLL_SECONDS) * random.uniform(0.5, 1.0)
                if reuse_parked:
                    parked = self.unpark(key)  # parked while the server answered: no wait
                    if parked is not None:
                        return parked
                with contextlib.suppress(TimeoutError):
                    # Woken early when a call of this process parks a lease of this limit.
                    await asyncio.wait_for(signal.wait(), pause)
                continue

    async def _grant(self, client: PrefectClient, name: str, duration: float, slots: int) -> list[_Lease]:
        """``slots`` slots of ``name`` in one server lease (HTTPStatusError 423 if not free)."""
        response = await client.increment_concurrency_slots_with_lease(
            names=[name], slots=slots, mode="concurrency", lease_duration=duration
        )
        data = response.json()
        if not data.get("limits"):
            if data.get("lease_id"):
                await self._release_id(UUID(str(data["lease_id"])))
            raise _LimitNotFound(name)
        grant = _Grant(
            id=UUID(str(data["lease_id"])),
            key=(self.server, name),
            duration=duration,
            slots=slots,
            held=slots,
        )
        with self._lock:
            self._grants[grant.id] = grant
        return [_Lease(grant=grant, service=self) for _ in range(slots)]

    async def prefetch(self, name: str, duration: float, slots: int) -> None:
        """Acquire ``slots`` slots of ``name`` for the calls to come, in one server lease, and
        park them; nothing if they are not all free (or anything fails: each call then acquires
        its own)."""
        key = (self.server, name)
        self._prefetching[key] = self._prefetching.get(key, 0) + 1
        try:
            leases = await self._grant(await self._api(), name, duration, slots)
        except Exception as exc:
            _log.debug("Prefetching %d slot(s) of %r: %s", slots, name, exc)
        else:
            for lease in leases:
                self.park(lease)
        finally:
            self._prefetching[key] -= 1
            self._wake(key)  # calls waiting for this prefetch look again

    def park(self, lease: _Lease) -> None:
        """Keep ``lease`` (no call uses it now) for the next call; released if unused for
        :data:`IDLE_LEASE_SECONDS`. Callable from any thread."""
        with self._lock:
            if lease.released or lease.parked is not None:
                return
            lease.parked = time.monotonic()
            self._parked.setdefault(lease.key, deque()).append(lease)
        with contextlib.suppress(RuntimeError):  # the loop is closed (at exit)
            self._loop.call_soon_threadsafe(self._wake, lease.key)

    def _wake(self, key: tuple[str, str]) -> None:
        signal = self._signals.get(key)
        if signal is not None:
            signal.set()

    def unpark(self, key: tuple[str, str]) -> _Lease | None:
        """A parked lease of limit ``key`` for a new call, or None. Callable from any thread."""
        with self._lock:
            parked = self._parked.get(key)
            while parked:
                lease = parked.pop()
                if not lease.released:
                    lease.parked = None
                    return lease
        return None

    async def release(self, lease: _Lease) -> None:
        """Give the slot ``lease`` back; its server lease goes when none of its slots is held
        (errors are logged: the server lease then expires)."""
        grant = lease.grant
        with self._lock:
            if lease.released:
                return
            lease.released = True
            grant.held -= 1
            last = grant.held == 0 and self._grants.pop(grant.id, None) is not None
        if last:
            await self._release_id(grant.id)

    async def release_parked(self, key: tuple[str, str] | None, older_than: float = 0.0) -> None:
        """Release the parked leases of ``key`` (None: all) parked for over ``older_than`` s."""
        now = time.monotonic()
        done: list[_Lease] = []
        with self._lock:
            for lease_key, parked in self._parked.items():
                if key is not None and lease_key != key:
                    continue
                keep = deque(
                    lease for lease in parked if lease.parked is not None and now - lease.parked < older_than
                )
                done += [lease for lease in parked if lease not in keep]
                self._parked[lease_key] = keep
        await asyncio.gather(*(self.release(lease) for lease in done))

    async def release_all(self) -> None:
        """Release every server lease (at exit)."""
        with self._lock:
            grants = list(self._grants.values())
            self._grants.clear()
            self._parked.clear()
        await asyncio.gather(*(self._release_id(grant.id) for grant in grants))

    async def _release_id(self, lease_id: UUID) -> None:
        try:
            client = await self._api()
            await client.release_concurrency_slots_with_lease(lease_id=lease_id)
        except Exception as exc:
            _log.warning("Releasing concurrency lease %s failed (it expires on its own): %s", lease_id, exc)

    # -- renewal and idle leases -----------------------------------------------------------------

    async def _housekeeping(self) -> None:
        """Renew leases past half their duration; release leases parked too long."""
        while True:
            await asyncio.sleep(min(0.5, IDLE_LEASE_SECONDS / 4))
            try:
                await self.release_parked(None, older_than=IDLE_LEASE_SECONDS)
                now = time.monotonic()
                with self._lock:
                    due = [
                        grant for grant in self._grants.values() if now - grant.renewed > grant.duration / 2
                    ]
                for grant in due:
                    await self._renew(grant)
            except Exception as exc:  # keep the loop alive whatever happens
                _log.warning("Concurrency lease housekeeping failed: %s", exc)

    async def _renew(self, grant: _Grant) -> None:
        client = await self._api()
        try:
            await client.renew_concurrency_lease(lease_id=grant.id, lease_duration=grant.duration)
        except Exception as exc:
            gone = isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code in (404, 410)
            with self._lock:
                held = grant.id in self._grants
                if gone and held:
                    self._grants.pop(grant.id, None)
            if held:
                _log.warning(
                    "Renewing concurrency lease %s of %r failed%s: %s",
                    grant.id,
                    grant.key[1],
                    " (the slot is no longer reserved; the call goes on)" if gone else "",
                    exc,
                )
            return
        grant.renewed = time.monotonic()

    def close(self, timeout: float) -> None:
        """Release every lease (waiting up to ``timeout`` s), close the client, stop the loop."""
        if not self._loop.is_running():
            return

        async def shutdown() -> None:
            await self.release_all()
            if self._client is not None:
                await self._client.__aexit__(None, None, None)

        try:
            self.submit(shutdown()).result(timeout)
        except Exception:  # noqa: S110 - best effort at exit
            pass
        with contextlib.suppress(RuntimeError):  # already closed
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=1.0)


def _float(value: str | None, default: float) -> float:
    try:
        return float(value) if value is not None else default
    except ValueError:
        return default


_services: dict[str, _LeaseService] = {}


def _service_for(name: str) -> _LeaseService:
    """The lease service of the current server (made on first use, with the caller's settings)."""
    server = _server_key(name)[0]
    with _registry_lock:
        service = _services.get(server)
        if service is None:
            service = _services[server] = _LeaseService(server, _settings_context())
        return service


def _settings_context() -> contextvars.Context:
    """A context holding only the caller's Prefect settings (API URL, key, ...), for the client
    the service makes: nothing else of the caller's run is kept alive."""
    context = contextvars.Context()
    settings = SettingsContext.get()
    if settings is not None:
        context.run(SettingsContext.__var__.set, settings)
    return context


def _forget_limit(name: str) -> None:
    with _registry_lock:
        _limits.pop(_server_key(name), None)


@atexit.register
def _release_at_exit() -> None:
    with _registry_lock:
        services = list(_services.values())
        _services.clear()
    for service in services:
        service.close(timeout=3.0)
