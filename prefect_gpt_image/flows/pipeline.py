"""``image_pipeline``: generate from a prompt, then (optionally) edit with a mask, then (optionally)
blend with reference images. Every input of every step is checked before the first paid call.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from pydantic import BaseModel

from prefect_gpt_image.api import GenerateRequest, RequestValidationError
from prefect_gpt_image.api.images import MAX_MASK_BYTES, InputImage
from prefect_gpt_image.tasks import ImageRef, blend_images, edit_image, generate_image
from prefect_gpt_image.tasks.dispatch import sync_or_async
from prefect_gpt_image.tasks.inputs import read_input

from .masks import build_mask
from .params import (
    BlendStep,
    EditStep,
    ImageOptions,
    load_blocks,
)

__all__ = ["PipelineResult", "image_pipeline"]

PIPELINE_ARTIFACT_KEY = "gpt-image-pipeline"


class PipelineResult(BaseModel):
    """Every step's images: ``generated``, then ``edited`` and ``blended`` when those steps ran."""

    generated: list[ImageRef]
    edited: list[ImageRef] | None = None
    blended: list[ImageRef] | None = None

    @property
    def final(self) -> ImageRef:
        """The last image the pipeline made."""
        return (self.blended or self.edited or self.generated)[0]


@sync_or_async
@flow(name="gpt-image-pipeline", description="Generate, then edit with a mask, then blend with references.")
async def image_pipeline(
    prompt: str,
    options: ImageOptions | None = None,
    edit: EditStep | None = None,
    blend: BlendStep | None = None,
    variant: int = 0,
    storage: str | None = None,
    credentials_block: str | None = None,
    settings_block: str | None = None,
) -> PipelineResult:
    """Generate an image, then optionally edit it with a mask, then optionally blend it with references.

    Args:
        prompt: What to draw first.
        options: Size, quality, format and background for every step; unset ones come from the settings.
        edit: Optional edit of the generated image: a prompt and a mask (an image URI or a box).
        blend: Optional blend of the current image with 1..15 reference images.
        variant: Change it to get new images for the same inputs (part of the cache key).
        storage: A folder, an s3://bucket/prefix URI, or a saved block's slug
            (gpt-image-storage/NAME or s3-bucket/NAME); unset: $GPT_IMAGE_STORAGE or ./gpt-image-output.
        credentials_block: Name of a saved GptImageCredentials block; unset: $GPT_IMAGE_API_KEY.
        settings_block: Name of a saved GptImageSettings block; unset: the defaults.
    """
    logger = get_run_logger()
    options = options or ImageOptions()
    settings, credentials, store = await load_blocks(settings_block, credentials_block, storage)
    fields = options.fields()
    common: dict[str, Any] = {
        "variant": variant,
        "credentials": credentials,
        "settings": settings,
        "storage": store,
    }

    # Everything that can be checked before paying is checked now.
    request = GenerateRequest.build(prompt=prompt, **{**settings.request_defaults(), **fields})
    if edit is not None:
        if edit.mask_uri:
            mask_image = read_input(edit.mask_uri, store, what="edit.mask_uri", max_bytes=MAX_MASK_BYTES)
            _check_mask(mask_image, request.dimensions)
        elif edit.region is not None and request.dimensions is not None:
            edit.region.pixels(*request.dimensions)
    if blend is not None:
        for i, reference in enumerate(blend.references):
            read_input(reference, store, what=f"blend.references[{i}]")

    generated = await generate_image.aio(prompt, **fields, **common)
    result = PipelineResult(generated=generated)
    current = generated[0]
    logger.info("generated %s (%dx%d)", current.uri, current.width, current.height)

    if edit is not None:
        mask: str | bytes | None = edit.mask_uri
        if mask is None and edit.region is not None:
            mask = build_mask(current.width, current.height, edit.region)
        edit_fields = {**fields, "size": f"{current.width}x{current.height}"}
        result.edited = await edit_image.aio(edit.prompt, current, mask, **edit_fields, **common)
        current = result.edited[0]
        logger.info("edited into %s", current.uri)

    if blend is not None:
        result.blended = await blend_images.aio(
            blend.prompt, [current, *blend.references], **fields, **common
        )
        logger.info("blended into %s", result.blended[0].uri)

    await acreate_markdown_artifact(
        markdown=_chain_markdown(prompt, result, edit, blend),
        key=PIPELINE_ARTIFACT_KEY,
        description=f"gpt-image pipeline: {prompt[:120]}",
    )
    return result


def _check_mask(mask: InputImage, size: tuple[int, int] | None) -> None:
    """The edit's mask rules (contract §3) that hold before the image exists: a PNG with an alpha
    channel, of the generated image's size when that size is fixed."""
    rule = None
    if mask.format != "png":
        rule = f"must be a PNG, not {mask.format}"
    elif not mask.has_alpha:
        rule = "must have an alpha channel (alpha 0 = edit)"
    elif size is not None and (mask.width, mask.height) != size:
        rule = f"must have the image's size {size[0]}x{size[1]}, not {mask.width}x{mask.height}"
    if rule is not None:
        raise RequestValidationError([("edit.mask_uri", mask.filename, rule)])


def _chain_markdown(
    prompt: str, result: PipelineResult, edit: EditStep | None, blend: BlendStep | None
) -> str:
    steps: list[tuple[str, str, list[ImageRef]]] = [("generate", prompt, result.generated)]
    if edit is not None and result.edited:
        steps.append(("edit", edit.prompt, result.edited))
    if blend is not None and result.blended:
        steps.append(("blend", blend.prompt, result.blended))
    lines = ["# gpt-image pipeline", ""]
    for number, (name, step_prompt, refs) in enumerate(steps, start=1):
        ref = refs[0]
        lines += [
            f"## {number}. {name}",
            "",
            f"> {step_prompt}",
            "",
            f"![{name}]({ref.link})" if ref.link else f"`{ref.uri}`",
            "",
            f"{ref.width}x{ref.height} {ref.format}, sha256 `{ref.sha256[:16]}`, "
            f"request id `{ref.request_id or '-'}`, ${ref.cost:.4f}",
            "",
            f"stored at `{ref.uri}`"
            + (f"; made from `{'`, `'.join(p[:16] for p in ref.parents)}`" if ref.parents else ""),
            "",
        ]
    return "\n".join(lines)
