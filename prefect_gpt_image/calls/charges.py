""":class:`Charges`: what one row of a batch (or one step of a chain) cost this run, the fields the
batch and chain results share, filled from the calls' bill (:func:`~.retry.collect_maybe_billed`)."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, Field

from .bill import Bill
from .refs import ImageRef
from .retry import BilledAttempts

__all__ = ["Charges"]


class Charges(BaseModel):
    """Paid versus served for one row or step, in this run."""

    served: bool = Field(
        False, description="Its images were served from the store's cache record: nothing paid for them now."
    )
    paid: float = Field(
        0.0,
        description="USD this run paid for it: each image's actual cost (the answer's token usage, "
        "else the price model), images billed and not delivered included (undelivered_cost).",
    )
    paid_images: int = Field(0, description="Images this run paid for (billed and not delivered included).")
    served_images: int = Field(0, description="Images found in the store instead of paid for.")
    served_worth: float = Field(0.0, description="What the served images cost when they were made.")
    estimate: float = Field(
        0.0, description="The price model's estimate of the calls this run made for it (0 when served)."
    )
    maybe_billed: list[str] = Field(
        default_factory=list,
        description="Request ids of attempts that were sent and may have been billed but brought no "
        "image, retried because the settings allow it (retry_outcome_unknown), and of answers whose "
        "images were billed but not delivered (a result URL given up).",
    )
    undelivered: dict[str, int] = Field(
        default_factory=dict,
        description="Request ids (also in maybe_billed) of answers whose images were billed but not "
        "delivered (a result URL given up), with how many images each lost.",
    )
    undelivered_cost: float = Field(
        default=0.0, description="USD of those images: part of what this run paid."
    )
    redone_cost: float = Field(
        default=0.0,
        description="USD this run paid for attempts a reviewer sent back: part of what this run paid.",
    )

    @property
    def cost(self) -> float:
        """USD this run paid for it (:attr:`paid`): 0 when its images were served from the store."""
        return self.paid

    def bill(self) -> Bill:
        """These charges as a :class:`~.bill.Bill` (add them up with :meth:`Bill.total`)."""
        return Bill(
            paid=self.paid,
            paid_images=self.paid_images,
            served_images=self.served_images,
            served_worth=self.served_worth,
            estimate=self.estimate,
        )

    def charge(self, calls: BilledAttempts, request_id: str | None = None) -> None:
        """Take what the calls collected in ``calls`` paid, found and lost (the failed call's own
        ``request_id`` listed in ``maybe_billed`` only when its images were billed and lost)."""
        bill = calls.bill
        self.paid, self.paid_images, self.estimate = bill.paid, bill.paid_images, bill.estimate
        self.served_images, self.served_worth = bill.served_images, bill.served_worth
        self.served = bill.served_images > 0 and bill.paid_images == 0
        self.maybe_billed = calls.besides(request_id)
        self.undelivered = dict(calls.undelivered)
        self.undelivered_cost = calls.undelivered_cost

    def add_sent_back(self, earlier: Charges) -> None:
        """Count what ``earlier``, an attempt a reviewer sent back (replaced by this one), paid:
        it was paid too. Nothing when it was served from the store (a rerun pays nothing)."""
        self.paid += earlier.paid
        self.paid_images += earlier.paid_images
        self.estimate += earlier.estimate
        self.redone_cost += earlier.paid
        self.served = self.served and self.paid_images == 0

    def serve(self, refs: Sequence[ImageRef]) -> None:
        """Mark it served from the store with ``refs`` (nothing paid)."""
        self.served, self.served_images = True, len(refs)
        self.served_worth = sum(ref.cost for ref in refs)
