"""What a paid call and a batch hold: :func:`api_slot` (a gate slot, a lease and a rate-limit
token for one call) and :func:`hold_slots` (leases kept, and prefetched, for a batch).

:func:`process_limits` is the one way to make calls with no Prefect server at all: inside it a
call holds only this process's gate, no lease (see its docstring for when that is right)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError, rate_limit

from . import leases
from .admission import arrived, demand, on_the_way
from .gate import SlotGate
from .leases import _Lease, _LimitNotFound, _service_for, _services
from .limits import _forget_limit, _registry_lock, _server_key, ensure_limit, gate_for

__all__ = ["ApiSlot", "api_slot", "hold_slots", "process_limits", "release_idle_leases"]

_T = TypeVar("_T")
_PROCESS_ONLY: ContextVar[bool] = ContextVar("prefect_gpt_image_process_limits", default=False)


@contextmanager
def process_limits() -> Iterator[None]:
    """Paid calls made inside hold only this process's gate (sized to the settings'
    ``concurrency_limit``), no lease of the server's global limit and no rate-limit token: they
    make no request to a Prefect API.

    For one call made where no Prefect server is configured (the command line's ``generate``,
    ``edit``): the global limit lives on a server, and reading it there would start Prefect's
    ephemeral server (about 10 s) only to count one call. Calls of other processes are then not
    counted against it, which is why flows and tasks never use this. Everything else of the call
    (cache record, lock, spool, budget, retries) is unchanged."""
    token = _PROCESS_ONLY.set(True)
    try:
        yield
    finally:
        _PROCESS_ONLY.reset(token)


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
        this process waiting at the gate, or is kept for a batch (:func:`hold_slots`), for a call
        of this process on its way to the gate (:func:`~.admission.on_the_way`) or while other
        slots of its server lease are in use, or is released on the server (with the parked
        slots of its server lease)."""
        if self._released:
            return
        self._released = True
        lease, self._lease = self._lease, None
        try:
            if lease is not None:
                service = lease.service
                # A slot of a lease of several (a fan-out's first wave) frees nothing on the
                # server while the others are in use: it is kept until the last comes back.
                keep = self._gate.waiting or _holding(lease.key) or on_the_way(lease.key)
                if keep or service.others_in_use(lease):
                    service.park(lease)
                else:
                    await _shielded(service.submit(service.release(lease, with_parked=True)))
        finally:
            self._gate.release()


@asynccontextmanager
async def api_slot(
    name: str,
    slots: int,
    *,
    requests_per_minute: int | None = None,
    rate_limit_name: str | None = None,
    lease_seconds: float | None = None,
    logger: Any = None,
) -> AsyncIterator[ApiSlot]:
    """Hold what one paid call needs: a local gate slot, a lease of one slot of global limit
    ``name`` (created with ``slots`` if missing; an error if it cannot be found) and, with
    ``requests_per_minute``, a token of the rate limit ``rate_limit_name``. ``lease_seconds``: the
    lease's duration (default :func:`~.leases.lease_seconds`). Yields an
    :class:`ApiSlot` that may be released before the block ends. Inside :func:`process_limits`
    only the local gate is held, sized ``slots``."""
    if _PROCESS_ONLY.get():
        local = gate_for(name, slots)
        await local.acquire_async()
        only_gate = ApiSlot(local, None)
        try:
            yield only_gate
        finally:
            await only_gate.release()
        return
    info = await ensure_limit(name, slots, logger=logger)
    if not info.active and logger is not None:
        logger.warning("The global concurrency limit %r is inactive: Prefect does not enforce it", name)
    gate = gate_for(name, info.limit)
    arrived(_server_key(name))  # waiting at the gate from now on, if it must wait
    await gate.acquire_async()
    try:
        duration = leases.lease_seconds() if lease_seconds is None else lease_seconds
        lease = await _take_lease(name, slots, duration, logger, info.limit) if info.active else None
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


async def _take_lease(name: str, slots: int, lease_seconds: float, logger: Any, limit: int) -> _Lease:
    """A lease of one slot of ``name``: a parked one of this process, else a new one, asked for
    together with the calls of this process that want one soon (up to ``limit``, the limit's
    slots; see :func:`~.admission.demand` and :meth:`~.leases._LeaseService.acquire`)."""
    service = _service_for(name)
    key = _server_key(name)
    parked = service.unpark(key)
    if parked is not None:
        return parked
    want = min(limit, demand(key))
    try:
        return await _shielded(service.submit(service.acquire(name, lease_seconds, want=want)))
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
                fetching.append(fetcher.submit(fetcher.prefetch(name, leases.lease_seconds(), count)))
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
