"""The lease service: one background thread and API client per server that acquires, renews,
parks and releases the leases of global limits (all of them released at exit).

Over 400 lines on purpose: the service thread, its request queue and the lease records share one
lock and one lifecycle (start, fork, exit); split, each half would reach into the other's state.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import contextvars
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar
from uuid import UUID

import httpx
from prefect.client.orchestration import PrefectClient, get_client
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
from prefect.context import SettingsContext

from .limits import _registry_lock, _server_key

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "IDLE_LEASE_SECONDS",
    "LEASE_SECONDS_ENV",
    "MAX_POLL_SECONDS",
    "lease_seconds",
]

IDLE_LEASE_SECONDS = 2.0
"""Longest time a lease not used by any call is kept (for the next call) before it is released."""
LEASE_SECONDS_ENV = "GPT_IMAGE_LEASE_SECONDS"
"""Environment variable: the duration of a lease of a global-limit slot (default 60 s)."""
DEFAULT_LEASE_SECONDS = 60.0
_EXPIRY_MARGIN_SECONDS = 5.0
"""A lease not renewed for its duration less this is treated as expired (not handed to a call)."""
MAX_POLL_SECONDS = 1.0
"""Longest wait between two tries of a denied (423) acquisition: slots held by other processes
are polled at least this often, whatever Retry-After the server suggests."""

_log = logging.getLogger("prefect_gpt_image.calls.concurrency")
_T = TypeVar("_T")


def lease_seconds() -> float:
    """How long a lease of a slot lasts unless renewed (``$GPT_IMAGE_LEASE_SECONDS``, default and
    least 60 s, the shortest the server accepts; it was 300 s).

    Held leases are renewed at half their duration, so a call may outlive a Prefect server outage
    of about half of it; a process killed with its leases (SIGKILL, a worker's shutdown) leaves its
    slots taken until the server's repossessor (every 15 s) finds them expired.
    """
    raw = os.environ.get(LEASE_SECONDS_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_LEASE_SECONDS
    except ValueError:
        raise ValueError(f"{LEASE_SECONDS_ENV} must be a number of seconds, not {raw!r}") from None
    if value < 60:  # the server refuses shorter leases (HTTP 422)
        raise ValueError(f"{LEASE_SECONDS_ENV} must be at least 60 seconds, not {value:g}")
    return value


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
        self, name: str, duration: float, *, reuse_parked: bool = True, wait: bool = True, want: int = 1
    ) -> _Lease:
        """A lease of one slot of ``name``.

        With ``reuse_parked`` (a call's acquisition), a lease parked by this process is taken
        first, and while a prefetch of this limit is under way the call waits for its lease
        instead of asking the server. Otherwise (a prefetch) a new lease is always asked for.
        ``want`` > 1 (this call and the calls of this process right behind it): while this
        process holds no lease of the limit, ask once for that many slots in one lease (one round
        trip for a fan-out's first wave, instead of one each, queued on the server's limit row),
        parked for those calls; if they are not all free, ask for one as usual.
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
                if want > 1 and not self.holds(key):
                    await self.prefetch(name, duration, want)
                    want = 1  # taken from the parked ones next, or (not all free) asked for alone
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

    def holds(self, key: tuple[str, str]) -> bool:
        """Whether this process holds a lease of limit ``key`` (in use or parked)."""
        with self._lock:
            return any(grant.key == key for grant in self._grants.values())

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
        """A parked lease of limit ``key`` for a new call, or None. Callable from any thread.

        A lease that may have expired on the server (not renewed for nearly its duration, e.g.
        while the server is down) is never handed out: it is released, and the call asks for a
        new one, so no paid call starts without a live lease."""
        stale: list[_Lease] = []
        found: _Lease | None = None
        now = time.monotonic()
        with self._lock:
            parked = self._parked.get(key)
            while parked:
                lease = parked.pop()
                if lease.released:
                    continue
                lease.parked = None
                if now - lease.grant.renewed >= lease.grant.duration - _EXPIRY_MARGIN_SECONDS:
                    stale.append(lease)
                    continue
                found = lease
                break
        for lease in stale:
            _log.warning("A concurrency lease of %r was not renewed in time: not reused", lease.key[1])
            with contextlib.suppress(RuntimeError):  # the loop is closed (at exit)
                self.submit(self.release(lease))
        return found

    def others_in_use(self, lease: _Lease) -> bool:
        """Whether other slots of ``lease``'s server lease are in use by calls (not parked):
        giving ``lease`` back alone would free nothing on the server until they are back."""
        grant = lease.grant
        with self._lock:
            parked = sum(1 for other in self._parked.get(lease.key, ()) if other.grant is grant)
            return grant.held - parked > 1

    async def release(self, lease: _Lease, *, with_parked: bool = False) -> None:
        """Give the slot ``lease`` back; its server lease goes when none of its slots is held
        (errors are logged: the server lease then expires). ``with_parked``: the parked slots
        of the same server lease go back with it (none in use: the server lease goes now)."""
        grant = lease.grant
        with self._lock:
            if lease.released:
                return
            lease.released = True
            grant.held -= 1
            if with_parked and lease.key in self._parked:
                parked = self._parked[lease.key]
                for other in [other for other in parked if other.grant is grant]:
                    parked.remove(other)
                    other.released, other.parked = True, None
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


@atexit.register
def _release_at_exit() -> None:
    with _registry_lock:
        services = list(_services.values())
        _services.clear()
    for service in services:
        service.close(timeout=3.0)
