"""Running a batch's rows: workers started wave by wave under the shared limit, and the progress
artifact they move. Shared by ``batch_generate`` and the chain engine (``batch_edit``,
``batch_pipeline``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

import anyio
from prefect.artifacts import aupdate_progress_artifact

from prefect_gpt_image.calls import ensure_limit, slots_in_use

__all__ = ["Progress", "run_workers"]

_PROGRESS_INTERVAL = 1.0
_FIRST_WAVE_WAIT = 3.0


async def run_workers(worker: Callable[[], Awaitable[None]], count: int, settings: Any, logger: Any) -> None:
    """Run ``count`` workers: the first wave (as many as the limit has slots) one after another,
    each once the one before holds its slot, then the others. Starting a row (reading its inputs,
    building its request, taking its lock) costs the event loop some milliseconds; started all at
    once, every row would wait for all the others to start before its paid call goes out, and rows
    beyond the limit only wait anyway."""
    if count <= 1:
        await worker()
        return
    name = settings.concurrency_limit_name
    slots = (await ensure_limit(name, settings.concurrency_limit, logger=logger)).limit
    first = min(count, max(1, slots))
    running: list[asyncio.Future[None]] = []
    try:
        await _start_first_wave(worker, first, name, running)
        running.extend(asyncio.ensure_future(worker()) for _ in range(count - first))
        await asyncio.gather(*running)
    except BaseException:
        for task in running:
            task.cancel()
        # Rows whose images are paid for finish storing them before the cancellation goes on.
        with anyio.CancelScope(shield=True):
            while not all(task.done() for task in running):
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait(running)
        raise


async def _start_first_wave(
    worker: Callable[[], Awaitable[None]], first: int, name: str, running: list[asyncio.Future[None]]
) -> None:
    """Start ``first`` workers into ``running``, each once the one before holds a slot of ``name``."""
    loop = asyncio.get_running_loop()
    for index in range(first):
        running.append(asyncio.ensure_future(worker()))
        if index + 1 == first:
            break
        # Until this row holds its slot (or any row ended, or the limit is busy elsewhere).
        deadline = loop.time() + _FIRST_WAVE_WAIT / first
        while (
            slots_in_use(name) <= index
            and not any(task.done() for task in running)
            and loop.time() < deadline
        ):
            await asyncio.sleep(0.001)


class Progress:
    """A progress artifact that moves as rows land, updated at most once a second, in the
    background (a row never waits for the update)."""

    def __init__(self, total: int, artifact_id: UUID) -> None:
        self.total, self.artifact_id, self.done = total, artifact_id, 0
        self._last = time.monotonic()
        self._update: asyncio.Task[None] | None = None

    def advance(self) -> None:
        """Count one more finished row (or step); send the percentage if the last is a second old."""
        self.done += 1
        busy = self._update is not None and not self._update.done()
        if not busy and time.monotonic() - self._last >= _PROGRESS_INTERVAL:
            self._last = time.monotonic()
            self._update = asyncio.ensure_future(self._send())

    async def finish(self) -> None:
        """Send the final percentage (after any update in flight); raises if it cannot."""
        if self._update is not None:
            await asyncio.gather(self._update, return_exceptions=True)
        self._last = time.monotonic()
        await self._send(best_effort=False)

    async def _send(self, best_effort: bool = True) -> None:
        percent = 100.0 * self.done / self.total if self.total else 100.0
        try:
            await aupdate_progress_artifact(self.artifact_id, percent)
        except Exception:
            if not best_effort:
                raise
