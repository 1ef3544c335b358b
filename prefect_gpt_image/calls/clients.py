"""One pooled :class:`~prefect_gpt_image.api.AsyncImagesClient` per (event loop, configuration).

An httpx connection pool belongs to the event loop it was opened on, so clients are shared per
loop: tasks awaited together in an async flow reuse one pool. A task submitted from a sync flow
runs in a worker thread under its own ``asyncio.run`` loop, which ends with the task.

Clients are closed cleanly when their loop shuts down (each client arranges that on first use,
see :func:`prefect_gpt_image.api.loops.close_with_loop`); the clients of loops that live until the
process exits (such as Prefect's run-sync loop) are closed at exit.
:func:`aclose_clients` closes the current loop's clients at any time.

Results are streamed to files (the client's ``spool_dir``, a private temporary folder of this
process unless the configuration names one), not held in memory: a batch of 4K images then needs
memory for the few being checked at a time, not for every image in flight. The task removes each
file once the image is stored (:func:`discard_downloads`); the folder goes at exit.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import shutil
import tempfile
import threading
import weakref
from collections.abc import Iterable
from pathlib import Path

from prefect_gpt_image.api import AsyncImagesClient, ClientConfig, GeneratedImage

__all__ = ["aclose_clients", "discard_downloads", "download_dir", "shared_client"]


_Clients = dict[ClientConfig, AsyncImagesClient]
_registry: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Clients] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


async def _close_all(entry: _Clients) -> None:
    with _lock:
        clients = list(entry.values())
        entry.clear()
    for client in clients:
        try:
            await client.aclose()
        except Exception:  # noqa: S110 - closing is best effort
            pass


_downloads: Path | None = None


def download_dir() -> Path:
    """This process's folder for downloaded results (made on first use, removed at exit)."""
    global _downloads
    with _lock:
        if _downloads is None or not _downloads.is_dir():
            _downloads = Path(tempfile.mkdtemp(prefix="prefect-gpt-image-downloads-"))
        return _downloads


def discard_downloads(images: Iterable[GeneratedImage]) -> None:
    """Remove the download files of ``images`` (stored or spooled by now); bytes in memory stay."""
    for image in images:
        if image.path is not None and _downloads is not None and image.path.parent == _downloads:
            image.path.unlink(missing_ok=True)


@functools.lru_cache(maxsize=64)
def _with_download_dir(config: ClientConfig, folder: str) -> ClientConfig:
    """``config`` downloading into ``folder`` (made once per config: building one validates it)."""
    return config.with_options(spool_dir=folder)


async def shared_client(config: ClientConfig) -> AsyncImagesClient:
    """The current loop's client for ``config``, made on first use. Results go to files in
    :func:`download_dir` unless ``config`` names its own ``spool_dir``."""
    if config.spool_dir is None:
        config = _with_download_dir(config, str(download_dir()))
    loop = asyncio.get_running_loop()
    with _lock:
        entry = _registry.setdefault(loop, {})
        client = entry.get(config)
        if client is None:
            client = entry[config] = AsyncImagesClient(config=config)
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
        downloads = _downloads
    if downloads is not None:
        shutil.rmtree(downloads, ignore_errors=True)
    for loop, entry in entries:
        if not entry or loop.is_closed() or not loop.is_running():
            continue
        future = asyncio.run_coroutine_threadsafe(_close_all(entry), loop)
        try:
            future.result(timeout=2.0)
        except (asyncio.CancelledError, Exception):
            future.cancel()


atexit.register(_close_at_exit)
