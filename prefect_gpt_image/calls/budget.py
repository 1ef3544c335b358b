"""Per-flow-run spending caps, checked and reserved before each paid call.

A call reserves ``n`` images and the price model's estimate of its cost (see
:mod:`prefect_gpt_image.api.pricing`: size, quality, ``n`` and input images) against its flow
run's caps (``max_images_per_run``, ``max_cost_per_run`` of the settings) before anything is sent, under
one lock, so concurrent calls cannot overshoot together. A call that fails without being billed
gives its reservation back; one that may have been billed keeps it. Cache hits and spool
recoveries reserve nothing.

The ledger lives in this process: a flow run's tasks share it when they run in the flow's
process (the default task runners). Tasks run on a distributed runner each see their own share.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from .bill import usd
from .errors import BudgetExceededError

__all__ = ["Reservation", "exceeded_cap", "reserve", "spent"]

_MAX_RUNS = 10_000


@dataclass
class _RunTotals:
    images: int = 0
    cost: float = 0.0


_totals: OrderedDict[str, _RunTotals] = OrderedDict()
_lock = threading.Lock()


@dataclass
class Reservation:
    """Images and cost set aside for one call; :meth:`cancel` gives them back."""

    run_key: str
    images: int
    cost: float
    _open: bool = True

    def cancel(self) -> None:
        """Give the reservation back (the call was not billed). Idempotent."""
        with _lock:
            if not self._open:
                return
            self._open = False
            totals = _totals.get(self.run_key)
            if totals is not None:
                totals.images -= self.images
                totals.cost -= self.cost


def exceeded_cap(
    used_images: int,
    used_cost: float,
    images: int,
    cost: float,
    *,
    max_images: int | None,
    max_cost: float | None,
) -> str | None:
    """The cap (``max_images_per_run`` or ``max_cost_per_run``) that ``images`` more images costing
    ``cost`` would break on top of what is used, or None: the one comparison of the caps, for a
    call's reservation and a batch's plan alike."""
    if max_images is not None and used_images + images > max_images:
        return "max_images_per_run"
    if max_cost is not None and used_cost + cost > max_cost + 1e-9:
        return "max_cost_per_run"
    return None


def reserve(
    run_key: str,
    *,
    images: int,
    cost: float,
    max_images: int | None,
    max_cost: float | None,
) -> Reservation:
    """Reserve ``images`` images estimated at ``cost`` USD for flow run ``run_key``, or raise
    BudgetExceededError naming the cap the call would break (nothing is reserved then)."""
    with _lock:
        totals = _totals.get(run_key)
        if totals is None:
            totals = _totals[run_key] = _RunTotals()
            while len(_totals) > _MAX_RUNS:
                _totals.popitem(last=False)
        cap = exceeded_cap(totals.images, totals.cost, images, cost, max_images=max_images, max_cost=max_cost)
        if cap == "max_images_per_run":
            raise BudgetExceededError(
                f"budget: this call asks for {images} image(s) but the flow run has already used "
                f"{totals.images} of max_images_per_run={max_images}; nothing was sent",
                cap="max_images_per_run",
            )
        if cap == "max_cost_per_run" and max_cost is not None:
            raise BudgetExceededError(
                f"budget: this call of {images} image(s) would cost about {usd(cost)} but "
                f"the flow run has already used {usd(totals.cost)} of max_cost_per_run={usd(max_cost)}; "
                "nothing was sent",
                cap="max_cost_per_run",
            )
        totals.images += images
        totals.cost += cost
        return Reservation(run_key, images, cost)


def spent(run_key: str) -> tuple[int, float]:
    """Images and estimated cost reserved so far by flow run ``run_key``."""
    with _lock:
        totals = _totals.get(run_key)
        return (totals.images, totals.cost) if totals is not None else (0, 0.0)
