"""Answering an image request: what each image looks like (render spec), the fields and usage
every answer carries, result URLs in the media store, billing, and the JSON answer (with its
drop, malformed and hostile-URL fault variants)."""

from __future__ import annotations

import base64
import math
import time
from typing import Any, Literal

from starlette.datastructures import Headers
from starlette.types import Scope

from ..api.images import CONTENT_TYPES, InputImage
from ..api.models import EditRequest, ImageRequest
from .config import is_media_fault
from .exchange import _dumps, _Exchange
from .faults import image_fault
from .ledger import BilledImage
from .parsing import _Parsed
from .render import Rendered, RenderSpec
from .state import SandboxState

__all__ = ["OFFHOST_URL", "PRIVATE_URL"]

OFFHOST_URL = "https://evil.example.com/x.png"
PRIVATE_URL = "http://10.0.0.1/x.png"
_OUTPUT_TOKENS = {"low": 196, "medium": 1756, "high": 7024}


def _spec(parsed: _Parsed, index: int) -> RenderSpec:
    """What image ``index`` of the request looks like (the render cache key)."""
    req = parsed.request
    inputs: tuple[InputImage, ...] = ()
    mask = None
    if isinstance(req, EditRequest):
        inputs, mask = req.images, req.mask
    return RenderSpec(
        prompt=req.prompt,
        width=parsed.width,
        height=parsed.height,
        format=req.format,
        compression=req.output_compression,
        quality=_quality(req),
        index=index,
        n=req.n,
        partials=(req.partial_images or 0) if req.stream else 0,
        inputs=inputs,
        mask=mask,
    )


def _common(parsed: _Parsed) -> dict[str, Any]:
    """The fields every answer and event repeats: format, quality, size, background."""
    req = parsed.request
    return {
        "output_format": req.format,
        "quality": _quality(req),
        "size": f"{parsed.width}x{parsed.height}",
        "background": "opaque" if req.background in (None, "auto") else req.background,
    }


def _usage(parsed: _Parsed) -> dict[str, Any]:
    """Plausible token usage in OpenAI's shape (output scales with pixels and quality)."""
    req = parsed.request
    text = max(1, math.ceil(len(req.prompt) / 4))
    image = 272 * parsed.input_images
    per_image = _OUTPUT_TOKENS[_quality(req)] * parsed.width * parsed.height / 1024**2
    output = round(per_image) * req.n
    return {
        "input_tokens": text + image,
        "input_tokens_details": {"text_tokens": text, "image_tokens": image},
        "output_tokens": output,
        "total_tokens": text + image + output,
    }


def _publish(state: SandboxState, ex: _Exchange, rendered: Rendered, index: int, fault: str | None) -> str:
    """Store a result for ``/media`` and return its URL (or the hostile URL of a fault)."""
    if fault == "url_offhost":
        return OFFHOST_URL
    if fault == "url_private":
        return PRIVATE_URL
    fmt = _format_of(rendered.data)
    name = f"{ex.request_id}-{index + 1}.{fmt}"
    media_fault = image_fault(fault, index)
    cfg = state.config
    state.media.put(
        name, rendered.data, CONTENT_TYPES[fmt], cfg.media_ttl, media_fault, request_id=ex.request_id
    )
    return f"{_public_base(ex.scope, ex.headers, cfg.public_url)}/media/{name}"


def _forces_url(fault: str | None) -> bool:
    """Whether ``fault`` needs the answer to carry a URL (a media fault or a hostile URL)."""
    return is_media_fault(fault) or fault in ("url_offhost", "url_private")


def _bill(
    state: SandboxState,
    kind: Literal["generations", "edits"],
    ex: _Exchange,
    images: list[BilledImage],
    *,
    delivered: bool,
    fault: str | None,
    usage: dict[str, Any] | None = None,
) -> None:
    """Bill the request's images (once), consuming its balance reservation; ``usage``: the
    tokens its answer reports (what a ledger with token prices charges)."""
    if ex.billed:
        return
    ex.billed = True
    state.ledger.bill(
        ex.request_id,
        f"/images/{kind}",
        images,
        delivered=delivered and not ex.client_gone,
        fault=fault,
        usage=usage,
    )


async def _respond(
    state: SandboxState,
    kind: Literal["generations", "edits"],
    ex: _Exchange,
    parsed: _Parsed,
    rendered: list[Rendered],
    fault: str | None,
) -> None:
    """The JSON answer (or its drop / malformed / hostile-URL variants), billed first."""
    use_url = state.config.result_mode == "url" or _forces_url(fault)
    items: list[dict[str, str]] = []
    billed: list[BilledImage] = []
    for i, result in enumerate(rendered):
        if use_url:
            url = _publish(state, ex, result, i, fault)
            items.append({"url": url})
        else:
            url = None
            items.append({"b64_json": base64.b64encode(result.data).decode("ascii")})
        billed.append(BilledImage(url=url, sha256=result.sha256, size_bytes=len(result.data)))
    usage = _usage(parsed)
    body = {
        "created": int(time.time()),
        "data": items,
        **_common(parsed),
        "usage": usage,
    }
    payload = _dumps(body)
    if fault == "drop":
        _bill(state, kind, ex, billed, delivered=False, fault=fault, usage=usage)
        await ex.drop(payload)
        return
    if fault == "malformed_json":
        payload = payload[: len(payload) // 2]
    _bill(state, kind, ex, billed, delivered=True, fault=fault, usage=usage)
    await ex.json(200, payload)


def _quality(req: ImageRequest) -> Literal["low", "medium", "high"]:
    """The quality reported back: ``auto`` (or none) resolves to ``medium``."""
    quality = req.quality
    if quality is None or quality == "auto":
        return "medium"
    return quality


def _format_of(data: bytes) -> str:
    """The format of rendered bytes, from their magic number."""
    if data.startswith(b"\x89PNG"):
        return "png"
    if data.startswith(b"\xff\xd8"):
        return "jpeg"
    return "webp"


def _public_base(scope: Scope, headers: Headers, public_url: str | None) -> str:
    """``scheme://host`` for result URLs: the configured public URL, else the request's Host."""
    if public_url:
        return public_url.rstrip("/")
    host = headers.get("host")
    if not host:
        server = scope.get("server") or ("127.0.0.1", 80)
        host = f"{server[0]}:{server[1]}"
    return f"{scope.get('scheme', 'http')}://{host}"
