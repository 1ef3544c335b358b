"""A batch's look-ups in the store: which rows' cache records (and images) are already there,
listed a page at a time rather than asked one row at a time."""

from __future__ import annotations

import asyncio
from typing import Any

from prefect.settings import PREFECT_TASKS_REFRESH_CACHE

from prefect_gpt_image.api import GenerateRequest
from prefect_gpt_image.calls import (
    CACHE_FOLDER,
    cache_key,
    read_record,
    record_name,
    with_links,
)
from prefect_gpt_image.storage import ImageStore
from prefect_gpt_image.storage.base import IMAGES_FOLDER
from prefect_gpt_image.tasks import ImageRef

from .manifest import BatchRow

__all__ = ["StoreLookups", "cached_refs"]

_CACHE_LOOKUPS = 16


_LIST_PAGE = 1000


_LISTED_PER_ROW = 4
"""A folder is listed while it holds at most this many objects per row of the batch (1,000 at
least): beyond, asking for each row costs fewer requests."""


class StoreLookups:
    """Cache lookups of a batch's rows, all started at once (at most ``_CACHE_LOOKUPS`` in flight,
    in row order) while the first rows run, so a first run does not wait for the whole search.

    The cache folder and the images folder are listed first (a request per 1,000 names), while
    they hold at most a few times as many objects as the batch has rows: a row whose record is
    not listed is a miss without a request of its own, and an image listed needs no HEAD. A row
    whose record is found gets its result at once, without an image call. Only a certain hit
    counts: a row whose record is missing, damaged or unreadable goes to the image call, which
    looks again under its lock (and finds spooled images). Nothing is looked up under a refresh.
    """

    def __init__(
        self,
        todo: list[tuple[int, BatchRow, dict[str, Any]]],
        requests: dict[int, GenerateRequest],
        variant: int,
        store: ImageStore,
        logger: Any,
    ) -> None:
        self.hits = 0
        self._rows = len(todo)
        self._store, self._logger = store, logger
        self._gate = asyncio.Semaphore(_CACHE_LOOKUPS)
        self._found: dict[int, asyncio.Task[list[ImageRef] | None]] = {}
        self._images: asyncio.Future[set[str] | None] | None = None  # listed at the first hit
        self._records: asyncio.Future[set[str] | None] | None = None
        if PREFECT_TASKS_REFRESH_CACHE.value():
            return
        self._at_most = _LISTED_PER_ROW * max(len(todo), _LIST_PAGE)
        self._records = asyncio.ensure_future(self._list(CACHE_FOLDER))
        for number, row, _ in todo:
            key = cache_key(requests[number], row.variant if row.variant is not None else variant)
            self._found[number] = asyncio.ensure_future(self._lookup(number, key))

    async def _list(self, folder: str) -> set[str] | None:
        try:
            return await asyncio.to_thread(self._store.list_names, folder, at_most=self._at_most)
        except Exception as exc:  # e.g. no list permission: ask for each row instead
            self._logger.debug("listing %s failed: %s", folder, exc)
            return None

    async def _lookup(self, number: int, key: str) -> list[ImageRef] | None:
        records = await self._records if self._records is not None else None
        if records is not None and record_name(key) not in records:
            return None  # not stored when listed: the image call looks again under its lock
        async with self._gate:
            if self._images is None:
                self._images = asyncio.ensure_future(self._list(IMAGES_FOLDER))
            images = await self._images
            try:
                refs = await asyncio.to_thread(cached_refs, self._store, key, images or set(), self._logger)
            except Exception as exc:  # the image call will look again and report a store failure
                self._logger.debug("cache lookup of row %d failed: %s", number, exc)
                return None
        if refs is not None:
            self.hits += 1
        return refs

    async def refs(self, number: int) -> list[ImageRef] | None:
        """The stored images of row ``number`` (waiting for its lookup), or None: run it."""
        lookup = self._found.get(number)
        return None if lookup is None else await lookup

    async def any_miss(self) -> bool:
        """Whether some row must run; answers at the first miss (in row order), so a first run
        starts after one lookup while a rerun waits for them all."""
        if not self._found:
            return self._rows > 0
        for lookup in self._found.values():
            if await lookup is None:
                return True
        return False

    def cancel(self) -> None:
        """Stop the lookups still waiting (the batch ended or failed)."""
        lookups: list[asyncio.Future[Any]] = [*self._found.values(), *self._listings()]
        for lookup in lookups:
            lookup.cancel()

    def _listings(self) -> list[asyncio.Future[set[str] | None]]:
        return [f for f in (self._records, self._images) if f is not None]


def cached_refs(store: ImageStore, key: str, stored: set[str], logger: Any) -> list[ImageRef] | None:
    """The refs of cache record ``key`` with fresh links, or None (``stored``: image names
    known to be in the store)."""
    refs = read_record(store, key, stored)
    return None if refs is None else with_links(store, refs, logger)
