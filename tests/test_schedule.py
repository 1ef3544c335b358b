"""``make test``'s scheduling (tests/support/schedule.py): under ``-n 2 --dist loadfile`` the
end-to-end stack's files go to one worker as one work unit (one stack a run), and the longest
files are handed out first, each whole. Checked on xdist's own scheduler, with two stand-in
workers that record the tests they are sent."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from tests.support.schedule import LONGEST_FIRST, SHARED_STACK, SharedStackFileScheduling, longest_first

_SHORT = ("tests/api/test_errors.py", "tests/test_encoding.py")


class _Worker:
    """What xdist's scheduler calls on a worker: the tests sent to it, in order."""

    def __init__(self, name: str) -> None:
        self.gateway = SimpleNamespace(id=name)
        self.shutting_down = False
        self.sent: list[int] = []

    def send_runtest_some(self, indices: list[int]) -> None:
        self.sent.extend(indices)

    def shutdown(self) -> None:
        self.shutting_down = True


def _config() -> Any:
    """The parts of a pytest config the scheduler reads: two workers, xdist's default reordering."""
    values = {"tx": ["2*popen"]}
    return SimpleNamespace(option=SimpleNamespace(loadscopereorder=True), getvalue=values.__getitem__)


def _collection() -> list[str]:
    """Node ids as the workers collect them after ``longest_first``: the listed files first (two
    tests each), then short files with many tests (which xdist would hand out first)."""
    ids = [f"{path}::test_{i}" for path in LONGEST_FIRST for i in range(2)]
    return ids + [f"{path}::test_{i}" for path in _SHORT for i in range(40)]


def _run(scheduler: SharedStackFileScheduling, workers: list[_Worker], ids: list[str]) -> list[list[str]]:
    """Schedule, then let each worker finish its tests in turn until none is left; the node ids
    each worker ran, in order."""
    for worker in workers:
        scheduler.add_node(worker)
        scheduler.add_node_collection(worker, ids)
    scheduler.schedule()
    done = [0] * len(workers)
    while any(done[i] < len(w.sent) for i, w in enumerate(workers)):
        for i, worker in enumerate(workers):
            if done[i] < len(worker.sent):
                scheduler.mark_test_complete(worker, worker.sent[done[i]])
                done[i] += 1
    return [[ids[index] for index in worker.sent] for worker in workers]


def test_the_shared_stack_files_run_on_one_worker_and_the_longest_files_first() -> None:
    ids = _collection()
    workers = [_Worker("gw0"), _Worker("gw1")]
    ran = _run(SharedStackFileScheduling(_config()), workers, ids)

    assert sorted(i for w in ran for i in w) == sorted(ids)  # every test, once
    files = [[nodeid.split("::")[0] for nodeid in w] for w in ran]
    stack = [w for w in files if set(SHARED_STACK) & set(w)]
    assert len(stack) == 1, files  # one worker builds the stack
    on_it = [path for path in stack[0] if path in SHARED_STACK]
    assert on_it == sorted(on_it) and set(on_it) == set(SHARED_STACK)  # collection order
    run = stack[0]
    first, last = run.index(SHARED_STACK[0]), len(run) - 1 - run[::-1].index(SHARED_STACK[-1])
    assert set(run[first : last + 1]) == set(SHARED_STACK)  # one after the other, nothing between
    # each worker starts with a long file, and the short files (most tests) come last
    assert {w[0] for w in files} <= set(LONGEST_FIRST), [w[0] for w in files]
    for w in files:
        short = [k for k, path in enumerate(w) if path in _SHORT]
        assert not short or min(short) > max(k for k, path in enumerate(w) if path in LONGEST_FIRST)


def test_longest_first_moves_the_listed_files_ahead_keeping_each_files_order() -> None:
    ids = [f"{path}::test_{i}" for path in (*_SHORT, *reversed(LONGEST_FIRST)) for i in range(3)]
    items: list[Any] = [SimpleNamespace(nodeid=nodeid) for nodeid in ids]
    longest_first(items)
    assert [item.nodeid for item in items] == [
        *(f"{path}::test_{i}" for path in LONGEST_FIRST for i in range(3)),
        *(f"{path}::test_{i}" for path in _SHORT for i in range(3)),
    ]
