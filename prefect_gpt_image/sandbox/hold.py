"""The answer hold: the sandbox keeps result downloads (``GET /media/{name}``) waiting until a
test lets them go, so a test can choose the moment between "the API answered" and "the images are
stored" (for example to kill the client there) instead of hoping to hit it.

Armed with :meth:`AnswerHold.hold` (every download from then on, or the next ``count``), a GET waits
before it is served or counted; :attr:`AnswerHold.held` names the downloads waiting now, so the
test waits on the sandbox's state, not on a clock. :meth:`AnswerHold.release` lets them all go on
and holds no more (the server releases on stop, so a held GET never outlives it). Readable and
settable over HTTP too: ``GET /sandbox/hold`` and ``POST /sandbox/hold`` with
``{"hold": true, "count": 2}`` or ``{"hold": false}``.
"""

from __future__ import annotations

import asyncio
import threading

__all__ = ["AnswerHold"]

_POLL_SECONDS = 0.01


class AnswerHold:
    """Result downloads kept waiting until released; thread-safe (armed from a test's thread,
    waited on by the server's event loop)."""

    def __init__(self) -> None:
        """Start disarmed: nothing is held."""
        self._lock = threading.Lock()
        self._armed = False
        self._left: int | None = None
        self._gate = threading.Event()
        self._held: list[str] = []

    def hold(self, count: int | None = None) -> None:
        """Hold every download from now on (``count`` None) or only the next ``count`` of them."""
        if count is not None and count < 0:
            raise ValueError("count must not be negative")
        with self._lock:
            self._armed, self._left = True, count
            if self._gate.is_set() or not self._held:
                self._gate = threading.Event()

    def release(self) -> None:
        """Let every held download go on, and hold no more."""
        with self._lock:
            self._armed, self._left = False, None
            self._gate.set()

    @property
    def held(self) -> list[str]:
        """The media names of the downloads waiting now, in arrival order."""
        with self._lock:
            return list(self._held)

    @property
    def armed(self) -> bool:
        """Whether a download arriving now would be held."""
        with self._lock:
            return self._armed and self._left != 0

    async def wait(self, name: str) -> None:
        """(The media route.) If armed, count ``name`` as held and wait until released."""
        with self._lock:
            if not self._armed or self._left == 0:
                return
            if self._left is not None:
                self._left -= 1
            gate = self._gate
            self._held.append(name)
        try:
            while not gate.is_set():
                await asyncio.sleep(_POLL_SECONDS)
        finally:
            with self._lock:
                self._held.remove(name)

    def to_json(self) -> dict[str, object]:
        """What ``GET /sandbox/hold`` shows."""
        with self._lock:
            return {"armed": self._armed and self._left != 0, "left": self._left, "held": list(self._held)}
