"""A run's bill: what it paid, what the store served, what the price model estimated, and the one
sentence that says so (:func:`bill_line`), used by every flow's state message, the CLI and the demo.

"Paid" is what this run's calls were billed (the answer's token ``usage`` where the price model
bills tokens, else the model's price), images billed and not delivered included; "served" are
images found in the store's cache records, which cost this run nothing: their worth is what they
cost when they were made (their ``cost`` in the manifest). The estimate is the price model's
figure for the calls this run made, before they were made (what plans and budget caps use).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Bill", "bill_line", "usd"]


def usd(amount: float) -> str:
    """``amount`` as dollars: ``$0`` for nothing, else four decimals (``$0.0377``)."""
    return "$0" if abs(amount) < 5e-5 else f"${amount:.4f}"


def bill_line(paid: float, images: int, served: int, worth: float) -> str:
    """The one-line bill of a run: ``paid $X for N images; M served from the store (worth $Y)``."""
    return (
        f"paid {usd(paid)} for {images} image{'' if images == 1 else 's'}; "
        f"{served} served from the store (worth {usd(worth)})"
    )


@dataclass
class Bill:
    """What calls paid and were served: the totals behind :func:`bill_line`.

    ``paid`` and ``paid_images`` count every billed image (those billed and not delivered
    included); ``served_images`` were found in the store, worth ``served_worth``; ``estimate`` is
    the price model's estimate of the calls made.
    """

    paid: float = 0.0
    paid_images: int = 0
    served_images: int = 0
    served_worth: float = 0.0
    estimate: float = 0.0

    def add(self, other: Bill) -> None:
        """Add ``other``'s totals to these."""
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @classmethod
    def total(cls, bills: Iterable[Bill]) -> Bill:
        """The sum of ``bills``."""
        out = cls()
        for bill in bills:
            out.add(bill)
        return out

    def line(self) -> str:
        """:func:`bill_line` of these totals."""
        return bill_line(self.paid, self.paid_images, self.served_images, self.served_worth)

    def with_estimate(self) -> str:
        """:meth:`line` and the estimate of the calls made: the per-run artifacts' description."""
        return f"{self.line()}; estimated {usd(self.estimate)} for the calls made"
