"""What a verb tells its user: the images, the cost, failures and plans, as lines for people or
as one JSON document (``--json``), and a progress display while it works.

:func:`cost_line` words the cost with the library's own bill sentence.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Outcome", "cost_line", "progress", "show"]


def cost_line(paid: float, paid_images: int, cached_images: int, cached_worth: float) -> str:
    """The cost of a command, in one line: the library's own bill sentence
    (:func:`prefect_gpt_image.calls.bill_line`), as every run's state message ends."""
    from prefect_gpt_image.calls import bill_line

    return bill_line(paid, paid_images, cached_images, cached_worth)


@dataclass
class Outcome:
    """The result of one command: images (each a dict with ``uri``, ``sha256``, ``request_id``,
    ``cached``...), failures, an optional plan, and the exit code it ends with."""

    command: str
    images: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    plan: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    exit_code: int = 0

    def add_image(self, ref: Any, *, cached: bool, **extra: Any) -> None:
        """Add an ImageRef that was made now (paid) or served from the store (``cached``)."""
        self.images.append(
            {
                "uri": ref.uri,
                "sha256": ref.sha256,
                "width": ref.width,
                "height": ref.height,
                "format": ref.format,
                "request_id": ref.request_id,
                "cost": ref.cost,
                "cached": cached,
                **extra,
            }
        )

    def add_failure(self, what: str, error: str | None, **fields: Any) -> None:
        """Add a failed row or step (``what`` names it for people)."""
        self.failures.append({"what": what, **fields, "error": error})

    def cost(self) -> dict[str, Any]:
        """Paid and served-from-the-store totals (an image listed twice counts once)."""
        seen: dict[str, dict[str, Any]] = {}
        for image in self.images:
            known = seen.get(image["sha256"])
            if known is None or (known["cached"] and not image["cached"]):
                seen[image["sha256"]] = image
        paid = [i for i in seen.values() if not i["cached"]]
        cached = [i for i in seen.values() if i["cached"]]
        totals = {
            "paid": round(sum(i["cost"] for i in paid), 6),
            "paid_images": len(paid),
            "cached_images": len(cached),
            "cached_worth": round(sum(i["cost"] for i in cached), 6),
        }
        return {**totals, "summary": cost_line(**totals)}

    def document(self) -> dict[str, Any]:
        """The ``--json`` document."""
        doc: dict[str, Any] = {
            "command": self.command,
            "ok": self.exit_code == 0,
            "exit_code": self.exit_code,
            "images": self.images,
            "failures": self.failures,
        }
        if self.plan is not None:
            doc["plan"] = self.plan
        else:
            doc["cost"] = self.cost()
        return doc


def show(outcome: Outcome, *, as_json: bool) -> int:
    """Print ``outcome`` (one JSON document on stdout, or lines) and return its exit code."""
    if as_json:
        print(json.dumps(outcome.document(), indent=2))
        return outcome.exit_code
    for image in outcome.images:
        how = "from the store" if image["cached"] else "paid"
        where = f"row {image['row']}: " if "row" in image else ""
        print(
            f"{where}{image['uri']}  {image['width']}x{image['height']}  "
            f"request id {image['request_id'] or '-'}  ({how})"
        )
    for failure in outcome.failures:
        print(f"failed: {failure.get('what', '')}: {failure.get('error', '')}", file=sys.stderr)
    for note in outcome.notes:
        print(note)
    if outcome.plan is not None:
        print(outcome.plan["summary"])
    else:
        print(outcome.cost()["summary"])
    return outcome.exit_code


@contextmanager
def progress(description: str, *, as_json: bool) -> Iterator[None]:
    """While inside: on a terminal a spinner with the elapsed time; otherwise one plain line on
    stderr when it starts and one when it ends; nothing with ``--json``."""
    if as_json:
        yield
        return
    started = time.monotonic()
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        ) as bar:
            bar.add_task(description, total=None)
            yield
        return
    print(f"{description} ...", file=sys.stderr, flush=True)
    try:
        yield
    finally:
        print(f"done in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
