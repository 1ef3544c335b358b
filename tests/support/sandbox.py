"""Reading what the sandbox saw and billed, over its JSON endpoints, as any test would; waiting on
its state (:func:`wait_until`) and holding its simulated waits (:class:`HeldWaits`) instead of
timing it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx


def sandbox_requests(sandbox: Any) -> list[dict[str, Any]]:
    """The sandbox's request log: one entry per API request it received."""
    return list(httpx.get(f"{sandbox.url}/sandbox/requests").json()["requests"])


def ledger(sandbox: Any) -> dict[str, Any]:
    """The sandbox's billing ledger (entries and stats)."""
    return dict(httpx.get(f"{sandbox.url}/sandbox/ledger").json())


def billed_images(sandbox: Any) -> int:
    """How many images the sandbox billed."""
    return int(ledger(sandbox)["stats"]["billed_images"])


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Poll ``condition`` (the sandbox's or a server's own state) until true; FAIL after
    ``timeout`` seconds naming ``what`` never happened (a wait that ends silently proves nothing)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f} s, but never: {what}")
        time.sleep(0.005)


class HeldWaits:
    """Stands in for a sandbox's simulated waits (``sandbox.state.sleep``: latency, its share
    between stream events, a ``slow`` fault): records the seconds of each wait asked for and holds
    it until the test releases it, so a test sees what the sandbox does meanwhile, by its state,
    not by a clock. ``hold=False`` lets every wait pass at once (recording only).

    A held wait not released within ``timeout`` seconds fails its request (the test is stuck).
    """

    def __init__(self, sandbox: Any, *, hold: bool = True, timeout: float = 15.0) -> None:
        """Take over ``sandbox``'s waits."""
        self.requested: list[float] = []
        self._hold = hold
        self._released = 0
        self._timeout = timeout
        self._lock = threading.Lock()
        self._real_sleep = asyncio.sleep
        sandbox.state.sleep = self._sleep

    async def _sleep(self, seconds: float) -> None:
        with self._lock:
            index = len(self.requested)
            self.requested.append(seconds)
        deadline = time.monotonic() + self._timeout
        while not self._passes(index):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the test never released the sandbox's wait #{index + 1}")
            await self._real_sleep(0.002)

    def _passes(self, index: int) -> bool:
        with self._lock:
            return not self._hold or index < self._released

    def release(self, count: int = 1) -> None:
        """Let the next ``count`` waits (in the order asked for) pass."""
        with self._lock:
            self._released += count

    def release_all(self) -> None:
        """Let every wait pass, held now or asked for later."""
        with self._lock:
            self._hold = False

    def wait_asked(self, count: int) -> None:
        """Block until the sandbox has asked for ``count`` waits in all (fail if it never does)."""
        wait_until(lambda: len(self.requested) >= count, f"{count} wait(s) asked of the sandbox")
