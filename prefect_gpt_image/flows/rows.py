"""Running a batch's rows: workers started wave by wave under the shared limit, and the progress
they move: the run's progress artifact, and in this process whoever watches it
(:func:`watch_progress`: the command line's progress bar). Shared by ``batch_generate`` and the
chain engine (``batch_edit``, ``batch_pipeline``)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal
from uuid import UUID

import anyio
from prefect.artifacts import aupdate_progress_artifact

from prefect_gpt_image.calls import Bill, Charges, ensure_limit, slots_in_use

__all__ = ["Progress", "ProgressReport", "run_workers", "watch_progress"]

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


@dataclass(frozen=True)
class ProgressReport:
    """Where a batch is: ``done`` of ``total`` rows (or steps, ``unit``) finished, and what the
    finished ones paid and were served from the store (the sum of their :class:`Charges`, the
    same figures as the run's bill). ``final``: the batch's last report."""

    done: int
    total: int
    unit: Literal["rows", "steps"]
    bill: Bill = field(default_factory=Bill)
    final: bool = False


ProgressWatcher = Callable[[ProgressReport], None]
_watchers: list[ProgressWatcher] = []
_watchers_lock = threading.Lock()


@contextlib.contextmanager
def watch_progress(watcher: ProgressWatcher) -> Iterator[None]:
    """While inside, ``watcher`` gets a :class:`ProgressReport` of every batch run in this process
    when it starts, each time a row (or step) finishes and when it ends, on the run's event loop
    thread: it must return at once (the command line's progress display draws from it)."""
    with _watchers_lock:
        _watchers.append(watcher)
    try:
        yield
    finally:
        with _watchers_lock:
            _watchers.remove(watcher)


class Progress:
    """A batch's progress: the progress artifact, updated at most once a second in the background
    (a row never waits for the update), and a report to this process's watchers
    (:func:`watch_progress`) at the start, at each finished row or step and at the end."""

    def __init__(
        self, total: int, artifact_id: UUID, *, unit: Literal["rows", "steps"] = "rows", done: int = 0
    ) -> None:
        self.total, self.artifact_id, self.done, self.unit = total, artifact_id, done, unit
        self.bill = Bill()
        self._last = time.monotonic()
        self._update: asyncio.Task[None] | None = None
        self._report()

    def advance(self, charges: Charges | None = None) -> None:
        """Count one more finished row (or step), and what it paid or was served (``charges``;
        None: nothing, e.g. an invalid row); send the percentage if the last is a second old."""
        self.done += 1
        if charges is not None:
            self.bill.add(charges.bill())
        self._report()
        busy = self._update is not None and not self._update.done()
        if not busy and time.monotonic() - self._last >= _PROGRESS_INTERVAL:
            self._last = time.monotonic()
            self._update = asyncio.ensure_future(self._send())

    async def finish(self) -> None:
        """Send the final percentage (after any update in flight); raises if it cannot."""
        self._report(final=True)
        if self._update is not None:
            await asyncio.gather(self._update, return_exceptions=True)
        self._last = time.monotonic()
        await self._send(best_effort=False)

    def _report(self, final: bool = False) -> None:
        with _watchers_lock:
            watchers = list(_watchers)
        if not watchers:
            return
        report = ProgressReport(self.done, self.total, self.unit, dataclasses.replace(self.bill), final=final)
        for watcher in watchers:
            watcher(report)

    async def _send(self, best_effort: bool = True) -> None:
        percent = 100.0 * self.done / self.total if self.total else 100.0
        try:
            await aupdate_progress_artifact(self.artifact_id, percent)
        except Exception:
            if not best_effort:
                raise
