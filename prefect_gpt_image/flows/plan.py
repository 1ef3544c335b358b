"""The plan of a batch: every call it would make, looked up in the cache, priced, before any spend.

Each batch flow validates every row (and step), looks every call up in the store's cache records
and makes a :class:`RunPlan`: the calls to make, the images they return, the cache hits, the
invalid rows and the estimated cost: each call priced by the price model of the endpoint (see
:mod:`prefect_gpt_image.api.pricing`) for its size, quality, ``n`` and input images. ``plan_only=True``
returns the plan (and a table artifact of it) and pays nothing; a real run checks it against the
settings' per-run caps first and fails before the first paid call when the uncached calls would
break one, so no budget surprise comes mid-batch.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect.artifacts import acreate_table_artifact
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run
from prefect.states import Completed
from pydantic import BaseModel, Field

from prefect_gpt_image.blocks import GptImageSettings
from prefect_gpt_image.calls import exceeded_cap, md_table, spent
from prefect_gpt_image.tasks import BudgetExceededError

__all__ = [
    "PLAN_TABLE_KEY",
    "PlannedCall",
    "RunPlan",
    "check_budget",
    "enforce_budget",
    "has_budget",
    "planned",
    "publish_plan",
]

PLAN_TABLE_KEY = "gpt-image-plan"


class PlannedCall(BaseModel):
    """One call of a batch's plan: a row (and step), and whether it is paid, cached or invalid."""

    row: int = Field(description="1-based row number.")
    id: str | None = Field(None, description="The row's own id, if it has one.")
    step: str = Field("generate", description="The step's name (batch_generate: generate).")
    status: Literal["call", "cached", "invalid"] = Field(
        description="call: to be made and paid; cached: in the store (free); invalid: refused."
    )
    images: int = Field(0, description="Images the call returns (and bills) when it is made.")
    estimate: float = Field(0.0, description="The price model's estimate of the call, in USD, if made.")
    source: str = Field("", description="The input image, for edits.")
    error: str | None = Field(None, description="Why the row or step is invalid.")


class RunPlan(BaseModel):
    """Every call of a batch and what the uncached ones would cost."""

    calls: list[PlannedCall]
    price_model: str = Field(description="The price model of the estimates (id@as_of).")

    @property
    def to_make(self) -> int:
        """Calls that would be made (and paid)."""
        return sum(c.status == "call" for c in self.calls)

    @property
    def images(self) -> int:
        """Images those calls would return and bill."""
        return sum(c.images for c in self.calls if c.status == "call")

    @property
    def cache_hits(self) -> int:
        """Calls served from the store for free."""
        return sum(c.status == "cached" for c in self.calls)

    @property
    def invalid(self) -> int:
        """Calls refused before any spend."""
        return sum(c.status == "invalid" for c in self.calls)

    @property
    def cost(self) -> float:
        """Estimated USD of the calls to make: the sum of their estimates."""
        return sum(c.estimate for c in self.calls if c.status == "call")

    def summary(self) -> str:
        """One line: calls to make, images, cache hits, invalid ones and the estimated cost."""
        return (
            f"plan: {self.to_make} call(s) to make for {self.images} image(s), "
            f"{self.cache_hits} cache hit(s), {self.invalid} invalid; estimated ${self.cost:.4f} "
            f"({self.price_model})"
        )

    def table(self) -> list[dict[str, Any]]:
        """The plan as rows of a table artifact."""
        return [
            {
                "row": c.row,
                "id": c.id or "",
                "step": c.step,
                "status": c.status,
                "images": c.images,
                "cost": round(c.estimate, 4) if c.status == "call" else 0.0,
                "source": c.source,
                "error": (c.error or "")[:300],
            }
            for c in self.calls
        ]


def check_budget(plan: RunPlan, settings: GptImageSettings) -> None:
    """Raise BudgetExceededError (with the plan in its message) when the plan's uncached calls
    would break ``max_images_per_run`` or ``max_cost_per_run`` on top of what this flow run has
    already spent; nothing was sent then."""
    used_images, used_cost = spent(str(flow_run.id)) if flow_run.id else (0, 0.0)
    cap = exceeded_cap(
        used_images,
        used_cost,
        plan.images,
        plan.cost,
        max_images=settings.max_images_per_run,
        max_cost=settings.max_cost_per_run,
    )
    if cap is None:
        return
    limit = settings.max_images_per_run if cap == "max_images_per_run" else settings.max_cost_per_run
    raise BudgetExceededError(
        f"budget: the batch would exceed {cap}={limit} ({plan.summary()}); nothing was sent", cap=cap
    )


async def enforce_budget(plan: RunPlan, settings: GptImageSettings) -> None:
    """:func:`check_budget`, publishing the plan's table when it fails (the run then shows why)."""
    try:
        check_budget(plan, settings)
    except BudgetExceededError:
        await publish_plan(plan)
        raise


def has_budget(settings: GptImageSettings) -> bool:
    """Whether the settings cap a flow run's images or cost (then a batch plans before it pays)."""
    return settings.max_images_per_run is not None or settings.max_cost_per_run is not None


async def publish_plan(plan: RunPlan) -> None:
    """The plan as a table artifact (key ``gpt-image-plan``; its string cells escaped)."""
    await acreate_table_artifact(
        table=md_table(plan.table()), key=PLAN_TABLE_KEY, description=f"gpt-image {plan.summary()}"
    )


async def planned(plan: RunPlan, logger: Any) -> State[Any]:
    """The end of a ``plan_only`` run: the plan's table artifact, its summary logged, and a
    Completed state holding the plan."""
    await publish_plan(plan)
    logger.info(plan.summary())
    return Completed(message=plan.summary(), data=plan)
