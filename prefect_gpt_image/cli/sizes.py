"""Sizes on the command line: an invalid one is refused naming the nearest valid sizes."""

from __future__ import annotations

import math
import typing

from prefect_gpt_image.api.models import MAX_SIDE, parse_size
from prefect_gpt_image.flows.params import SizePreset

from .exits import UsageError

__all__ = ["PRESETS", "check_size", "nearest_sizes"]

PRESETS: tuple[str, ...] = typing.get_args(SizePreset)
"""The sizes the batch flows take (``ImageOptions.size``), 'auto' first."""


def _valid(width: int, height: int) -> bool:
    try:
        parse_size(f"{width}x{height}")
    except ValueError:
        return False
    return True


def nearest_sizes(size: str, candidates: tuple[str, ...] | None = None, count: int = 3) -> list[str]:
    """Up to ``count`` valid sizes nearest to ``size`` (by each side's ratio): among ``candidates``
    when given (a fixed list), else the presets and ``size`` snapped to the API's rules."""
    parts = size.lower().replace("*", "x").split("x")
    try:
        width, height = (int(float(p)) for p in parts)
    except ValueError:
        return [s for s in (candidates or PRESETS) if s != "auto"][:count]
    width, height = max(width, 16), max(height, 16)
    pool = {s for s in (candidates or PRESETS) if s != "auto"}
    if candidates is None:
        for scale in (1.0, *(1.05**k for k in range(1, 40)), *(0.95**k for k in range(1, 40))):
            w = min(MAX_SIDE, max(16, round(width * scale / 16) * 16))
            h = min(MAX_SIDE, max(16, round(height * scale / 16) * 16))
            if _valid(w, h):
                pool.add(f"{w}x{h}")

    def distance(text: str) -> float:
        w, h = (int(p) for p in text.split("x"))
        return abs(math.log(w / width)) + abs(math.log(h / height))

    return sorted(pool, key=distance)[:count]


def check_size(size: str | None, *, presets_only: bool = False) -> str | None:
    """``size`` if the API (or, ``presets_only``, the batch flows' options) takes it; else
    UsageError naming the rule and the nearest valid sizes."""
    if size is None or size == "auto":
        return size
    if presets_only:
        if size in PRESETS:
            return size
        near = nearest_sizes(size, PRESETS)
        raise UsageError(
            f"--size {size!r}: the batch verbs take one of {', '.join(PRESETS)}; nearest: {', '.join(near)}"
        )
    try:
        parse_size(size)
    except ValueError as exc:
        near = nearest_sizes(size)
        raise UsageError(f"--size {size!r}: {exc}; nearest valid sizes: {', '.join(near)}") from None
    return size
