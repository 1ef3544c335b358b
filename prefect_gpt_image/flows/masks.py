"""Masks from regions: the flow builds a correct mask PNG (alpha 0 where to edit, same size as the
image) so a user can say "edit this box" instead of drawing one.
"""

from __future__ import annotations

import io
from functools import lru_cache

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["MaskRegion", "build_mask"]


class MaskRegion(BaseModel):
    """A box to edit, as pixels or as fractions of the image (all four values ≤ 1 means fractions).

    ``left``/``top`` are the box's upper-left corner, ``right``/``bottom`` its lower-right one.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    left: float = Field(ge=0, description="Left edge (pixels, or a fraction 0..1 of the width).")
    top: float = Field(ge=0, description="Top edge (pixels, or a fraction 0..1 of the height).")
    right: float = Field(gt=0, description="Right edge (pixels, or a fraction 0..1 of the width).")
    bottom: float = Field(gt=0, description="Bottom edge (pixels, or a fraction 0..1 of the height).")

    @model_validator(mode="after")
    def _ordered(self) -> MaskRegion:
        if self.right <= self.left or self.bottom <= self.top:
            raise ValueError("mask region: right must exceed left and bottom must exceed top")
        return self

    @property
    def is_fractional(self) -> bool:
        """True when all four edges are fractions of the image size."""
        return max(self.left, self.top, self.right, self.bottom) <= 1.0

    def pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The box in pixels for an image of ``width`` x ``height``; refuses a box outside it."""
        if self.is_fractional:
            box = (
                round(self.left * width),
                round(self.top * height),
                round(self.right * width),
                round(self.bottom * height),
            )
        else:
            box = (round(self.left), round(self.top), round(self.right), round(self.bottom))
        if box[2] > width or box[3] > height:
            raise ValueError(f"mask region {box} lies outside the {width}x{height} image")
        if box[2] <= box[0] or box[3] <= box[1]:
            raise ValueError(f"mask region {box} is empty at {width}x{height}")
        return box


def build_mask(width: int, height: int, region: MaskRegion) -> bytes:
    """An RGBA PNG of ``width`` x ``height``: opaque outside ``region``, alpha 0 inside it.

    The same box at the same size gives the same bytes, made once (a batch applying one region
    to many images of a few sizes encodes a few masks, not one per image)."""
    return _mask_png(width, height, region.pixels(width, height))


@lru_cache(maxsize=64)
def _mask_png(width: int, height: int, box: tuple[int, int, int, int]) -> bytes:
    mask = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), box)
    buf = io.BytesIO()
    mask.save(buf, "PNG")
    return buf.getvalue()
