"""Prefect flows: ``image_pipeline`` (generate → mask edit → reference blend), ``batch_generate``,
``batch_edit`` (one edit over many images) and ``batch_pipeline`` (a chain of steps per manifest row),
each of which can pause for a review in the Prefect UI (``review=True``, a ``review`` step); and
``bill_report`` (what the store's records say was paid over a period).

The batch flows' plans are also made outside a flow run (``plan_batch``, ``plan_batch_edit``,
``plan_batch_pipeline``: what ``plan_only=True`` returns, with no key and no Prefect server), and
their progress can be watched in the process running them (``watch_progress``)."""

from prefect_gpt_image.api.errors import ConfigurationError
from prefect_gpt_image.calls import BatchFailedError

from .batch import BatchResult, RowResult, batch_generate, plan_batch
from .bill import Bill, BillLine, BillReport, bill_report, collect_bill
from .chain import ChainResult, StepResult
from .edit import batch_edit, plan_batch_edit
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
from .pipeline import PipelineResult, batch_pipeline, image_pipeline, plan_batch_pipeline
from .plan import PlannedCall, RunPlan
from .review import REVIEW_EVENT, RedoRow, ReviewDecision, ReviewForm, ReviewTimeoutError
from .rows import ProgressReport, watch_progress

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
    "ProgressReport",
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
    "plan_batch",
    "plan_batch_edit",
    "plan_batch_pipeline",
    "watch_progress",
]
