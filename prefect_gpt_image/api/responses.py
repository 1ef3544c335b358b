"""Response models of the gpt-image-2 Images API (contract §4-§5), tolerant of unknown fields,
and the images a call hands back (:class:`GeneratedImage`, :class:`PartialImage`).

The request models, which hold the contract's rules, are in :mod:`prefect_gpt_image.api.models`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from .images import ImageFormat
from .models import ImageRequest

__all__ = [
    "GeneratedImage",
    "ImageItem",
    "ImagesResponse",
    "PartialImage",
    "StreamEvent",
    "Usage",
]


class Usage(BaseModel):
    """Token usage in OpenAI's shape, when the gateway reports it."""

    model_config = ConfigDict(extra="allow")

    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    input_tokens_details: dict[str, Any] | None = None


class ImageItem(BaseModel):
    """One ``data`` item: a temporary ``url`` or inline ``b64_json``."""

    model_config = ConfigDict(extra="allow")

    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    """The 200 JSON answer of both endpoints."""

    model_config = ConfigDict(extra="allow")

    created: int | None = None
    data: list[ImageItem]
    output_format: str | None = None
    quality: str | None = None
    size: str | None = None
    background: str | None = None
    usage: Usage | None = None


class StreamEvent(BaseModel):
    """One SSE event's JSON: a partial image, the completed image, or an error."""

    model_config = ConfigDict(extra="allow")

    type: str = ""
    b64_json: str | None = None
    url: str | None = None
    partial_image_index: int | None = None
    created_at: int | None = None
    size: str | None = None
    quality: str | None = None
    background: str | None = None
    output_format: str | None = None
    usage: Usage | None = None
    error: dict[str, Any] | None = None

    @property
    def is_partial(self) -> bool:
        """True for ``image_generation.partial_image`` / ``image_edit.partial_image``."""
        return self.type.endswith(".partial_image")

    @property
    def is_completed(self) -> bool:
        """True for ``image_generation.completed`` / ``image_edit.completed``."""
        return self.type.endswith(".completed")


@dataclass(frozen=True)
class PartialImage:
    """A partial (preview) image from a stream; ``index`` is ``partial_image_index``."""

    index: int
    data: bytes = field(repr=False)
    format: ImageFormat
    width: int
    height: int
    request_id: str | None


@dataclass(frozen=True)
class GeneratedImage:
    """One result image: its bytes (or the file they were spooled to), checked and described.

    ``request`` is the validated request it answers; ``index`` its position in ``data``.
    """

    data: bytes | None = field(repr=False)
    path: Path | None
    format: ImageFormat
    width: int
    height: int
    sha256: str
    size_bytes: int
    request_id: str | None
    request: ImageRequest = field(repr=False)
    index: int = 0
    url: str | None = None
    revised_prompt: str | None = None
    usage: Usage | None = field(default=None, repr=False)

    def read_bytes(self) -> bytes:
        """The image's bytes, from memory or from the spool file."""
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path.read_bytes()

    @property
    def content_type(self) -> str:
        """The MIME type of the image."""
        return f"image/{self.format}"
