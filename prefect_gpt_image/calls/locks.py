"""Locks that make two identical image calls pay once, and recover from a killed holder.

Every cache miss runs under a lock on its cache key: the first caller pays and writes the cache
record, the others wait, then find the record. Any Prefect
:class:`~prefect.locking.protocol.LockManager` works:

* the default, :class:`ImageLockManager`, is a ``FileSystemLockManager`` whose locks expire: it
  serializes the processes of one machine (threads, task runners, ``prefect worker`` children);
* for many machines, ``pip install 'prefect-gpt-image[redis]'`` and set
  ``GPT_IMAGE_LOCK_URL=redis://host:6379/0`` on every worker: a
  :class:`~.redis_locks.RedisImageLockManager` (prefect-redis's ``RedisLockManager``, fixed for
  async callers); or call ``use_lock_manager(...)`` once per process.

Prefect's own ``FileSystemLockManager`` keeps a lock for ever unless the caller passes a
``hold_timeout``, so a holder killed with ``kill -9`` blocks its key until a human deletes the file;
it also writes the lock file after creating it (a racing reader sees an empty file) and breaks
expired locks by a plain unlink (two breakers can delete a third caller's fresh lock).
:class:`ImageLockManager` writes each lock file completely before linking it into place, expires
locks after ``default_hold_timeout`` seconds unless told otherwise (at once when the process of this
machine that took it no longer runs: a run killed mid-call does not stall its rerun), and breaks a
stale lock only if the file it removes is the stale one.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from prefect.locking.filesystem import FileSystemLockManager
from prefect.locking.protocol import LockManager
from prefect.settings import PREFECT_HOME

from prefect_gpt_image.storage.local import write_atomically

from .polling_locks import DEFAULT_HOLD_TIMEOUT, PollingLocks

__all__ = [
    "DEFAULT_HOLD_TIMEOUT",
    "LOCK_DIR_ENV",
    "LOCK_URL_ENV",
    "ImageLockManager",
    "PollingLocks",
    "default_lock_dir",
    "get_lock_manager",
    "lock_manager_for_url",
    "new_holder",
    "use_lock_manager",
]

LOCK_DIR_ENV = "GPT_IMAGE_LOCK_DIR"
"""Environment variable naming the folder of the default file locks."""
LOCK_URL_ENV = "GPT_IMAGE_LOCK_URL"
"""Environment variable naming a shared lock server (``redis://host:6379/0``): locks for many machines."""


class ImageLockManager(PollingLocks, FileSystemLockManager):
    """A ``FileSystemLockManager`` whose locks always expire, written and broken atomically.

    ``default_hold_timeout`` applies when ``acquire_lock`` gets no ``hold_timeout``; re-acquiring a
    lock one already holds extends it. Works across threads and processes of one machine
    (and across machines only on a shared file system with working hard links).
    """

    def __init__(
        self,
        lock_files_directory: Path | None = None,
        default_hold_timeout: float = DEFAULT_HOLD_TIMEOUT,
    ) -> None:
        """Locks as files in ``lock_files_directory`` (default: :func:`default_lock_dir`)."""
        super().__init__(lock_files_directory or default_lock_dir())
        if default_hold_timeout <= 0:
            raise ValueError("default_hold_timeout must be positive")
        self.default_hold_timeout = default_hold_timeout
        # What this manager last wrote for each (key, holder) it holds: releasing compares the
        # file with it (one read) instead of reading and checking the lock first. Every image call
        # takes and releases a lock on the event loop, where each system call may wait for the
        # GIL behind the store's threads.
        self._written: dict[tuple[str, str], bytes] = {}

    def __repr__(self) -> str:
        return f"ImageLockManager({str(self.lock_files_directory)!r})"

    # -- reading -------------------------------------------------------------------------------

    def _read(self, key: str) -> dict[str, Any] | None:
        """The lock's holder and expiry (epoch seconds), or None when it is not locked."""
        path = self._path(key)
        try:
            raw = path.read_bytes()
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return None
        try:
            info = json.loads(raw)
            holder = str(info["holder"])
            expires = float(info["expires"])
        except (ValueError, KeyError, TypeError):
            # Not written by us (or damaged): treat as held until the default timeout after it
            # was last written, so it cannot block for ever.
            holder, expires, info = "", mtime + self.default_hold_timeout, {}
        if _holder_is_gone(info):
            expires = 0.0  # its process ended without releasing it (killed): stale at once
        return {"holder": holder, "expires": expires, "raw": raw}

    def _path(self, key: str) -> Path:
        return self.lock_files_directory / f"{key}.lock"

    def _live(self, key: str) -> dict[str, Any] | None:
        """The lock's info if it is held and not expired; breaks an expired lock."""
        info = self._read(key)
        if info is None:
            return None
        if info["expires"] > time.time():
            return info
        self._break(key, info["raw"])
        return None

    def _break(self, key: str, stale: bytes) -> bool:
        """Remove the lock file if it still holds the ``stale`` content; whether it did."""
        path = self._path(key)
        tomb = path.with_name(f".{path.name}.{uuid.uuid4().hex}.stale")
        try:
            os.rename(path, tomb)
        except FileNotFoundError:
            return False
        try:
            if tomb.read_bytes() == stale:
                return True
            # A fresh lock was taken between our read and the rename: put it back.
            try:
                os.link(tomb, path)
            except FileExistsError:
                pass
            return False
        finally:
            tomb.unlink(missing_ok=True)

    # -- the LockManager protocol --------------------------------------------------------------

    def _try_acquire(self, key: str, holder: str, hold_timeout: float | None) -> bool:
        hold = self.default_hold_timeout if hold_timeout is None else hold_timeout
        body = json.dumps(
            {"holder": holder, "expires": time.time() + hold, "pid": os.getpid(), "host": _HOST}
        ).encode()
        path = self._path(key)
        mine = (key, holder)
        # Most locks are free: create the file straight away (it fails if there is one).
        if mine not in self._written and write_atomically(path, body, overwrite=False):
            self._written[mine] = body
            return True
        current = self._live(key)
        if current is not None and current["holder"] != holder:
            return False
        # Held already: extend it (replace our own file); else create it only if nobody did.
        if write_atomically(path, body, overwrite=current is not None):
            self._written[mine] = body
            return True
        return False

    def release_lock(self, key: str, holder: str) -> None:
        """Release ``holder``'s lock on ``key``; ValueError if ``holder`` does not hold it
        (it expired and was taken over, or was never taken)."""
        written = self._written.pop((key, holder), None)
        if written is not None and self._break(key, written):
            return  # the file was still the one this manager wrote for ``holder``
        info = self._live(key)
        if info is None:
            raise ValueError(f"no lock for key {key}")
        if info["holder"] != holder:
            raise ValueError(f"the lock for key {key} is not held by {holder}")
        self._break(key, info["raw"])

    def is_locked(self, key: str, use_cache: bool = False) -> bool:
        """Whether ``key`` is locked by anyone (expired locks are not)."""
        return self._live(key) is not None

    def is_lock_holder(self, key: str, holder: str) -> bool:
        """Whether ``holder`` holds a live lock on ``key``."""
        info = self._live(key)
        return info is not None and info["holder"] == holder


_HOST = socket.gethostname()


def new_holder() -> str:
    """A holder name for one call's lock, unique to it: this machine, process and thread (what a
    stale lock's owner is judged by), and a random part."""
    return f"{_HOST}:{os.getpid()}:{threading.get_ident()}:{uuid.uuid4().hex}"


def _holder_is_gone(info: dict[str, Any]) -> bool:
    """Whether the lock was taken by a process of this machine that no longer runs (a killed
    run): its calls were cut off, so waiting for the lock to expire would only stall a rerun.
    A lock of another machine, or of a process that may still run, waits for its expiry."""
    pid = info.get("pid") if isinstance(info, dict) else None
    if info.get("host") != _HOST or not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists (owned by another user)
        return False
    return False


def default_lock_dir() -> Path:
    """``$GPT_IMAGE_LOCK_DIR``, else ``$PREFECT_HOME/locks/gpt-image``."""
    configured = os.environ.get(LOCK_DIR_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    return Path(PREFECT_HOME.value()).expanduser() / "locks" / "gpt-image"


_configured: LockManager | None = None
_defaults: dict[Path, ImageLockManager] = {}
_by_url: dict[str, LockManager] = {}
_guard = threading.Lock()
_REDIS_SCHEMES = ("redis", "rediss", "redis+sentinel", "rediss+sentinel")


def use_lock_manager(manager: LockManager | None) -> None:
    """Use ``manager`` for every image task of this process (None: back to the default).

    For runs on several machines set ``GPT_IMAGE_LOCK_URL`` instead, or pass a shared manager; a
    plain ``prefect_redis.RedisLockManager`` is used as a :class:`~.redis_locks.RedisImageLockManager`
    on the same server (the plain one never releases a lock taken from async code).
    """
    global _configured
    if manager is not None and not isinstance(manager, LockManager):
        raise TypeError(f"expected a prefect LockManager, got {type(manager).__name__}")
    plain_redis = getattr(sys.modules.get("prefect_redis.locking"), "RedisLockManager", None)
    if plain_redis is not None and type(manager) is plain_redis:
        from .redis_locks import RedisImageLockManager

        plain: Any = manager
        manager = RedisImageLockManager(
            host=plain.host,
            port=plain.port,
            db=plain.db,
            username=plain.username,
            password=plain.password,
            ssl=plain.ssl,
            connection_url=plain.connection_url,
        )
    _configured = manager


def lock_manager_for_url(url: str) -> LockManager:
    """The lock manager of a ``GPT_IMAGE_LOCK_URL`` value: Redis locks for ``redis://``,
    ``rediss://`` and the Sentinel schemes (needs ``prefect-redis``). One per URL per process."""
    scheme = url.partition("://")[0].lower()
    if scheme not in _REDIS_SCHEMES:
        raise ValueError(
            f"{LOCK_URL_ENV} must start with one of {', '.join(s + '://' for s in _REDIS_SCHEMES)}, "
            f"not {scheme!r}"  # never the URL itself: it may hold a password
        )
    with _guard:
        manager = _by_url.get(url)
        if manager is None:
            try:
                from .redis_locks import RedisImageLockManager
            except ImportError as exc:
                raise RuntimeError(
                    f"{LOCK_URL_ENV} names a Redis server: pip install 'prefect-gpt-image[redis]' ({exc})"
                ) from None
            manager = _by_url[url] = RedisImageLockManager.from_url(url)
        return manager


def get_lock_manager() -> LockManager:
    """The lock manager image tasks use: the one given to :func:`use_lock_manager`, else the one
    ``$GPT_IMAGE_LOCK_URL`` names (Redis), else an :class:`ImageLockManager` in
    :func:`default_lock_dir`."""
    if _configured is not None:
        return _configured
    url = os.environ.get(LOCK_URL_ENV, "").strip()
    if url:
        return lock_manager_for_url(url)
    directory = default_lock_dir()  # keyed as configured: resolving costs system calls per call
    with _guard:
        manager = _defaults.get(directory)
        if manager is None:
            manager = _defaults[directory] = ImageLockManager(directory.resolve())
        return manager
