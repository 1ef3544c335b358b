"""Typed flow parameters: the Prefect UI renders them as forms (dropdowns for the ``Literal``
choices, nested forms for the models, help text from the descriptions).

The same values pass through the API layer's request models before anything is paid for, so a
bad value typed in the UI fails the run at once with the field and the rule.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    field_validator,
    model_validator,
)

from prefect_gpt_image.api.models import parse_size
from prefect_gpt_image.api.suggest import with_suggestions
from prefect_gpt_image.blocks import GptImageCredentials, GptImageSettings, GptImageStorage
from prefect_gpt_image.calls import ImageStorageError, check_store, client_config, run_logger
from prefect_gpt_image.storage import ImageStore, resolve_store

from .masks import MaskRegion

__all__ = [
    "BlendStep",
    "ChainStep",
    "EditStep",
    "GenerateStep",
    "ImageOptions",
    "PipelineStep",
    "ReviewStep",
    "SizePreset",
    "load_blocks",
    "load_credentials",
    "load_settings",
    "load_storage",
]

SizePreset = Literal[
    "auto",
    "1024x1024",
    "1536x1024",
    "1024x1536",
    "2048x2048",
    "2048x1152",
    "1152x2048",
    "3840x2160",
    "2160x3840",
]
"""Common sizes offered in the UI (any ``WxH`` allowed by the API works from Python)."""


class _Strict(BaseModel):
    """A parameter model whose errors say what to do: an unknown key names the closest valid one
    (``options.qualty: Extra inputs are not permitted; did you mean 'quality'?``), a value that is
    none of the choices the closest choice; typed in the UI or passed from Python, before anything
    runs."""

    model_config = ConfigDict(extra="forbid")
    names: ClassVar[str] = "option"
    """What a key is called in the errors."""

    @model_validator(mode="wrap")
    @classmethod
    def _suggest(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        try:
            return handler(data)
        except ValidationError as exc:
            raise with_suggestions(exc, cls.model_fields, cls.names, cls._advice) from None

    @classmethod
    def _advice(cls, field: str, value: Any) -> str | None:
        """More to say about a bad value of ``field`` (None: nothing)."""
        return None


class ImageOptions(_Strict):
    """Image options shared by every step; unset ones fall back to the settings block."""

    size: SizePreset | None = Field(None, description="Image size; unset: the settings' size.")
    quality: Literal["auto", "low", "medium", "high"] | None = Field(
        None, description="Rendering quality (high can take minutes); unset: the settings' quality."
    )
    output_format: Literal["png", "jpeg", "webp"] | None = Field(
        None, description="File format; unset: the settings' format (png)."
    )
    output_compression: int | None = Field(None, ge=0, le=100, description="0..100, only for jpeg or webp.")
    background: Literal["auto", "opaque"] | None = Field(None, description="Background.")

    @classmethod
    def _advice(cls, field: str, value: Any) -> str | None:
        """A size that is not a preset: the rule it breaks and the nearest valid sizes."""
        if field != "size" or not isinstance(value, str):
            return None
        try:
            parse_size(value)
        except ValueError as exc:
            return f"{value}: {exc}"
        return f"{value} is a valid size of the API: pass it to the tasks (size=...), which take any WxH"

    def fields(self) -> dict[str, Any]:
        """The options that are set, as API field names."""
        return self.model_dump(exclude_none=True)


_NAME = Field(
    None,
    pattern=r"^[A-Za-z0-9_-]{1,40}$",
    description="The step's name, for later steps' inputs and the results; unset: its kind "
    "(generate, edit, blend).",
)
_IMAGE = Field(
    None,
    description="The input image: an earlier step's name, a manifest column holding a URI, or a "
    "path / s3:// / https:// URI; unset: the previous step's image (a first step: the row's "
    "'image' column).",
)
_OPTIONS = Field(None, description="Options of this step; unset ones come from the flow's options.")


class GenerateStep(_Strict):
    """Generate an image from a prompt (a template filled from the row's columns in batches)."""

    names: ClassVar[str] = "step field"

    kind: Literal["generate"] = Field("generate", description="A generation.")
    name: str | None = _NAME
    prompt: str = Field(description="What to draw, e.g. '{product} on a {surface}'.")
    options: ImageOptions | None = _OPTIONS

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        return _non_empty(value, "generate")


class EditStep(_Strict):
    """Edit the generated image: where (a mask image, or a box) and how (a prompt)."""

    names: ClassVar[str] = "step field"

    kind: Literal["edit"] = Field("edit", description="An edit (with a mask or a box).")
    name: str | None = _NAME
    prompt: str = Field(description="How to change the image, e.g. 'add a rainbow in the sky'.")
    mask_uri: str | None = Field(
        None,
        description="A mask PNG (alpha 0 = edit) as a local path, s3:// or https:// URI (or a "
        "manifest column holding one); or leave empty and give a region.",
    )
    region: MaskRegion | None = Field(
        None, description="The box to edit, in pixels or fractions (0..1) of the image."
    )
    image: str | None = _IMAGE
    references: list[str] = Field(
        default_factory=list,
        max_length=15,
        description="Up to 15 more images sent with the image (URIs, columns or earlier steps).",
    )
    options: ImageOptions | None = _OPTIONS

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        return _non_empty(value, "edit")


class BlendStep(_Strict):
    """Blend the current image with reference images (style, subjects, scenes)."""

    names: ClassVar[str] = "step field"

    kind: Literal["blend"] = Field("blend", description="A blend with references.")
    name: str | None = _NAME
    prompt: str = Field(description="What to make of the image and the references.")
    references: list[str] = Field(
        min_length=1,
        max_length=15,
        description="1..15 reference images as local paths, s3:// or https:// URIs, manifest "
        "columns or earlier steps (the current image is the 16th).",
    )
    image: str | None = _IMAGE
    options: ImageOptions | None = _OPTIONS

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        return _non_empty(value, "blend")


PipelineStep = Annotated[GenerateStep | EditStep | BlendStep, Field(discriminator="kind")]
"""One step of a pipeline: a generation, an edit or a blend (told apart by ``kind``)."""


class ReviewStep(BaseModel):
    """Pause for a person to review what the step before made (approve, redo, drop) before the
    next steps spend more."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["review"] = Field("review", description="A review in the Prefect UI.")
    name: str | None = _NAME
    timeout_seconds: int = Field(
        86400,
        ge=1,
        description="How long the review waits for an answer; then the run fails and nothing more is paid.",
    )
    max_rounds: int = Field(
        3,
        ge=1,
        le=20,
        description="Reviews at most (redone rows are reviewed again); in the last a redo drops.",
    )


ChainStep = Annotated[GenerateStep | EditStep | BlendStep | ReviewStep, Field(discriminator="kind")]
"""A step of ``batch_pipeline``: a generation, an edit, a blend, or a review of the step before."""


def _non_empty(value: str, kind: str) -> str:
    if not value.strip():
        raise ValueError(f"{kind} prompt must not be empty")
    return value


async def load_blocks(
    settings_block: str | None, credentials_block: str | None, storage: str | None, *, spending: bool = True
) -> tuple[GptImageSettings, GptImageCredentials | None, ImageStore]:
    """What every flow starts with: its settings, credentials and store, from the parameters.

    The key is resolved here, once: a missing key (or one that may not go to the base URL) fails
    the run with :class:`~prefect_gpt_image.api.ConfigurationError` before any row is read or
    planned, rather than every row failing with it. A run that may spend (``spending``: not a
    plan) checks its store here too (:func:`check_spending_store`)."""
    # Three independent reads from the Prefect API: at once.
    settings, credentials, store = await asyncio.gather(
        load_settings(settings_block), load_credentials(credentials_block), load_storage(storage)
    )
    client_config(credentials, settings)
    if spending:
        await check_spending_store(store)
    return settings, credentials, store


async def check_spending_store(store: ImageStore) -> None:
    """Check ``store`` before a run spends anything (once per store and process, see
    :func:`~prefect_gpt_image.calls.check_store`): a configuration mistake (no credentials, a
    wrong key, access denied, no such bucket, ...) fails the run at once with what to set, before
    any row is looked up or paid for, instead of failing every row. A transient failure (a
    refused connection, a 5xx) is only a warning: the rows check again and retry as usual."""
    try:
        await check_store(store)
    except ImageStorageError as exc:
        if exc.configuration:
            raise
        run_logger().warning("%s; each row checks again and retries", exc)


async def load_credentials(name: str | None) -> GptImageCredentials | None:
    """The saved credentials block ``name``; None means the environment's key."""
    return await GptImageCredentials.aload(name) if name else None


async def load_settings(name: str | None) -> GptImageSettings:
    """The saved settings block ``name``, or the defaults."""
    return await GptImageSettings.aload(name) if name else GptImageSettings()


async def load_storage(location: str | None, *, parameter: str = "storage") -> ImageStore:
    """A store from a folder, an ``s3://bucket/prefix`` URI, or a saved block's slug:
    ``gpt-image-storage/NAME`` or ``s3-bucket/NAME``. None: ``$GPT_IMAGE_STORAGE`` or ./gpt-image-output.
    Its error messages name ``parameter`` (the CLI's is ``--storage``).
    """
    if location and location.startswith("gpt-image-storage/"):
        block: GptImageStorage = await GptImageStorage.aload(location.split("/", 1)[1])
        return block.get_store(parameter=parameter)
    if location and location.startswith("s3-bucket/"):
        from prefect_aws import S3Bucket

        return resolve_store(await S3Bucket.aload(location.split("/", 1)[1]), parameter=parameter)
    return resolve_store(location, parameter=parameter)
