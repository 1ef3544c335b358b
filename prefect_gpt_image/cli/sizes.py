"""Sizes on the command line: an invalid one is refused naming the rule it breaks and the nearest
valid sizes (the API layer's own message, :func:`~prefect_gpt_image.api.models.parse_size`)."""

from __future__ import annotations

import typing

from prefect_gpt_image.api.models import parse_size
from prefect_gpt_image.api.suggest import closest
from prefect_gpt_image.flows.params import SizePreset

from .exits import UsageError

__all__ = ["PRESETS", "check_size"]

PRESETS: tuple[str, ...] = typing.get_args(SizePreset)
"""The sizes the batch flows take (``ImageOptions.size``), 'auto' first."""


def check_size(size: str | None, *, presets_only: bool = False) -> str | None:
    """``size`` if the API (or, ``presets_only``, the batch flows' options) takes it; else
    UsageError naming the rule and the nearest valid sizes."""
    if size is None or size == "auto":
        return size
    if presets_only:
        if size in PRESETS:
            return size
        near = closest(size, PRESETS)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise UsageError(f"--size {size!r}: the batch verbs take one of {', '.join(PRESETS)}{hint}")
    try:
        parse_size(size)
    except ValueError as exc:
        raise UsageError(f"--size {size!r}: {exc}") from None
    return size
