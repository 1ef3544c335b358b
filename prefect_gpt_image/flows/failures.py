"""What a failed batch says: a few lines, whatever the batch's size.

A batch flow whose rows failed ends ``Failed`` with this message (the UI shows it, and a call
without ``return_state=True`` raises :class:`~prefect_gpt_image.calls.errors.BatchFailedError`
with it): the counts by error type, the first few failed rows (number, id, error, shortened) and
where the full table (and the CSV report) are. The rows themselves stay in the result.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from prefect.runtime import flow_run

__all__ = ["Counted", "FailedRow", "failure_counts", "failure_message"]

ROWS_SHOWN = 5
"""Failed rows the message names; the others are counted."""
ERROR_CHARS = 200
"""Characters of each row's error the message keeps (on one line)."""


@dataclass(frozen=True)
class FailedRow:
    """One failed (or invalid) row, or step of a row, as the message names it."""

    row: int
    id: str | None
    kind: str
    """The error's type, or ``invalid`` for a row refused before any call."""
    error: str | None
    step: str | None = None


@dataclass(frozen=True)
class Counted:
    """What a batch result's repr shows instead of its rows: how many, stored and failed."""

    rows: int
    stored: int
    failed: int
    steps: int | None = None

    def __repr__(self) -> str:
        steps = f" ({self.steps} steps)" if self.steps is not None else ""
        return f"<{self.rows} rows{steps}: {self.stored} stored, {self.failed} failed>"


def failure_counts(failed: Sequence[FailedRow]) -> str:
    """``ModerationError: 2, invalid: 1``: the failures by kind, most common first."""
    return ", ".join(f"{kind}: {count}" for kind, count in Counter(f.kind for f in failed).most_common())


def failure_message(
    headline: str,
    failed: Sequence[FailedRow],
    *,
    artifact: str,
    report: str | None = None,
    what: str = "every row",
) -> str:
    """``headline``, then the first :data:`ROWS_SHOWN` of ``failed`` and where ``what`` is listed:
    ``artifact`` (e.g. ``table artifact 'gpt-image-batch'``) of this flow run, and the CSV
    ``report`` when one was written."""
    lines = [headline]
    for f in failed[:ROWS_SHOWN]:
        name = f"row {f.row}" + (f" (id {_short(f.id, 40)})" if f.id else "")
        name += f", step {f.step}" if f.step else ""
        lines.append(f"  {name}: {f.kind}: {_short(f.error or '', ERROR_CHARS)}")
    if len(failed) > ROWS_SHOWN:
        lines.append(f"  ... and {len(failed) - ROWS_SHOWN} more")
    run = f"flow run {flow_run.name!r}" if flow_run.name else "this flow run"
    url = flow_run.ui_url
    where = f"{what}: the {artifact} of {run}" + (f" ({url})" if url else "")
    lines.append(where + (f"; the CSV report {report}" if report else ""))
    return "\n".join(lines)


def _short(text: str, limit: int) -> str:
    """``text`` on one line, at most ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
