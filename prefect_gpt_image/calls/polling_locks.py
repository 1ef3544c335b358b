"""The waiting half every lock manager here shares (:class:`PollingLocks`) and the default hold.

Its own module so that :mod:`.locks` (which builds a Redis manager when a URL asks for one) and
:mod:`.redis_locks` (a :class:`PollingLocks`) both import it without importing each other.
"""

from __future__ import annotations

import asyncio
import time

__all__ = ["DEFAULT_HOLD_TIMEOUT", "PollingLocks"]

DEFAULT_HOLD_TIMEOUT = 3600.0
"""Seconds a lock is held at most unless the caller says otherwise: longer than the slowest
image call under the default settings (5 attempts of at most 6 minutes each, plus backoff)."""
_POLL_SECONDS = 0.05


class PollingLocks:
    """The waiting half of a ``LockManager``, written once for every lock manager here: acquire and
    wait by polling ``_try_acquire`` / ``is_locked`` (async callers with ``asyncio.sleep``, so a
    waiting call never blocks its event loop)."""

    def _try_acquire(self, key: str, holder: str, hold_timeout: float | None) -> bool:
        raise NotImplementedError

    def is_locked(self, key: str) -> bool:
        """Whether ``key`` is locked by anyone (expired locks are not)."""
        raise NotImplementedError

    def acquire_lock(
        self,
        key: str,
        holder: str,
        acquire_timeout: float | None = None,
        hold_timeout: float | None = None,
    ) -> bool:
        """Take the lock on ``key`` for ``holder``, waiting up to ``acquire_timeout`` seconds
        (None: until it is free; 0: no wait). Held ``hold_timeout`` seconds at most (None: the
        default). Acquiring a lock one holds extends it. Returns whether it was acquired."""
        deadline = None if acquire_timeout is None else time.monotonic() + acquire_timeout
        while not self._try_acquire(key, holder, hold_timeout):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_SECONDS)
        return True

    async def aacquire_lock(
        self,
        key: str,
        holder: str,
        acquire_timeout: float | None = None,
        hold_timeout: float | None = None,
    ) -> bool:
        """:meth:`acquire_lock` for async callers (polls without blocking the event loop)."""
        deadline = None if acquire_timeout is None else time.monotonic() + acquire_timeout
        while not self._try_acquire(key, holder, hold_timeout):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(_POLL_SECONDS)
        return True

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        """Wait until ``key`` is free (True) or ``timeout`` seconds pass (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_locked(key):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_SECONDS)
        return True

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        """:meth:`wait_for_lock` for async callers."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_locked(key):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(_POLL_SECONDS)
        return True
