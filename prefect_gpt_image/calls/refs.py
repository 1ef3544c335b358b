""":class:`ImageRef`: what the image tasks return instead of image bytes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from prefect_gpt_image.api.images import ImageFormat

__all__ = ["ImageRef"]


class ImageRef(BaseModel):
    """A small record of one stored image: where it is, what it is, where it came from.

    The tasks return these (never image bytes) so Prefect results stay small; the bytes are in
    storage before a task completes. Pass a ref to :func:`edit_image` or :func:`blend_images` to
    use the image as an input.

    ``link`` is a URL a person (or the Prefect UI) can open: a presigned S3 URL that expires,
    a public URL, or a ``file://`` URI. It is made fresh on every call, so two refs are equal
    when everything but the link is equal: a cached rerun returns refs equal to the first run's.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    uri: str = Field(description="Where the image is stored: s3://bucket/key or an absolute local path.")
    sha256: str = Field(description="SHA-256 of the image bytes (also its storage name).")
    width: int = Field(description="Width in pixels.")
    height: int = Field(description="Height in pixels.")
    format: ImageFormat = Field(description="png, jpeg or webp.")
    size_bytes: int = Field(description="Size of the file in bytes.")
    request_id: str | None = Field(default=None, description="The gateway's request id of the call.")
    cost: float = Field(
        default=0.0,
        description="USD paid for this image when it was made: its answer's token usage where the "
        "endpoint bills tokens, else the price model's price.",
    )
    parents: tuple[str, ...] = Field(
        default=(), description="SHA-256 of the input images and mask it was made from, in order."
    )
    prompt: str = Field(description="The prompt it was made with.")
    link: str | None = Field(default=None, description="A URL to open the image (may expire).")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ImageRef):
            return NotImplemented
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(tuple(sorted((k, repr(v)) for k, v in self._identity().items())))

    def _identity(self) -> dict[str, Any]:
        return self.model_dump(exclude={"link"})

    def without_link(self) -> ImageRef:
        """A copy without ``link``, as stored in cache records (links expire)."""
        return self.model_copy(update={"link": None})
