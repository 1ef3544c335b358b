"""Image bytes: sniffing, decoding and checking input images, masks and results.

Inputs are read and checked here before any request is made, so a bad file never costs a call.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal, Union

from PIL import Image, UnidentifiedImageError

__all__ = [
    "CONTENT_TYPES",
    "MAX_INPUT_BYTES",
    "MAX_INPUT_PIXELS",
    "MAX_MASK_BYTES",
    "ImageFormat",
    "ImageInfo",
    "ImageSource",
    "InputImage",
    "header_size",
    "load_input_image",
    "probe_image",
    "sniff_format",
]

ImageFormat = Literal["png", "jpeg", "webp"]
ImageSource = Union[str, os.PathLike[str], bytes, bytearray, memoryview, IO[bytes], "InputImage"]
"""What the client accepts as an image: a path, raw bytes, a binary file object, or an InputImage."""

MAX_INPUT_BYTES = 50 * 1024 * 1024
"""Each input image must be smaller than 50 MB (contract §3)."""
MAX_MASK_BYTES = 4 * 1024 * 1024
"""A mask must be a PNG smaller than 4 MB (contract §3)."""
MAX_INPUT_PIXELS = 7680 * 4320
"""The most pixels an image may declare (33,177,600: 8K UHD, four times the largest output,
3840x2160). The contract caps inputs by bytes only (50 MB), but a few hundred KB of PNG can
declare 30000x30000 pixels, and a 13000x13000 one of under 1 MB decodes into about 700 MB, below
Pillow's own bomb limit (about 179 million pixels). An image over this cap is refused from its
header, before any decoding; one within it decodes into at most about 133 MB (RGBA)."""
_DECODES = threading.BoundedSemaphore(2)
"""Images decoded at once in this process (each at most ``MAX_INPUT_PIXELS`` x 4 bytes), whatever
the number of threads checking inputs: a batch's plan reads many rows at once."""

CONTENT_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
"""The MIME type of each image format."""
_PIL_FORMATS: dict[str, ImageFormat] = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}


def sniff_format(data: bytes) -> ImageFormat | None:
    """The image format from the first bytes (PNG, JPEG or WebP), or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


@dataclass(frozen=True)
class ImageInfo:
    """What decoding an image told us: format, dimensions and whether it has an alpha channel."""

    format: ImageFormat
    width: int
    height: int
    has_alpha: bool


def header_size(data: bytes) -> tuple[int, int] | None:
    """The width and height a PNG, JPEG or WebP declares in its header, read without decoding
    anything (None: not found, e.g. a truncated header)."""
    fmt = sniff_format(data)
    if fmt == "png":
        if data[12:16] != b"IHDR" or len(data) < 24:
            return None
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if fmt == "jpeg":
        return _jpeg_size(data)
    if fmt == "webp":
        return _webp_size(data)
    return None


_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
"""Start-of-frame markers (they carry the size); C4, C8 and CC are other segments."""


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _JPEG_FRAMES:
            return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
        if marker == 0x01 or 0xD0 <= marker <= 0xD9:  # markers without a length
            i += 2
            continue
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    return None


def _check_pixels(fmt: ImageFormat, size: tuple[int, int]) -> None:
    width, height = size
    if width * height > MAX_INPUT_PIXELS:
        raise ValueError(
            f"the {fmt} header declares {width}x{height} ({width * height:,} pixels), over the cap of "
            f"{MAX_INPUT_PIXELS:,} pixels (7680x4320); refused without decoding it"
        )


def probe_image(data: bytes, *, decode: bool = True) -> ImageInfo:
    """Check ``data`` is a valid image and describe it; raise ``ValueError`` if it is not.

    The size its header declares is checked against :data:`MAX_INPUT_PIXELS` first, before any
    decoding (a decompression bomb is refused from its first bytes). The full decode (not just
    the header) catches truncated or corrupt files. ``decode=False`` checks a PNG by its own
    integrity data instead (every chunk's CRC, through IEND): as sure for truncation and
    corruption in transit, and about 20 times cheaper than decoding the pixels (16 ms for a
    1024x1024 result, 125 ms for 3840x2160). JPEG and WebP are always decoded, at most two
    images at a time in the process.
    """
    fmt = sniff_format(data)
    if fmt is None:
        raise ValueError("not a PNG, JPEG or WebP image")
    declared_size = header_size(data)
    if declared_size is not None:
        _check_pixels(fmt, declared_size)
    try:
        with Image.open(io.BytesIO(data)) as img:
            declared = _PIL_FORMATS.get(img.format or "")
            if declared != fmt:
                raise ValueError(f"header says {fmt} but the image decodes as {img.format}")
            _check_pixels(fmt, img.size)
            width, height = img.size
            has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
            if decode or fmt != "png":
                with _DECODES:
                    img.load()
            else:
                img.verify()
    except Image.DecompressionBombError:
        raise ValueError(
            f"the {fmt} image declares more than {MAX_INPUT_PIXELS:,} pixels (the cap); refused "
            "without decoding it"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"the {fmt} data does not decode ({exc})") from None
    return ImageInfo(format=fmt, width=width, height=height, has_alpha=has_alpha)


@dataclass(frozen=True)
class InputImage:
    """An input image or mask, read and checked, ready to upload as one multipart file.

    The bytes are left out of the repr so logs and errors stay small.
    """

    filename: str
    data: bytes = field(repr=False)
    format: ImageFormat
    width: int
    height: int
    has_alpha: bool
    sha256: str

    @property
    def content_type(self) -> str:
        """The MIME type sent with the upload."""
        return CONTENT_TYPES[self.format]

    @classmethod
    def from_bytes(cls, data: bytes, filename: str | None = None, *, decode: bool = True) -> InputImage:
        """Check and describe ``data``; raise ``ValueError`` with the reason if it is no image
        (``decode=False``: a PNG is checked by its CRCs, see :func:`probe_image`)."""
        info = probe_image(data, decode=decode)
        name = filename or f"image.{info.format}"
        return cls(
            filename=os.path.basename(name),
            data=data,
            format=info.format,
            width=info.width,
            height=info.height,
            has_alpha=info.has_alpha,
            sha256=hashlib.sha256(data).hexdigest(),
        )


def load_input_image(
    source: ImageSource, *, max_bytes: int = MAX_INPUT_BYTES, decode: bool = True
) -> InputImage:
    """Read ``source`` (path, bytes or binary file object) into a checked :class:`InputImage`
    (``decode``: see :meth:`InputImage.from_bytes`).

    Raises ``ValueError`` naming what is wrong: unreadable, too large, or not a valid image.
    """
    if isinstance(source, InputImage):
        if len(source.data) >= max_bytes:
            raise ValueError(f"{len(source.data)} bytes; must be under {max_bytes} bytes")
        return source
    filename: str | None = None
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        filename = path.name
        try:
            size = path.stat().st_size
            if size >= max_bytes:
                raise ValueError(f"{path} is {size} bytes; must be under {max_bytes} bytes")
            data = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    elif hasattr(source, "read"):
        raw = source.read(max_bytes + 1)
        if not isinstance(raw, (bytes, bytearray)):
            raise ValueError("file object must be opened in binary mode")
        data = bytes(raw)
        name = getattr(source, "name", None)
        filename = os.path.basename(name) if isinstance(name, str) else None
    else:
        raise ValueError(f"expected a path, bytes or a binary file object, got {type(source).__name__}")
    if len(data) >= max_bytes:
        raise ValueError(f"{len(data)} bytes; must be under {max_bytes} bytes")
    if not data:
        raise ValueError("empty file")
    return InputImage.from_bytes(data, filename, decode=decode)
