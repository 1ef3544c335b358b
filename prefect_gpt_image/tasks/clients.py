"""One pooled :class:`~prefect_gpt_image.api.AsyncImagesClient` per (event loop, configuration).

An httpx connection pool belongs to the event loop it was opened on, so clients are shared per
loop: tasks awaited together in an async flow reuse one pool. A task submitted from a sync flow
runs in a worker thread under its own ``asyncio.run`` loop, which ends with the task.

Clients are closed cleanly when their loop shuts down: each loop's registry parks an async
generator on it, and ``asyncio.run`` (like any orderly shutdown calling
``loop.shutdown_asyncgens()``) finalizes it while the loop still runs, closing the loop's clients.
Loops that live until the process exits (such as Prefect's run-sync loop) are closed at exit.
:func:`aclose_clients` closes the current loop's clients at any time.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
import weakref
from collections.abc import AsyncGenerator

from prefect_gpt_image.api import AsyncImagesClient, ClientConfig

__all__ = ["aclose_clients", "shared_client"]


class _LoopClients:
    """The clients of one event loop and the async generator that closes them."""

    def __init__(self) -> None:
        self.clients: dict[ClientConfig, AsyncImagesClient] = {}
        self.closer: AsyncGenerator[None, None] | None = None


_registry: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClients] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


async def _close_on_shutdown(entry: _LoopClients) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await _close_all(entry)


async def _close_all(entry: _LoopClients) -> None:
    with _lock:
        clients = list(entry.clients.values())
        entry.clients.clear()
    for client in clients:
        try:
            await client.aclose()
        except Exception:  # noqa: S110 - closing is best effort
            pass


async def shared_client(config: ClientConfig) -> AsyncImagesClient:
    """The current loop's client for ``config``, made on first use."""
    loop = asyncio.get_running_loop()
    start_closer = False
    with _lock:
        entry = _registry.get(loop)
        if entry is None:
            entry = _registry[loop] = _LoopClients()
            start_closer = True
        client = entry.clients.get(config)
        if client is None:
            client = entry.clients[config] = AsyncImagesClient(config=config)
    if start_closer:
        closer = _close_on_shutdown(entry)
        entry.closer = closer  # a strong reference: the loop tracks it only weakly
        await closer.__anext__()
    return client


async def aclose_clients() -> None:
    """Close the current event loop's clients (new ones are made when needed)."""
    with _lock:
        entry = _registry.get(asyncio.get_running_loop())
    if entry is not None:
        await _close_all(entry)


def _close_at_exit() -> None:
    with _lock:
        entries = list(_registry.items())
    for loop, entry in entries:
        if not entry.clients or loop.is_closed() or not loop.is_running():
            continue
        future = asyncio.run_coroutine_threadsafe(_close_all(entry), loop)
        try:
            future.result(timeout=2.0)
        except (asyncio.CancelledError, Exception):
            future.cancel()


atexit.register(_close_at_exit)
