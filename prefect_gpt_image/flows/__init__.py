"""Prefect flows: ``image_pipeline`` (generate → mask edit → reference blend) and ``batch_generate``."""

from .batch import BatchResult, RowResult, batch_generate
from .manifest import BatchRow
from .masks import MaskRegion, build_mask
from .params import BlendStep, EditStep, ImageOptions, SizePreset
from .pipeline import PipelineResult, image_pipeline

__all__ = [
    "BatchResult",
    "BatchRow",
    "BlendStep",
    "EditStep",
    "ImageOptions",
    "MaskRegion",
    "PipelineResult",
    "RowResult",
    "SizePreset",
    "batch_generate",
    "build_mask",
    "image_pipeline",
]
