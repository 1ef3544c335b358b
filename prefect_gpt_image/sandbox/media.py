"""Temporary storage of result images served at ``/media/{name}``, with expiry and faults."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

__all__ = ["MediaItem", "MediaStore"]


@dataclass
class MediaItem:
    """One stored result: bytes, type, expiry (monotonic seconds), fault and GET count."""

    data: bytes = field(repr=False)
    content_type: str
    expires: float
    fault: str | None = None
    hits: int = 0


class MediaStore:
    """Result images by file name; expired ones are forgotten (their URL then 404s)."""

    def __init__(self) -> None:
        """Start empty."""
        self._lock = threading.Lock()
        self._items: dict[str, MediaItem] = {}
        self._next_purge = 0.0

    def put(self, name: str, data: bytes, content_type: str, ttl: float, fault: str | None = None) -> None:
        """Store ``data`` under ``name`` for ``ttl`` seconds."""
        now = time.monotonic()
        with self._lock:
            self._items[name] = MediaItem(data, content_type, now + ttl, fault)
            if now >= self._next_purge:
                self._purge(now)

    def hit(self, name: str, *, count: bool = True) -> MediaItem | None:
        """Return ``name`` (counting one GET if ``count``), or None if unknown or expired."""
        now = time.monotonic()
        with self._lock:
            item = self._items.get(name)
            if item is None:
                return None
            if item.expires <= now:
                del self._items[name]
                return None
            if count:
                item.hits += 1
            return item

    def clear(self) -> None:
        """Forget every stored image."""
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        """How many images are stored (expired ones not yet purged included)."""
        with self._lock:
            return len(self._items)

    def _purge(self, now: float) -> None:
        """Forget expired items (at most once a second)."""
        for name in [n for n, item in self._items.items() if item.expires <= now]:
            del self._items[name]
        self._next_purge = now + 1.0
