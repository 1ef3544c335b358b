"""When the engine says a record or a manifest was written: the real time, or one given.

Every ``created`` the engine writes (a cache record's, each image manifest's) comes from
:func:`utc_now`. :func:`use_clock` gives the calls made inside it a fixed time instead: records
imported or rebuilt after the fact keep the day they belong to, and a report over several days
(:mod:`prefect_gpt_image.flows.bill`) can be checked against calls really made today.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["use_clock", "utc_now"]

_FIXED: ContextVar[dt.datetime | None] = ContextVar("prefect_gpt_image_clock", default=None)


def utc_now() -> dt.datetime:
    """Now in UTC, or the time :func:`use_clock` set for this context."""
    return _FIXED.get() or dt.datetime.now(dt.UTC)


@contextmanager
def use_clock(when: dt.datetime) -> Iterator[None]:
    """Records and manifests written by calls inside say they were written at ``when`` (a
    timezone-aware time; the calls themselves are made as usual, and paid)."""
    if when.tzinfo is None:
        raise ValueError("use_clock needs a timezone-aware time (e.g. datetime(..., tzinfo=UTC))")
    token = _FIXED.set(when.astimezone(dt.UTC))
    try:
        yield
    finally:
        _FIXED.reset(token)
