"""How ``pytest -n 2 --dist loadfile`` (``make test``) hands the test files to its two workers.

The suite's time is the slower worker's: it waits on servers and subprocesses far more than it
computes, and a few files take minutes each. Two changes to xdist's ``loadfile`` scheduling:

* **Longest first.** xdist orders the files by their number of tests, most first, which puts the
  few-test, minutes-long files (the demo, the end-to-end stack, the CLI) last, where one worker
  runs them while the other idles. :data:`LONGEST_FIRST` lists the files measured longest, in
  that order; they are handed out first, and every other file after them in collection order,
  the short ones filling the gaps at the end (the longest-processing-time-first rule).
* **One end-to-end stack.** The files of :data:`SHARED_STACK` share the ``tests/e2e`` package
  fixtures (``e2e_stack``: a Prefect server with its UI, blocks, deployments and a worker;
  ``e2e_runs``). As separate work units they went to both workers, or to one with other files in
  between, and pytest built the stack again each time (2 to 3 stacks a run, minutes each): they
  are one work unit here, so each run builds it once.

A file missing from :data:`LONGEST_FIRST` still runs (in collection order); only the balance
suffers. Without ``-n`` nothing changes but the order of the files.
"""

from __future__ import annotations

from typing import Any

import pytest
from xdist.scheduler import LoadFileScheduling

__all__ = ["LONGEST_FIRST", "SHARED_STACK", "SharedStackFileScheduling", "longest_first"]

SHARED_STACK: tuple[str, ...] = (
    "tests/e2e/test_blocks_script.py",
    "tests/e2e/test_deployments.py",
    "tests/e2e/test_ui.py",
)
"""The test files that use the ``tests/e2e`` package's ``e2e_stack``: one work unit, run in
collection order (as they would be on one worker without this)."""

LONGEST_FIRST: tuple[str, ...] = (
    *SHARED_STACK,
    "tests/usage/test_scripts.py",
    "tests/test_demo.py",
    "tests/reliability/test_faults.py",
    "tests/cli/test_batches.py",
    "tests/e2e/test_deployments_doc.py",
    "tests/usage/test_docs_scripts.py",
    "tests/cli/test_errors.py",
    "tests/reliability/test_prefect_outage.py",
    "tests/reliability/test_orchestrator_faults.py",
    "tests/cli/test_single.py",
    "tests/test_local_prefect.py",
    "tests/reliability/test_redis_locks.py",
    "tests/usage/test_readme_scripts.py",
    "tests/reliability/test_scale_out.py",
    "tests/flows/test_bill.py",
    "tests/tasks/test_images.py",
    "tests/reliability/test_crash.py",
    "tests/reliability/test_storage_outage.py",
    "tests/reliability/test_input_policy.py",
    "tests/flows/test_cost.py",
    "tests/flows/test_plan.py",
    "tests/flows/test_storage_errors.py",
    "tests/e2e/test_review_served.py",
    "tests/flows/test_review.py",
    "tests/reliability/test_bad_input.py",
    "tests/reliability/test_interrupt.py",
)
"""The test files that took over 35 s (sums of their tests' setup, call and teardown, measured
under ``-n 2``), longest first; the others take 0.1 to 35 s."""


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def longest_first(items: list[pytest.Item]) -> None:
    """Reorder ``items`` in place: the files of :data:`LONGEST_FIRST` first, in its order, then the
    others in collection order (each file's tests keep their order)."""
    rank = {path: index for index, path in enumerate(LONGEST_FIRST)}
    last = len(rank)
    items.sort(key=lambda item: rank.get(_file_of(item.nodeid), last))


class SharedStackFileScheduling(LoadFileScheduling):
    """``--dist loadfile`` with the files of :data:`SHARED_STACK` as one work unit, and the work
    units in collection order (as :func:`longest_first` left it), not by their number of tests."""

    def __init__(self, config: pytest.Config, log: Any = None) -> None:
        """The scheduler xdist's ``loadfile`` makes, told to keep the collection's order."""
        config.option.loadscopereorder = False
        super().__init__(config, log)

    def _split_scope(self, nodeid: str) -> str:
        path = _file_of(nodeid)
        return SHARED_STACK[0] if path in SHARED_STACK else path
