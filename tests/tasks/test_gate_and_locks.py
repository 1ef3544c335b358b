"""The local concurrency gate and the cache-key lock manager, without a Prefect server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from prefect_gpt_image.calls.concurrency import SlotGate
from prefect_gpt_image.calls.locks import ImageLockManager
from tests.support.sandbox import wait_until

_HANG = 30.0
"""Seconds after which a wait that should have ended fails the test (a hang guard, not a goal)."""


def test_gate_bounds_threads_and_serves_all() -> None:
    gate = SlotGate(3)
    inside = 0
    peak = 0
    guard = threading.Lock()
    done: list[int] = []

    def work(i: int) -> None:
        nonlocal inside, peak
        assert gate.acquire()
        with guard:
            inside += 1
            peak = max(peak, inside)
        _all_accounted_for(gate, 12, lambda: inside + len(done))
        with guard:
            inside -= 1
            done.append(i)
        gate.release()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(_HANG)
    assert peak == 3
    assert sorted(done) == list(range(12))
    assert gate.held == 0


def test_gate_works_across_event_loops_in_threads() -> None:
    """Each worker thread runs its own loop (as Prefect's thread pool does with async tasks)."""
    gate = SlotGate(2)
    inside = 0
    peak = 0
    done = 0
    guard = threading.Lock()

    async def one() -> None:
        nonlocal inside, peak, done
        async with gate.slot():
            with guard:
                inside += 1
                peak = max(peak, inside)
            _all_accounted_for(gate, 8, lambda: inside + done)  # blocks only this thread's loop
            with guard:
                inside -= 1
                done += 1

    threads = [threading.Thread(target=asyncio.run, args=(one(),)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(_HANG)
    assert not any(t.is_alive() for t in threads)
    assert (peak, done, gate.held) == (2, 8, 0)


def _all_accounted_for(gate: SlotGate, total: int, in_or_done: Callable[[], int]) -> None:
    """A holder stays in until every one of the ``total`` callers is in, done or queued at the
    gate: none is still on its way, so each was either admitted or made to wait while this
    holder was in (the gate's own state, no sleep standing in for work)."""
    wait_until(lambda: gate.waiting + in_or_done() == total, "every caller admitted or waiting", _HANG)


def test_a_released_slot_goes_to_the_waiter_on_its_own_loop_at_once() -> None:
    """The slot is handed over by ``release()`` itself (the waiter's loop is woken with it
    already granted), not left free for a polling waiter to find later (the speed this buys is
    measured by ``bench/throughput.py`` and ``bench/compose.py``)."""
    gate = SlotGate(1)
    assert gate.acquire()
    entered = threading.Event()

    async def waiter() -> None:
        await gate.acquire_async()
        entered.set()
        gate.release()

    thread = threading.Thread(target=asyncio.run, args=(waiter(),))
    thread.start()
    wait_until(lambda: gate.waiting == 1, "the waiter at the gate", _HANG)
    gate.release()
    assert (gate.held, gate.waiting) == (1, 0)  # granted to the waiter within release()
    assert entered.wait(_HANG)
    thread.join(_HANG)
    assert gate.held == 0


def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    gate = SlotGate(1)

    async def scenario() -> None:
        await gate.acquire_async()
        waiter = asyncio.ensure_future(gate.acquire_async())
        while gate.waiting == 0:  # until the waiter waits at the gate
            await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        gate.release()
        await asyncio.wait_for(gate.acquire_async(), 1.0)  # the slot is free again
        gate.release()

    asyncio.run(scenario())
    assert gate.held == 0


def test_gate_capacity_can_grow() -> None:
    gate = SlotGate(1)
    assert gate.acquire()
    assert not gate.acquire(timeout=0.01)
    gate.set_capacity(2)
    assert gate.acquire(timeout=1.0)
    gate.release()
    gate.release()


def test_lock_is_exclusive_and_extendable(tmp_path: Path) -> None:
    locks = ImageLockManager(tmp_path)
    assert locks.acquire_lock("k", "a", hold_timeout=5)
    assert not locks.acquire_lock("k", "b", acquire_timeout=0.1)
    assert locks.is_lock_holder("k", "a") and not locks.is_lock_holder("k", "b")
    assert locks.acquire_lock("k", "a", acquire_timeout=0, hold_timeout=60)  # extends
    expires = json.loads((tmp_path / "k.lock").read_text())["expires"]
    assert expires > time.time() + 30
    with pytest.raises(ValueError):
        locks.release_lock("k", "b")
    locks.release_lock("k", "a")
    assert not locks.is_locked("k")
    assert locks.acquire_lock("k", "b", acquire_timeout=0)


def test_a_holder_whose_lock_expired_and_was_taken_never_releases_the_new_holders(tmp_path: Path) -> None:
    """``a``'s lock expires (its file says so) and ``b`` takes it: ``a``'s release raises and
    leaves ``b``'s lock in place, even though ``a``'s manager remembers what it wrote."""
    locks = ImageLockManager(tmp_path)
    assert locks.acquire_lock("k", "a", hold_timeout=60)
    path = tmp_path / "k.lock"
    path.write_text(json.dumps({**json.loads(path.read_text()), "expires": time.time() - 1}))
    other = ImageLockManager(tmp_path)
    assert other.acquire_lock("k", "b", acquire_timeout=0)
    with pytest.raises(ValueError, match="not held by a"):
        locks.release_lock("k", "a")
    assert locks.is_lock_holder("k", "b")
    other.release_lock("k", "b")
    assert not locks.is_locked("k") and not any(tmp_path.iterdir())


class _TriedLocks(ImageLockManager):
    """A lock manager that notes when an attempt to take a lock found it held."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.found_held = threading.Event()

    def _try_acquire(self, key: str, holder: str, hold_timeout: float | None) -> bool:
        got = super()._try_acquire(key, holder, hold_timeout)
        if not got:
            self.found_held.set()
        return got


def test_waiter_gets_the_lock_when_released(tmp_path: Path) -> None:
    locks = _TriedLocks(tmp_path)
    assert locks.acquire_lock("k", "a")
    got: list[bool] = []
    waiter = threading.Thread(
        target=lambda: got.append(asyncio.run(locks.aacquire_lock("k", "b", acquire_timeout=_HANG)))
    )
    waiter.start()
    assert locks.found_held.wait(_HANG)  # b tried and found a's lock: it is waiting now
    assert waiter.is_alive() and locks.is_lock_holder("k", "a")
    locks.release_lock("k", "a")
    waiter.join(_HANG)
    assert got == [True] and locks.is_lock_holder("k", "b")


def test_stale_lock_of_a_killed_holder_is_free_and_a_foreign_one_expires(tmp_path: Path) -> None:
    """A holder killed with SIGKILL never releases: its lock is free once its process is gone on
    this machine; a lock taken on another machine (shared folder) waits for its expiry."""
    pid = os.fork()
    if pid == 0:  # the child takes the locks and is killed at once
        child = ImageLockManager(tmp_path)
        child.acquire_lock("k", "victim", hold_timeout=60.0)
        child.acquire_lock("far", "victim", hold_timeout=1.0)
        os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    far = tmp_path / "far.lock"
    far.write_text(json.dumps({**json.loads(far.read_text()), "host": "another-machine"}))
    locks = ImageLockManager(tmp_path)
    assert not locks.is_locked("k")
    assert locks.acquire_lock("k", "next", acquire_timeout=0)
    assert locks.is_locked("far")
    assert not locks.acquire_lock("far", "next", acquire_timeout=0)
    assert locks.acquire_lock("far", "next", acquire_timeout=5)


def test_default_hold_timeout_applies_and_damaged_files_expire(tmp_path: Path) -> None:
    locks = ImageLockManager(tmp_path, default_hold_timeout=0.3)
    assert locks.acquire_lock("k", "a")
    assert locks.acquire_lock("k", "b", acquire_timeout=3)  # a's lock expired after 0.3 s
    (tmp_path / "junk.lock").write_text("not json")
    old = time.time() - 10
    os.utime(tmp_path / "junk.lock", (old, old))
    assert locks.acquire_lock("junk", "c", acquire_timeout=0)


def test_only_one_of_many_racing_holders_gets_the_lock(tmp_path: Path) -> None:
    """Separate manager instances (as in separate processes) racing on one key."""
    barrier = threading.Barrier(8)
    won: list[str] = []

    def race(holder: str) -> None:
        locks = ImageLockManager(tmp_path)
        barrier.wait()
        if locks.acquire_lock("k", holder, acquire_timeout=0):
            won.append(holder)

    threads = [threading.Thread(target=race, args=(f"h{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1, won
