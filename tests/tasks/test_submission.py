"""The cancel event of a run submitted onto the shared loop (``tasks/submission.py``), set by
Prefect's own task runner as a flow run ends: a normal end lets the run start (the flow waits for
it), an end by an exception (SIGTERM, Ctrl-C, a crash) cancels it before it starts."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest
from prefect.task_runners import ThreadPoolTaskRunner

from prefect_gpt_image.tasks.submission import _CancelEvent


@contextmanager
def _flow_run_context(events: list[_CancelEvent]) -> Iterator[None]:
    """The task runner entered as Prefect's flow engine enters it (an ExitStack in a generator),
    with ``events`` registered as submitted runs' cancel events."""
    with ExitStack() as stack:
        runner = stack.enter_context(ThreadPoolTaskRunner().duplicate())
        for event in events:
            runner._cancel_events[uuid.uuid4()] = event
        yield


def test_a_flow_run_that_ends_normally_leaves_its_submitted_runs_to_start() -> None:
    events = [_CancelEvent(), _CancelEvent()]
    with _flow_run_context(events):
        pass
    assert not any(event.is_set() for event in events)


@pytest.mark.parametrize("stop", [KeyboardInterrupt, RuntimeError])
def test_a_flow_run_stopped_by_an_exception_cancels_its_submitted_runs(stop: type[BaseException]) -> None:
    events = [_CancelEvent(), _CancelEvent()]
    with pytest.raises(stop), _flow_run_context(events):
        raise stop()
    assert all(event.is_set() for event in events)
