"""How many image task runs a process has in progress at once, per limit: twice its slots.

A user's flow may start hundreds of calls together (``asyncio.gather`` of 200 ``generate_image``
calls). Started at once, every call's Prefect task run and pre-call work share the event loop
with every other, so the first paid request waits for all of them to start (measured: 3.2 s
before the first request of 200 calls under a limit of 16, against 1.1 s for 100). Calls beyond
twice the limit's slots wait here, before their task run starts, in the order they were made:
the loop then holds only the calls that can use a slot soon, whatever the fan-out.

It also tells a call that gives its slot back whether another call of this process is on its
way to the gate (admitted, not yet come for a slot): its lease is then kept for that call
(released after :data:`~.leases.IDLE_LEASE_SECONDS` if unused) instead of going back to the
server, which the next call would have to ask again (a round trip per call; on Prefect's
ephemeral SQLite server, under the load of a fan-out, hundreds of milliseconds).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import Context, ContextVar
from typing import Any

from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from prefect.settings import PREFECT_API_URL

from .gate import SlotGate
from .leases import _service_for, lease_seconds
from .limits import _gates, _registry_lock, _server_key, ensure_limit

__all__ = [
    "ADMISSION_FACTOR",
    "EPHEMERAL_ADVICE",
    "admitted",
    "arrived",
    "demand",
    "on_the_way",
    "progress",
    "started_together",
]

ADMISSION_FACTOR = 2
"""Task runs in progress per slot of the limit (calls that hit the cache or the spool hold no
slot, and calls storing their images gave theirs back)."""

_log = logging.getLogger("prefect.gpt_image")
_admissions: dict[tuple[str, str], SlotGate] = {}
_on_the_way: dict[tuple[str, str], int] = {}
_CALL: ContextVar[list[Any] | None] = ContextVar("prefect_gpt_image_admitted_call", default=None)
"""The current call's admission: [limit key, still on its way to the API slot]."""
_FAN_OUT: ContextVar[int] = ContextVar("prefect_gpt_image_fan_out", default=1)
"""How many calls were started together with the current one (:func:`started_together`)."""
_lock = threading.Lock()
_leasing_ahead: dict[tuple[str, str], concurrent.futures.Future[None]] = {}
"""Limits whose slots a call is leasing ahead of the calls started with it (:func:`_lease_ahead`)."""
_counts = [0, 0]
"""Admitted calls of this process that came for their API slot, and calls that waited to be admitted."""


def _gate(name: str, slots: int) -> SlotGate:
    key = _server_key(name)
    with _registry_lock:
        known = _gates.get(key)  # sized to the server's value once a call has read it
    capacity = ADMISSION_FACTOR * max(1, known.capacity if known is not None else slots)
    with _lock:
        gate = _admissions.get(key)
        if gate is None:
            gate = _admissions[key] = SlotGate(capacity)
            return gate
    if gate.capacity != capacity:
        gate.set_capacity(capacity)
    return gate


def on_the_way(key: tuple[str, str]) -> bool:
    """Whether a call in front of limit ``key`` (server, name) is admitted and has not yet come
    for its API slot (:func:`arrived`), or waits to be admitted (it comes when a call ends its
    task run): a lease given back now would soon be asked for again. (A call that then hits the
    cache never comes: a kept lease goes back soon.)"""
    with _lock:
        gate = _admissions.get(key)
        return _on_the_way.get(key, 0) > 0 or (gate is not None and gate.waiting > 0)


def arrived(key: tuple[str, str]) -> None:
    """The current call (if admitted in front of ``key``) has come for its API slot."""
    token = _CALL.get()
    if token is not None and token[0] == key and token[1]:
        token[1] = False
        with _lock:
            _on_the_way[key] -= 1
            _counts[0] += 1


def started_together(context: Context, count: int) -> None:
    """Note in ``context`` (a call's, before it starts) that it is one of ``count`` calls started
    together (a ``.map``), which its first wave starts one by one: :func:`demand` counts them."""
    context.run(_FAN_OUT.set, count)


def demand(key: tuple[str, str]) -> int:
    """How many calls of this process want a slot of limit ``key`` (server, name) soon, the
    current one (which has come for its slot) included: those admitted and on their way, those
    waiting to be admitted, or the size of the fan-out it was started with, whichever is more."""
    with _lock:
        coming = _on_the_way.get(key, 0)
        gate = _admissions.get(key)
    waiting = gate.waiting if gate is not None else 0
    return max(_FAN_OUT.get(), 1 + coming + waiting)


def progress() -> tuple[int, int]:
    """(calls of this process, admitted, that came for their API slot; calls that had to wait to
    be admitted), both counted since the process started: a starter of many calls reads them to
    start each once the one before is through its pre-call work, until the places are full."""
    with _lock:
        return _counts[0], _counts[1]


@asynccontextmanager
async def admitted(name: str, slots: int) -> AsyncIterator[None]:
    """Hold one of the places for task runs in front of limit ``name`` (``slots``: its slots
    until the server's value is known)."""
    gate = _gate(name, slots)
    if gate.held >= gate.capacity:
        with _lock:
            _counts[1] += 1
        _advise_a_server(gate)
    async with gate.slot():
        key = _server_key(name)
        token: list[Any] = [key, True]
        with _lock:
            _on_the_way[key] = _on_the_way.get(key, 0) + 1
        reset = _CALL.set(token)
        try:
            await _lease_ahead(name, slots, key)
            yield
        finally:
            _CALL.reset(reset)
            arrived_token, token[1] = token[1], False
            if arrived_token:
                with _lock:
                    _on_the_way[key] -= 1


async def _lease_ahead(name: str, slots: int, key: tuple[str, str]) -> None:
    """Before the first task run of calls started together, take their first wave's slots in
    one lease (parked for them), unless this process already holds a lease of the limit.

    Why before the task runs start: their creation writes to the Prefect server's database, and
    on Prefect's ephemeral default (SQLite) a lease asked for meanwhile waits for the database
    lock. Measured on 3.9.1 (2 cores): asked for right before a ``.map`` of 24, 10-180 ms; right
    after it, 2.0-2.5 s, once 60 s (the server's busy timeout). The calls that come meanwhile
    wait for it (a few milliseconds on an idle server) rather than start their task runs, and
    take their slots from it at the gate. Nothing is asked for a lone call, or when the slots
    are not all free (each call then asks for its own, as before). Calls that turn out to be
    cache hits leave the slots parked until they go back after
    :data:`~.leases.IDLE_LEASE_SECONDS`.
    """
    with _lock:
        pending = _leasing_ahead.get(key)
        mine = pending is None
        if mine:
            pending = _leasing_ahead[key] = concurrent.futures.Future()
    assert pending is not None
    if not mine:
        await asyncio.shield(asyncio.wrap_future(pending))
        return
    try:
        await asyncio.sleep(0)  # the calls started together with this one come in and are counted
        service = _service_for(name)
        want = demand(key)
        if want > 1 and not service.holds(key):
            info = await ensure_limit(name, slots)
            if info.active:
                prefetch = service.prefetch(name, lease_seconds(), min(want, info.limit))
                await asyncio.shield(asyncio.wrap_future(service.submit(prefetch)))
    except Exception as exc:  # each call then acquires its own lease, and reports what fails
        _log.debug("Leasing slots of %r ahead of a fan-out: %s", name, exc)
    finally:
        with _lock:
            del _leasing_ahead[key]
        pending.set_result(None)


EPHEMERAL_ADVICE = (
    "Prefect is running on its temporary server (no PREFECT_API_URL set: a SQLite database in a "
    "subprocess), and this flow runs many image calls at once ({waiting} waiting to start). That "
    "server falls behind under many task runs at once: runs slow down, stall for seconds, and it may "
    "print 'database is locked'. For fan-outs, start a Prefect server once in another terminal "
    "(`prefect server start`) and point runs at it "
    "(`prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api`)."
)
"""The one warning a process gives when a fan-out meets Prefect's ephemeral server."""
_advised = threading.Event()


def _advise_a_server(gate: SlotGate) -> None:
    """Say once per process, plainly, that the ephemeral server is what slows a fan-out down."""
    if _advised.is_set() or PREFECT_API_URL.value():
        return
    _advised.set()
    try:
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] = get_run_logger()
    except MissingContextError:
        logger = _log
    logger.warning(EPHEMERAL_ADVICE.format(waiting=gate.waiting + 1))
