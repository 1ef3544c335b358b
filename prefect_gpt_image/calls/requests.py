"""The requests the image tasks (and batch rows and chain steps) send: settings' defaults under
the caller's options, validated before anything is paid."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefect_gpt_image.api import EditRequest, GenerateRequest
from prefect_gpt_image.api.images import InputImage
from prefect_gpt_image.blocks import GptImageSettings

__all__ = ["edit_request", "generate_request"]


def _fields(settings: GptImageSettings, *, moderation_allowed: bool, **given: Any) -> dict[str, Any]:
    fields = settings.request_defaults(moderation=moderation_allowed)
    fields.update({name: value for name, value in given.items() if value is not None})
    return fields


def generate_request(prompt: str, settings: GptImageSettings, **options: Any) -> GenerateRequest:
    """The request ``generate_image`` sends for ``prompt`` and ``options`` (unset ones, None, from
    ``settings``); RequestValidationError before anything is paid."""
    return GenerateRequest.build(prompt=prompt, **_fields(settings, moderation_allowed=True, **options))


def edit_request(
    prompt: str,
    images: Sequence[InputImage],
    mask: InputImage | None,
    settings: GptImageSettings,
    **options: Any,
) -> EditRequest:
    """The request ``edit_image`` and ``blend_images`` send for the read ``images`` (the
    edited one first) and ``mask``; RequestValidationError before anything is paid."""
    fields = _fields(settings, moderation_allowed=False, **options)
    return EditRequest.build(prompt=prompt, images=tuple(images), mask=mask, **fields)
