"""Temporary storage of result images served at ``/media/{name}``, with expiry and faults, and
the count of GETs each result URL received (kept after the image expires, so a test can ask how
often a URL was fetched and how many of those fetches were served a failure)."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypedDict

__all__ = ["MediaCount", "MediaItem", "MediaStore"]


@dataclass
class MediaItem:
    """One stored result: bytes, type, expiry (monotonic seconds), fault and GET count."""

    data: bytes = field(repr=False)
    content_type: str
    expires: float
    fault: str | None = None
    hits: int = 0


class MediaCount(TypedDict):
    """What one result URL was asked and answered: ``hits`` GETs, of which ``served`` got the
    image whole and ``failures_served`` got anything else (an error status, a cut connection, a
    wrong body, a redirect, or a 404 once expired). ``request_id`` is the request it answered."""

    request_id: str | None
    fault: str | None
    hits: int
    served: int
    failures_served: int


class MediaStore:
    """Result images by file name; expired ones are forgotten (their URL then 404s), their
    counts are not (until :meth:`reset_counts`).

    ``clock`` (monotonic seconds, ``time.monotonic`` by default) decides expiry: a test may set
    another to move a result URL past its lifetime without waiting for it.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        """Start empty, telling time by ``clock``."""
        self.clock = clock
        self._lock = threading.Lock()
        self._items: dict[str, MediaItem] = {}
        self._counts: dict[str, MediaCount] = {}
        self._next_purge = 0.0

    def put(
        self,
        name: str,
        data: bytes,
        content_type: str,
        ttl: float,
        fault: str | None = None,
        *,
        request_id: str | None = None,
    ) -> None:
        """Store ``data`` under ``name`` for ``ttl`` seconds (answering ``request_id``)."""
        now = self.clock()
        with self._lock:
            self._items[name] = MediaItem(data, content_type, now + ttl, fault)
            self._counts[name] = MediaCount(
                request_id=request_id, fault=fault, hits=0, served=0, failures_served=0
            )
            if now >= self._next_purge:
                self._purge(now)

    def hit(self, name: str, *, count: bool = True) -> MediaItem | None:
        """Return ``name`` (counting one GET if ``count``), or None if unknown or expired."""
        now = self.clock()
        with self._lock:
            counted = self._counts.get(name) if count else None
            if counted is not None:
                counted["hits"] += 1
            item = self._items.get(name)
            if item is None:
                return None
            if item.expires <= now:
                del self._items[name]
                return None
            if count:
                item.hits += 1
            return item

    def outcome(self, name: str, *, ok: bool) -> None:
        """Note how a counted GET of ``name`` was answered: the image whole (``ok``) or not."""
        with self._lock:
            counted = self._counts.get(name)
            if counted is not None:
                counted["served" if ok else "failures_served"] += 1

    def counts(self) -> dict[str, MediaCount]:
        """Every published result URL's counts by media name (a copy)."""
        with self._lock:
            return copy.deepcopy(self._counts)

    def reset_counts(self) -> None:
        """Start counting afresh: stored images from zero, expired ones forgotten."""
        with self._lock:
            self._counts = {
                name: MediaCount(
                    request_id=counted["request_id"],
                    fault=counted["fault"],
                    hits=0,
                    served=0,
                    failures_served=0,
                )
                for name, counted in self._counts.items()
                if name in self._items
            }

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
