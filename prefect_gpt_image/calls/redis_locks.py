"""Locks on a Redis server, for image calls made on many machines (``pip install
'prefect-gpt-image[redis]'``, then ``GPT_IMAGE_LOCK_URL=redis://host:6379/0``).

:class:`RedisImageLockManager` is prefect-redis's ``RedisLockManager`` made safe for the way image
calls use a lock: taken from async code (on whatever event loop the call runs), released from sync
code, re-taken to extend it. The parent's async locks live on an asyncio client bound to the loop
that first used it, and its ``release_lock`` calls the async lock's ``release()`` without awaiting
it, so a lock taken with ``aacquire_lock`` was never released: it blocked every other caller of the
same request until its hold timeout ran out. Here every operation is one short command on the
sync client (the lock is a key holding its holder, with an expiry, as redis-py's ``Lock`` keeps
it), and waits poll (async ones with ``asyncio.sleep``: a waiting call never blocks its loop).
"""

from __future__ import annotations

from prefect_redis.locking import RedisLockManager
from redis.exceptions import LockError
from redis.lock import Lock

from .polling_locks import DEFAULT_HOLD_TIMEOUT, PollingLocks

__all__ = ["RedisImageLockManager"]


class RedisImageLockManager(PollingLocks, RedisLockManager):  # type: ignore[misc]
    """A ``RedisLockManager`` whose locks always expire and work from sync and async code alike.

    ``default_hold_timeout`` applies when ``acquire_lock`` gets no ``hold_timeout``; re-acquiring a
    lock one holds extends it. Build it from a URL with :meth:`from_url`.
    """

    def __init__(
        self, *args: object, default_hold_timeout: float = DEFAULT_HOLD_TIMEOUT, **kwargs: object
    ) -> None:
        """The parent's connection arguments (``host``, ``port``, ``db``, ..., ``connection_url``)."""
        super().__init__(*args, **kwargs)
        if default_hold_timeout <= 0:
            raise ValueError("default_hold_timeout must be positive")
        self.default_hold_timeout = default_hold_timeout

    @classmethod
    def from_url(cls, url: str, default_hold_timeout: float = DEFAULT_HOLD_TIMEOUT) -> RedisImageLockManager:
        """Locks on the Redis server of ``url`` (``redis://``, ``rediss://``, ``redis+sentinel://``)."""
        return cls(connection_url=url, default_hold_timeout=default_hold_timeout)

    def __repr__(self) -> str:
        where = "url" if self.connection_url else f"{self.host}:{self.port}/{self.db}"
        return f"RedisImageLockManager({where})"  # never the URL: it may hold a password

    def __getstate__(self) -> dict[str, object]:
        return {**super().__getstate__(), "default_hold_timeout": self.default_hold_timeout}

    def _lock(self, key: str, holder: str | None = None, hold_timeout: float | None = None) -> Lock:
        lock = Lock(self.client, self._lock_name_for_key(key), timeout=hold_timeout, thread_local=False)
        if holder is not None:
            lock.local.token = holder.encode()
        return lock

    def _try_acquire(self, key: str, holder: str, hold_timeout: float | None) -> bool:
        hold = self.default_hold_timeout if hold_timeout is None else hold_timeout
        lock = self._lock(key, hold_timeout=hold)
        if lock.acquire(blocking=False, token=holder):
            return True
        if not self.is_lock_holder(key, holder):
            return False
        try:  # ours already: extend it to a full hold from now
            lock.local.token = holder.encode()
            lock.extend(hold, replace_ttl=True)
        except LockError:  # expired between the two commands: try again
            return bool(lock.acquire(blocking=False, token=holder))
        return True

    def release_lock(self, key: str, holder: str) -> None:
        """Release ``holder``'s lock on ``key``; ValueError if ``holder`` does not hold it
        (it expired and was taken over, or was never taken)."""
        try:
            self._lock(key, holder).release()
        except LockError:
            raise ValueError(f"the lock for key {key} is not held by {holder}") from None

    def is_locked(self, key: str) -> bool:
        """Whether ``key`` is locked by anyone (expired locks are not)."""
        return bool(self.client.exists(self._lock_name_for_key(key)))

    def is_lock_holder(self, key: str, holder: str) -> bool:
        """Whether ``holder`` holds a live lock on ``key``."""
        token = self.client.get(self._lock_name_for_key(key))
        return token is not None and bytes(token) == holder.encode()
