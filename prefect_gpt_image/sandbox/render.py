"""Deterministic result images: real PNG/JPEG/WebP files of the requested size, cheap to make.

Colours come from the prompt's sha256, the prompt is written on the image, and the image index
shifts the pattern, so every image can be told apart by eye and the same request always gives
the same bytes. Rendering runs off the event loop and is cached.

Two cheaper or more realistic variants, for benchmarks (see :class:`Renderer`):

* ``template``: one image per size and format is drawn once; each request gets a copy made
  unique (and still deterministic) by a metadata chunk naming its spec (PNG ``tEXt``, JPEG
  ``COM``), so thousands of distinct results cost a memory copy each, not a drawing. Edits get
  the same copies (the spec names their inputs' and mask's sha256, so each input still gives its
  own result), but their pixels do not show the input: for benchmarks, where decoding, painting
  and encoding every edit would spend the client's cores on what the real API does on its own
  machines. WebP has no such cheap chunk and is drawn as usual.
* ``texture``: photo-like grain, so files are about as large as real results (PNG about 1.4 MB at
  1024x1024 and 11 MB at 3840x2160, instead of a few tens of kilobytes).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import struct
import textwrap
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import anyio.to_thread
from PIL import Image, ImageChops, ImageDraw, ImageFont

from ..api.images import ImageFormat, InputImage

__all__ = ["RenderCache", "RenderSpec", "Rendered", "Renderer", "palette", "render"]

RGB = tuple[int, int, int]
_MAX_TEXT_CHARS = 400
_TEXTURE_SIGMA = 20.0
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IHDR_END = 8 + 4 + 4 + 13 + 4


@dataclass(frozen=True)
class RenderSpec:
    """Everything an image depends on. ``inputs``/``mask`` (edits) enter the key by sha256."""

    prompt: str
    width: int
    height: int
    format: ImageFormat = "png"
    compression: int | None = None
    quality: str = "medium"
    index: int = 0
    n: int = 1
    partials: int = 0
    inputs: tuple[InputImage, ...] = field(default=(), compare=False, repr=False)
    mask: InputImage | None = field(default=None, compare=False, repr=False)

    def key(self) -> tuple[object, ...]:
        """The cache key: every field, with the input images and mask as hashes."""
        return (
            self.prompt,
            self.width,
            self.height,
            self.format,
            self.compression,
            self.quality,
            self.index,
            self.n,
            self.partials,
            tuple(img.sha256 for img in self.inputs),
            self.mask.sha256 if self.mask is not None else None,
        )


@dataclass(frozen=True)
class Rendered:
    """A rendered result: the final image's bytes and sha256, and the partial images' bytes."""

    data: bytes = field(repr=False)
    sha256: str
    partials: tuple[bytes, ...] = field(default=(), repr=False)


def palette(prompt: str) -> tuple[RGB, RGB, RGB]:
    """Three colours derived from the prompt's sha256: background, pattern and accent."""
    d = hashlib.sha256(prompt.encode("utf-8")).digest()
    return (d[0], d[1], d[2]), (d[3], d[4], d[5]), (d[6], d[7], d[8])


def render(spec: RenderSpec, *, texture: bool = False) -> Rendered:
    """Draw and encode the image (and its partials) described by ``spec``. CPU-bound.

    ``texture`` adds photo-like grain, so the file is about as large as a real result.
    """
    if spec.inputs:
        img = _edit_image(spec)
    else:
        img = _pattern(spec)
    if texture:
        img = _grain(img)
    data = _encode(img, spec.format, spec.compression)
    partials = tuple(
        _encode(_coarse(img, i, spec.partials), spec.format, spec.compression) for i in range(spec.partials)
    )
    return Rendered(data=data, sha256=hashlib.sha256(data).hexdigest(), partials=partials)


class Renderer:
    """Makes the :class:`Rendered` result of a spec: ``draw`` renders every image (the default),
    ``template`` copies one pre-rendered image per size and format (edits too) and makes the copy
    unique with a metadata chunk naming the spec; ``texture`` adds realistic grain. Thread-safe."""

    def __init__(self, mode: str = "draw", *, texture: bool = False) -> None:
        """A renderer in ``mode`` (``draw`` or ``template``)."""
        if mode not in ("draw", "template"):
            raise ValueError(f"render mode must be 'draw' or 'template', not {mode!r}")
        self.mode = mode
        self.texture = texture
        self._templates: dict[tuple[object, ...], Rendered] = {}
        self._lock = threading.Lock()

    def __call__(self, spec: RenderSpec) -> Rendered:
        """The result for ``spec``."""
        if self.mode == "draw" or spec.format == "webp":
            return render(spec, texture=self.texture)
        base = self._template(spec)
        marker = hashlib.sha256(repr(spec.key()).encode()).hexdigest().encode()
        data = _mark(base.data, spec.format, marker)
        return Rendered(data=data, sha256=hashlib.sha256(data).hexdigest(), partials=base.partials)

    def _template(self, spec: RenderSpec) -> Rendered:
        key = (spec.width, spec.height, spec.format, spec.compression, spec.quality, spec.partials)
        with self._lock:
            found = self._templates.get(key)
            if found is None:
                template = RenderSpec(
                    prompt="sandbox template image",
                    width=spec.width,
                    height=spec.height,
                    format=spec.format,
                    compression=spec.compression,
                    quality=spec.quality,
                    partials=spec.partials,
                )
                found = self._templates[key] = render(template, texture=self.texture)
            return found


def _mark(data: bytes, fmt: ImageFormat, marker: bytes) -> bytes:
    """``data`` with ``marker`` in a metadata chunk: a different, equally valid file."""
    if fmt == "png" and data.startswith(_PNG_SIGNATURE):
        body = b"sandbox\x00" + marker
        chunk = struct.pack(">I", len(body)) + b"tEXt" + body
        chunk += struct.pack(">I", zlib.crc32(chunk[4:]) & 0xFFFFFFFF)
        return b"".join((data[:_PNG_IHDR_END], chunk, data[_PNG_IHDR_END:]))
    if fmt == "jpeg" and data.startswith(b"\xff\xd8"):
        segment = b"\xff\xfe" + struct.pack(">H", len(marker) + 2) + marker
        return b"".join((data[:2], segment, data[2:]))
    raise ValueError(f"cannot mark a {fmt} image")


class RenderCache:
    """An LRU cache of rendered images, bounded in bytes, rendering in worker threads.

    Concurrent requests for the same spec share one render. Use it from one event loop.
    """

    def __init__(
        self, max_bytes: int = 256 * 1024 * 1024, renderer: Callable[[RenderSpec], Rendered] = render
    ) -> None:
        """Keep at most ``max_bytes`` of encoded images made by ``renderer``."""
        self.max_bytes = max_bytes
        self.renderer = renderer
        self._items: OrderedDict[tuple[object, ...], Rendered] = OrderedDict()
        self._pending: dict[tuple[object, ...], asyncio.Future[Rendered]] = {}
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    async def get(self, spec: RenderSpec) -> Rendered:
        """The rendered image for ``spec``, from the cache or rendered off the event loop."""
        key = spec.key()
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
            self.hits += 1
            return found
        pending = self._pending.get(key)
        if pending is not None:
            self.hits += 1
            return await asyncio.shield(pending)
        self.misses += 1
        future: asyncio.Future[Rendered] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            result = await anyio.to_thread.run_sync(self.renderer, spec)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters (if any) re-raise it themselves
            raise
        finally:
            self._pending.pop(key, None)
        future.set_result(result)
        self._store(key, result)
        return result

    def clear(self) -> None:
        """Drop every cached image."""
        self._items.clear()
        self._bytes = 0

    def _store(self, key: tuple[object, ...], item: Rendered) -> None:
        """Insert, then evict least recently used items beyond ``max_bytes``."""
        size = len(item.data) + sum(len(p) for p in item.partials)
        if size > self.max_bytes:
            return
        self._items[key] = item
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self._bytes -= len(old.data) + sum(len(p) for p in old.partials)


# ---------------------------------------------------------------------------------------------


def _pattern(spec: RenderSpec, *, text: bool = True) -> Image.Image:
    """A checkerboard in the prompt's colours, shifted by the image index, with the prompt on it."""
    w, h = spec.width, spec.height
    bg, fg, accent = palette(spec.prompt)
    img = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(img)
    tile = max(32, min(w, h) // 8)
    shift = (spec.index * tile) // 3
    for row in range(h // tile + 1):
        for col in range(-1, w // tile + 2):
            if (row + col + spec.index) % 2:
                x0 = col * tile + shift
                draw.rectangle((x0, row * tile, x0 + tile - 1, row * tile + tile - 1), fill=fg)
    radius = min(w, h) // 6
    cx = (spec.index + 1) * w // (spec.n + 1)
    draw.ellipse((cx - radius, h // 2 - radius, cx + radius, h // 2 + radius), fill=accent)
    if text:
        _write_text(img, spec, (0, 0, w, h))
    return img


def _write_text(img: Image.Image, spec: RenderSpec, box: tuple[int, int, int, int]) -> None:
    """Inside ``box``: the prompt in a panel at the top, request details in a band at the bottom."""
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    if bw < 16 or bh < 16:
        return
    draw = ImageDraw.Draw(img)
    size = max(10, min(min(bw, bh) // 20, bw // 22))
    font = _font(size)
    margin = size
    per_line = max(8, int((bw - 2 * margin) / (size * 0.55)))
    prompt = " ".join(spec.prompt.split())[:_MAX_TEXT_CHARS]
    line_h = int(size * 1.3)
    max_lines = max(1, min(6, (bh - 2 * line_h - margin) // line_h))
    lines = textwrap.wrap(prompt, per_line)[:max_lines] or [""]
    panel_h = line_h * len(lines) + margin
    draw.rectangle((x0, y0, x1, y0 + panel_h), fill=(255, 255, 255))
    for i, line in enumerate(lines):
        draw.text((x0 + margin, y0 + margin // 2 + i * line_h), line, font=font, fill=(0, 0, 0))
    label = f"sandbox  #{spec.index + 1}/{spec.n}  {spec.width}x{spec.height}  {spec.quality}"
    draw.rectangle((x0, y1 - line_h - margin // 2, x1, y1), fill=(0, 0, 0))
    draw.text((x0 + margin, y1 - line_h - margin // 4), label, font=font, fill=(255, 255, 255))


def _edit_image(spec: RenderSpec) -> Image.Image:
    """The first input resized; its masked region (alpha 0) repainted; references in a strip."""
    w, h = spec.width, spec.height
    with Image.open(io.BytesIO(spec.inputs[0].data)) as first:
        base = first.convert("RGB").resize((w, h), Image.Resampling.BILINEAR)
    painted = _pattern(spec, text=False)
    if spec.mask is not None:
        with Image.open(io.BytesIO(spec.mask.data)) as mask_img:
            alpha = mask_img.convert("RGBA").getchannel("A")
        alpha = alpha.resize((w, h), Image.Resampling.NEAREST)
        region = alpha.point([255] + [0] * 255)  # 255 where the mask is fully transparent
        bbox = region.getbbox()
        if bbox is not None:
            _write_text(painted, spec, bbox)
        base.paste(painted, (0, 0), region)
    else:
        base = Image.blend(base, painted, 0.45)
        _write_text(base, spec, (0, 0, w, h))
    refs = spec.inputs[1:]
    if refs:
        _paste_strip(base, refs)
    return base


def _paste_strip(img: Image.Image, refs: tuple[InputImage, ...]) -> None:
    """Thumbnails of the reference images along the bottom, above the label band."""
    w, h = img.size
    thumb_h = max(32, h // 8)
    pad = max(4, thumb_h // 16)
    y = h - thumb_h - pad - max(10, min(w, h) // 24) * 2
    x = pad
    for ref in refs:
        with Image.open(io.BytesIO(ref.data)) as src:
            src.draft("RGB", (thumb_h * 3, thumb_h))
            thumb = src.convert("RGB")
        thumb.thumbnail((thumb_h * 3, thumb_h))
        if x + thumb.width + pad > w:
            break
        ImageDraw.Draw(img).rectangle(
            (x - pad // 2, y - pad // 2, x + thumb.width + pad // 2, y + thumb.height + pad // 2),
            fill=(255, 255, 255),
        )
        img.paste(thumb, (x, y))
        x += thumb.width + pad * 2


def _grain(img: Image.Image) -> Image.Image:
    """``img`` with gaussian grain: compresses about as badly as a photograph."""
    noise = Image.effect_noise(img.size, _TEXTURE_SIGMA).convert(img.mode)
    return ImageChops.add(img, noise, 1.0, -128)


def _coarse(img: Image.Image, index: int, total: int) -> Image.Image:
    """A pixelated preview: the earlier the partial, the coarser."""
    factor = 2 ** (total - index + 2)
    w, h = img.size
    small = img.resize((max(1, w // factor), max(1, h // factor)), Image.Resampling.BILINEAR)
    return small.resize((w, h), Image.Resampling.NEAREST)


def _encode(img: Image.Image, fmt: ImageFormat, compression: int | None) -> bytes:
    """Encode fast: PNG at zlib level 1, JPEG/WebP at quality ``compression`` (default 90)."""
    buf = io.BytesIO()
    quality = 90 if compression is None else max(1, min(100, compression))
    if fmt == "png":
        img.save(buf, "PNG", compress_level=1)
    elif fmt == "jpeg":
        img.save(buf, "JPEG", quality=quality)
    else:
        img.save(buf, "WEBP", quality=quality, method=0)
    return buf.getvalue()


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in font at ``size`` (a bitmap font if FreeType is missing)."""
    return ImageFont.load_default(size=size)
