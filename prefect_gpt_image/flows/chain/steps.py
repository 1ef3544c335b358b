"""What a chain is made of: the rows and steps given (:class:`ChainRow`), what each step of each
row became (:class:`StepResult`, :class:`ChainResult`), and the validated plan of a row
(:class:`PreparedRow` of :class:`StepCall`) that :mod:`.planning` builds and :mod:`.running` runs."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field

from prefect_gpt_image.api.images import InputImage
from prefect_gpt_image.api.inputpolicy import InputPolicy
from prefect_gpt_image.api.pricing import PriceModel
from prefect_gpt_image.blocks import GptImageSettings
from prefect_gpt_image.calls import Bill, Charges, InputCache
from prefect_gpt_image.storage import ImageStore
from prefect_gpt_image.tasks import ImageRef

from ..failures import Counted, FailedRow
from ..masks import MaskRegion
from ..params import ImageOptions, PipelineStep
from ..review import ReviewDecision

__all__ = [
    "ChainResult",
    "ChainRow",
    "PlanContext",
    "PreparedRow",
    "StepCall",
    "StepInput",
    "StepResult",
    "failed_steps",
    "step_names",
]


@dataclass(frozen=True)
class ChainRow:
    """One row of a chain run: its number, its own id, and its columns (the templates' values and
    the inputs' URIs)."""

    number: int
    id: str | None = None
    columns: Mapping[str, Any] | None = None
    source: str = ""
    """The row's input image, named in its results when it is invalid."""
    templates: bool = True
    """Whether prompts and URIs are templates filled from the columns (else taken as written)."""
    error: str | None = None
    """Why the row is invalid before any step (e.g. a manifest line that is no row)."""


class StepResult(Charges):
    """What happened to one step of one row, and what it cost this run (:class:`Charges`)."""

    row: int = Field(description="1-based row number.")
    id: str | None = None
    step: str = Field(description="The step's name.")
    kind: Literal["generate", "edit", "blend"]
    prompt: str = ""
    status: Literal["stored", "failed", "invalid", "skipped", "dropped"]
    images: list[ImageRef] = Field(default_factory=list)
    source: str = Field("", description="The step's input image (a URI, or the sha256 of an earlier output).")
    request_id: str | None = None
    error: str | None = None
    error_type: str | None = None
    review: list[ReviewDecision] = Field(
        default_factory=list, description="The review decisions about this step's images (who, what, when)."
    )

    @property
    def cached(self) -> bool:
        """Served from the store's cache record (nothing paid): :attr:`served`."""
        return self.served


class ChainResult(BaseModel):
    """Every row's steps, row after row, and counts."""

    steps: list[StepResult]

    def rows(self) -> dict[int, list[StepResult]]:
        """The steps of each row, by row number."""
        out: dict[int, list[StepResult]] = {}
        for step in self.steps:
            out.setdefault(step.row, []).append(step)
        return out

    @property
    def stored(self) -> int:
        """Rows whose every step is stored."""
        return sum(all(s.status == "stored" for s in steps) for steps in self.rows().values())

    @property
    def dropped(self) -> int:
        """Rows a reviewer dropped."""
        return sum(any(s.status == "dropped" for s in steps) for steps in self.rows().values())

    @property
    def failed(self) -> int:
        """Rows with a failed, skipped or invalid step (dropped ones aside)."""
        return len(self.rows()) - self.stored - self.dropped

    @property
    def cost(self) -> float:
        """USD paid in this run (0 for a rerun served from the store)."""
        return sum(s.cost for s in self.steps)

    def bill(self) -> Bill:
        """What the steps paid and found in the store, and the estimate of the calls made."""
        return Bill.total(s.bill() for s in self.steps)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """Counts, not every step: a repr stays one line at any size."""
        yield "steps", Counted(len(self.rows()), self.stored, self.failed, steps=len(self.steps))

    def final(self, row: int) -> ImageRef | None:
        """The last image row ``row`` made, if its chain completed."""
        steps = self.rows().get(row, [])
        return steps[-1].images[0] if steps and all(s.status == "stored" for s in steps) else None


def step_names(steps: Sequence[PipelineStep]) -> list[str]:
    """Each step's name (its kind unless named); ValueError for no steps or a name used twice."""
    if not steps:
        raise ValueError("steps: give at least one step (generate, edit or blend)")
    names = [step.name or step.kind for step in steps]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"steps: two steps are named {name!r}: give each a distinct name")
    return names


def failed_steps(result: ChainResult) -> list[FailedRow]:
    """The failed and invalid steps of ``result`` (a skipped step is counted in its row)."""
    return [
        FailedRow(s.row, s.id, s.error_type or s.status, s.error, step=s.step)
        for s in result.steps
        if s.status in ("failed", "invalid")
    ]


@dataclass
class StepInput:
    """One input image of a step: an earlier step's output, or a URI read during the plan."""

    label: str
    step: str | None = None
    uri: str | None = None
    header: InputImage | None = None  # the URI's image, its bytes dropped after the plan


@dataclass
class StepCall:
    """One step of one row, validated: all a run needs to make it (or serve it from the store)."""

    name: str
    step: PipelineStep
    prompt: str
    fields: dict[str, Any]
    inputs: list[StepInput]
    mask_uri: str | None = None
    region: MaskRegion | None = None
    dims: tuple[int, int] | None = None  # the output's size when it is known before the call
    cached: list[ImageRef] | None = None
    known: bool = False  # the request (so the cache key) was known in the plan
    estimate: float = 0.0  # the price model's estimate of the call
    variant: int | None = None  # a redo's own variant (unset: the run's)


@dataclass
class PreparedRow:
    row: ChainRow
    calls: list[StepCall] = field(default_factory=list)
    invalid_step: str | None = None
    invalid_kind: Literal["generate", "edit", "blend"] = "generate"
    error: BaseException | None = None
    made: dict[str, ImageRef] = field(default_factory=dict)
    """Outputs of the row's earlier steps, made before these calls (a chain run in parts around reviews)."""


@dataclass
class PlanContext:
    steps: Sequence[PipelineStep]
    names: list[str]
    options: ImageOptions
    variant: int
    settings: GptImageSettings
    store: ImageStore
    lookup: bool
    policy: InputPolicy
    prices: PriceModel
    cache: InputCache | None  # the run's reads (the plan's threads do not inherit its context)
