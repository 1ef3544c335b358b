"""A batch verb's progress while its flow runs: rows (or steps) done of the total, the elapsed
time, and what the finished ones paid and were served from the store so far.

The figures are the flow's own: the batch's progress (the one behind its progress artifact,
:func:`prefect_gpt_image.flows.watch_progress`) reports each finished row's charges as it lands,
the same charges the run's bill adds up. On a terminal (stderr) it is a progress bar; otherwise
plain lines on stderr, one every tenth of the batch or every :data:`LINE_SECONDS` at most, and a
final one; with ``--json`` nothing (stdout holds only the JSON document).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect_gpt_image.flows import ProgressReport

__all__ = ["LINE_SECONDS", "batch_progress", "progress_line"]

LINE_SECONDS = 5.0
"""Plain lines: at most this long between two lines while rows finish."""

LINES_PER_BATCH = 10
"""Plain lines: one each time this fraction of the batch more is done."""


def progress_line(command: str, report: ProgressReport, elapsed: float) -> str:
    """One plain progress line: ``batch: 3/10 rows, 4.2 s; paid $0.0330 for 3 images; ...``
    (the library's bill sentence of the finished rows), ``done`` in the final one."""
    done = "done, " if report.final else ""
    return (
        f"{command}: {done}{report.done}/{report.total} {report.unit}, {elapsed:.1f} s; {report.bill.line()}"
    )


@contextmanager
def batch_progress(command: str, *, as_json: bool) -> Iterator[None]:
    """While inside, show the progress of the batch flow this process runs (see the module)."""
    if as_json:
        yield
        return
    from prefect_gpt_image.flows import watch_progress

    display = _Bar(command) if sys.stderr.isatty() else _Lines(command)
    with display.showing(), watch_progress(display.update):
        yield


class _Lines:
    """Plain lines on stderr."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.started = self.last_time = time.monotonic()
        self.last_done = -1
        self.ended = False

    @contextmanager
    def showing(self) -> Iterator[None]:
        print(f"{self.command}: running the flow ...", file=sys.stderr, flush=True)
        try:
            yield
        finally:
            if not self.ended:  # no final report (the run failed first): say when it stopped
                print(f"done in {time.monotonic() - self.started:.1f} s", file=sys.stderr, flush=True)

    def update(self, report: ProgressReport) -> None:
        now = time.monotonic()
        every = max(1, report.total // LINES_PER_BATCH)
        due = report.done - self.last_done >= every or now - self.last_time >= LINE_SECONDS
        if not (report.final or (due and report.done != self.last_done)):
            return
        self.last_done, self.last_time, self.ended = report.done, now, report.final
        print(progress_line(self.command, report, now - self.started), file=sys.stderr, flush=True)


class _Bar:
    """A rich progress bar on stderr: rows done/total, elapsed, paid and served so far. It stays
    on the screen when the batch ends (its last state: N/N and what the batch paid)."""

    def __init__(self, command: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.bar = Progress(
            SpinnerColumn(finished_text="✓"),
            TextColumn("{task.description}"),
            BarColumn(bar_width=16),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[cost]}"),
            console=Console(stderr=True),
        )
        self.task = self.bar.add_task(command, total=None, unit="", cost="starting the flow")

    @contextmanager
    def showing(self) -> Iterator[None]:
        with self.bar:
            yield

    def update(self, report: ProgressReport) -> None:
        from prefect_gpt_image.calls import usd

        bill = report.bill
        fields: dict[str, Any] = {
            "unit": report.unit,
            "cost": f"paid {usd(bill.paid)}, {bill.served_images} from the store",
        }
        self.bar.update(self.task, total=report.total, completed=report.done, **fields)
