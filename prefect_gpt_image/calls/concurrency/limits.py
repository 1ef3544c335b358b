"""The global concurrency limits as read from (or created on) the Prefect server, and the
process-wide registries keyed by (server, limit name): cached limit values and their gates."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import PREFECT_API_URL

from .gate import SlotGate

__all__ = ["LIMIT_REFRESH_SECONDS", "LimitInfo", "ensure_limit", "gate_for", "slots_in_use"]

LIMIT_REFRESH_SECONDS = 60.0
"""How long a limit's value read from the server is trusted before it is read again."""


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


def _forget_limit(name: str) -> None:
    with _registry_lock:
        _limits.pop(_server_key(name), None)
