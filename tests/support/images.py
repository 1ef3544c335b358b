"""Small real images for tests."""

from __future__ import annotations

import io

from PIL import Image


def png_bytes(size: tuple[int, int] = (64, 64), colour: str = "steelblue", mode: str = "RGB") -> bytes:
    """A real PNG of ``size``."""
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, "PNG")
    return buf.getvalue()


def mask_bytes(size: tuple[int, int], box: tuple[int, int, int, int]) -> bytes:
    """An RGBA PNG mask: opaque everywhere except ``box`` (alpha 0 = edit there)."""
    img = Image.new("RGBA", size, (0, 0, 0, 255))
    img.paste((0, 0, 0, 0), box)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    """Open image bytes with Pillow (fully loaded)."""
    img = Image.open(io.BytesIO(data))
    img.load()
    return img
