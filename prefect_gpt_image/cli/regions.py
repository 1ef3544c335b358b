"""``--region LEFT,TOP,RIGHT,BOTTOM``: the library's MaskRegion on the command line."""

from __future__ import annotations

from typing import Any

from .exits import UsageError

__all__ = ["parse_region"]


def parse_region(text: str | None) -> Any:
    """A :class:`~prefect_gpt_image.flows.MaskRegion` from four comma-separated numbers (pixels,
    or fractions 0..1 of the image when all four are ≤ 1), or None."""
    if text is None:
        return None
    from pydantic import ValidationError

    from prefect_gpt_image.flows import MaskRegion

    parts = [p.strip() for p in text.split(",")]
    try:
        left, top, right, bottom = (float(p) for p in parts)
    except ValueError:
        raise UsageError(
            f"--region {text!r}: give LEFT,TOP,RIGHT,BOTTOM as four numbers, pixels or fractions "
            "of the image (e.g. 0,0,1,0.35 for the top 35%)"
        ) from None
    try:
        return MaskRegion(left=left, top=top, right=right, bottom=bottom)
    except ValidationError as exc:
        reasons = "; ".join(str(e["msg"]) for e in exc.errors())
        raise UsageError(f"--region {text!r}: {reasons}") from None
