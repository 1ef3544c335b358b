"""Prefect flows: ``image_pipeline`` (generate → mask edit → reference blend), ``batch_generate``,
``batch_edit`` (one edit over many images) and ``batch_pipeline`` (a chain of steps per manifest row),
each of which can pause for a review in the Prefect UI (``review=True``, a ``review`` step); and
``bill_report`` (what the store's records say was paid over a period)."""

from prefect_gpt_image.api.errors import ConfigurationError
from prefect_gpt_image.calls import BatchFailedError

from .batch import BatchResult, RowResult, batch_generate
from .bill import Bill, BillLine, BillReport, bill_report, collect_bill
from .chain import ChainResult, StepResult
from .edit import batch_edit
from .manifest import BatchRow
from .masks import MaskRegion, build_mask
from .params import (
    BlendStep,
    ChainStep,
    EditStep,
    GenerateStep,
    ImageOptions,
    PipelineStep,
    ReviewStep,
    SizePreset,
)
from .pipeline import PipelineResult, batch_pipeline, image_pipeline
from .plan import PlannedCall, RunPlan
from .review import REVIEW_EVENT, RedoRow, ReviewDecision, ReviewForm, ReviewTimeoutError

__all__ = [
    "REVIEW_EVENT",
    "BatchFailedError",
    "BatchResult",
    "BatchRow",
    "Bill",
    "BillLine",
    "BillReport",
    "BlendStep",
    "ChainResult",
    "ChainStep",
    "ConfigurationError",
    "EditStep",
    "GenerateStep",
    "ImageOptions",
    "MaskRegion",
    "PipelineResult",
    "PipelineStep",
    "PlannedCall",
    "RedoRow",
    "ReviewDecision",
    "ReviewForm",
    "ReviewStep",
    "ReviewTimeoutError",
    "RowResult",
    "RunPlan",
    "SizePreset",
    "StepResult",
    "batch_edit",
    "batch_generate",
    "batch_pipeline",
    "bill_report",
    "build_mask",
    "collect_bill",
    "image_pipeline",
]
