"""Request models of the gpt-image-2 Images API (contract §2-§3); the response models are in
:mod:`prefect_gpt_image.api.responses`.

The request models hold every rule of the contract, so the client refuses a bad request before it
is sent, and the sandbox, which validates with the same models, refuses exactly what they refuse.
Build requests with :meth:`GenerateRequest.build` / :meth:`EditRequest.build`: they turn pydantic's
errors into one :class:`~prefect_gpt_image.api.errors.RequestValidationError` naming field, value
and rule.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import RequestValidationError
from .images import (
    MAX_MASK_BYTES,
    ImageFormat,
    ImageSource,
    InputImage,
    load_input_image,
)
from .suggest import nearest_sizes, unknown_name

__all__ = [
    "DEFAULT_MODEL",
    "MAX_INPUT_IMAGES",
    "MAX_PROMPT_CHARS",
    "Background",
    "EditRequest",
    "GenerateRequest",
    "ImageRequest",
    "Moderation",
    "OutputFormat",
    "Quality",
    "parse_size",
]

DEFAULT_MODEL = "gpt-image-2"
MAX_PROMPT_CHARS = 32_000
MAX_INPUT_IMAGES = 16
MAX_SIDE = 3840
MIN_PIXELS = 655_360
MAX_PIXELS = 8_294_400
MAX_RATIO = 3
COMMON_SIZES = ("1024x1024", "1536x1024", "1024x1536")
"""The sizes the contract names as common (§2)."""

Quality = Literal["auto", "low", "medium", "high"]
Background = Literal["auto", "opaque"]
OutputFormat = Literal["png", "jpeg", "webp"]
Moderation = Literal["auto", "low"]

FORBIDDEN_FIELDS: dict[str, str] = {
    "response_format": "not a gpt-image-2 parameter: results come as URLs (or b64_json) by "
    "themselves; choose the file type with output_format",
    "style": "not a gpt-image-2 parameter",
    "input_fidelity": "not a gpt-image-2 parameter",
}
_SIZE_RE = re.compile(r"^([0-9]+)x([0-9]+)$")


def parse_size(size: str) -> tuple[int, int]:
    """Check a ``WxH`` size against contract §2 and return ``(width, height)``.

    Raises ``ValueError`` naming the rule it breaks and the nearest valid sizes.
    """
    match = _SIZE_RE.match(size)
    if not match:
        raise ValueError(f"must be 'auto' or WIDTHxHEIGHT, e.g. one of {', '.join(COMMON_SIZES)}")
    width, height = int(match.group(1)), int(match.group(2))
    rule = _size_rule(width, height)
    if rule:
        nearest = nearest_sizes(width, height, lambda w, h: _size_rule(w, h) is None, max_side=MAX_SIDE)
        raise ValueError(f"{rule}; nearest valid sizes: {', '.join(nearest)}")
    return width, height


def _size_rule(width: int, height: int) -> str | None:
    """The contract's size rule ``width`` x ``height`` breaks, or None."""
    if width % 16 or height % 16:
        return "width and height must be multiples of 16"
    if width > MAX_SIDE or height > MAX_SIDE:
        return f"each side must be at most {MAX_SIDE}"
    if not MIN_PIXELS <= width * height <= MAX_PIXELS:
        return f"width*height must be between {MIN_PIXELS} and {MAX_PIXELS} pixels"
    if max(width, height) > MAX_RATIO * min(width, height):
        return f"long side / short side must be at most {MAX_RATIO}"
    return None


class ImageRequest(BaseModel):
    """Fields shared by generations and edits (contract §2), each optional one omitted when None."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    model: str = Field(DEFAULT_MODEL, min_length=1, description="Model name.")
    prompt: str = Field(description="What to draw, or how to change the input images.")
    n: int = Field(1, ge=1, le=10, description="Number of images, 1..10.")
    size: str | None = Field(None, description="'auto' or WxH (multiples of 16, ≤ 3840 a side).")
    quality: Quality | None = Field(None, description="auto, low, medium or high ('hd' → high).")
    background: Background | None = Field(None, description="auto or opaque.")
    output_format: OutputFormat | None = Field(None, description="png (default), jpeg or webp.")
    output_compression: int | None = Field(None, ge=0, le=100, description="0..100, only with jpeg or webp.")
    stream: bool = Field(False, description="Stream the image as SSE events.")
    partial_images: int | None = Field(
        None, ge=0, le=3, description="0..3 partial images, only with stream=true."
    )
    user: str | None = Field(None, description="End-user identifier.")

    @model_validator(mode="before")
    @classmethod
    def _refuse_forbidden_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, rule in FORBIDDEN_FIELDS.items():
                if name in data:
                    raise _FieldError(name, data[name], rule)
        return data

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        if len(value) > MAX_PROMPT_CHARS:
            raise ValueError(f"must be at most {MAX_PROMPT_CHARS} characters (got {len(value)})")
        return value

    @field_validator("n", "output_compression", "partial_images", mode="before")
    @classmethod
    def _no_bool_for_int(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("must be an integer, not a boolean")
        return value

    @field_validator("size")
    @classmethod
    def _check_size(cls, value: str | None) -> str | None:
        if value is None or value == "auto":
            return value
        parse_size(value)
        return value

    @field_validator("quality", mode="before")
    @classmethod
    def _normalize_quality(cls, value: Any) -> Any:
        if value == "hd":
            return "high"
        if value == "standard":
            raise ValueError("'standard' is rejected for gpt-image-2; use auto, low, medium or high")
        return value

    @field_validator("background", mode="before")
    @classmethod
    def _check_background(cls, value: Any) -> Any:
        if value == "transparent":
            raise ValueError("'transparent' is not supported by gpt-image-2; use auto or opaque")
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> Self:
        if self.output_compression is not None and self.output_format not in ("jpeg", "webp"):
            raise _FieldError(
                "output_compression",
                self.output_compression,
                f"only allowed with output_format jpeg or webp, not {self.output_format or 'png'}",
            )
        if self.partial_images is not None and not self.stream:
            raise _FieldError("partial_images", self.partial_images, "only allowed with stream=true")
        if self.stream and self.n != 1:
            raise _FieldError("n", self.n, "stream=true returns one image: use n=1")
        return self

    @property
    def format(self) -> ImageFormat:
        """The file format the results will have."""
        return self.output_format or "png"

    @property
    def dimensions(self) -> tuple[int, int] | None:
        """``(width, height)`` when a fixed size was asked for, else None."""
        return parse_size(self.size) if self.size and self.size != "auto" else None

    def wire_fields(self) -> dict[str, Any]:
        """The JSON body fields, without the ones left unset."""
        data = self.model_dump(exclude_none=True, exclude={"images", "mask"})
        if not self.stream:
            data.pop("stream", None)
        return data

    def summary(self) -> dict[str, Any]:
        """The normalized parameters (no image bytes): for logs, manifests and cache keys."""
        return self.wire_fields()

    @classmethod
    def build(cls, **fields: Any) -> Self:
        """Validate ``fields`` into a request, raising RequestValidationError naming each problem."""
        try:
            return cls.model_validate(fields)
        except _FieldError as exc:
            raise RequestValidationError([(exc.field, exc.value, exc.rule)]) from None
        except ValidationError as exc:
            raise RequestValidationError(_explain(exc, fields, cls)) from None


class GenerateRequest(ImageRequest):
    """``POST /images/generations``: JSON body."""

    moderation: Moderation | None = Field(None, description="auto or low.")


class EditRequest(ImageRequest):
    """``POST /images/edits``: multipart with 1..16 images and an optional mask."""

    images: tuple[InputImage, ...] = Field(
        min_length=1, max_length=MAX_INPUT_IMAGES, description="1..16 input images."
    )
    mask: InputImage | None = Field(None, description="PNG with alpha; alpha 0 marks where to edit.")

    @model_validator(mode="after")
    def _check_mask(self) -> Self:
        mask = self.mask
        if mask is None:
            return self
        first = self.images[0]
        if mask.format != "png":
            raise _FieldError("mask", mask.filename, f"must be a PNG, not {mask.format}")
        if len(mask.data) >= MAX_MASK_BYTES:
            raise _FieldError("mask", mask.filename, f"must be under {MAX_MASK_BYTES} bytes")
        if not mask.has_alpha:
            raise _FieldError("mask", mask.filename, "must have an alpha channel (alpha 0 = edit)")
        if (mask.width, mask.height) != (first.width, first.height):
            raise _FieldError(
                "mask",
                mask.filename,
                f"must have the first image's size {first.width}x{first.height}, "
                f"not {mask.width}x{mask.height}",
            )
        return self

    def form_fields(self) -> dict[str, str]:
        """The text parts of the multipart body; booleans as ``true``/``false``."""
        out: dict[str, str] = {}
        for key, value in self.wire_fields().items():
            out[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return out

    def summary(self) -> dict[str, Any]:
        """Normalized parameters plus the sha256 of every input image and the mask."""
        data = self.wire_fields()
        data["images"] = [img.sha256 for img in self.images]
        if self.mask is not None:
            data["mask"] = self.mask.sha256
        return data

    @classmethod
    def build_with_files(
        cls,
        images: ImageSource | Sequence[ImageSource],
        mask: ImageSource | None = None,
        **fields: Any,
    ) -> EditRequest:
        """Read and check every image and the mask, then validate all fields together."""
        errors: list[tuple[str, Any, str]] = []
        sources = _as_source_list(images)
        if not 1 <= len(sources) <= MAX_INPUT_IMAGES:
            errors.append(("images", f"{len(sources)} images", "must be 1..16 images"))
        loaded: list[InputImage] = []
        for i, source in enumerate(sources[:MAX_INPUT_IMAGES]):
            try:
                loaded.append(load_input_image(source))
            except ValueError as exc:
                errors.append((f"images[{i}]", _describe(source), str(exc)))
        mask_img: InputImage | None = None
        if mask is not None:
            try:
                mask_img = load_input_image(mask, max_bytes=MAX_MASK_BYTES)
            except ValueError as exc:
                errors.append(("mask", _describe(mask), str(exc)))
        if errors:
            raise RequestValidationError(errors)
        return cls.build(images=tuple(loaded), mask=mask_img, **fields)


class _FieldError(ValueError):
    """A rule broken by one field, raised from model validators to keep the field's name."""

    def __init__(self, field: str, value: Any, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field, self.value, self.rule = field, value, rule


def _explain(
    exc: ValidationError, fields: dict[str, Any], model: type[BaseModel]
) -> list[tuple[str, Any, str]]:
    out: list[tuple[str, Any, str]] = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "request"
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, _FieldError):
            out.append((ctx_error.field, ctx_error.value, ctx_error.rule))
            continue
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = unknown_name(str(err["loc"][0]), model.model_fields, "field")
        value = fields.get(str(err["loc"][0]), err.get("input")) if err["loc"] else err.get("input")
        if err["type"] == "missing":
            message, value = "is required", None
        if err["loc"] and err["loc"][0] in ("images", "mask") and not isinstance(value, str):
            value = f"{len(value)} images" if isinstance(value, (list, tuple)) else value
        out.append((loc, value, message))
    return out


def _as_source_list(images: ImageSource | Sequence[ImageSource]) -> list[ImageSource]:
    if isinstance(images, (str, bytes, bytearray, memoryview, Path, InputImage)) or hasattr(images, "read"):
        return [images]  # type: ignore[list-item]
    return list(images)  # type: ignore[arg-type]


def _describe(source: object) -> object:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if hasattr(source, "read"):
        return getattr(source, "name", "<file object>")
    return str(source)
