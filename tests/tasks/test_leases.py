"""Leases of the global concurrency limit (``tasks/concurrency/``), on a real Prefect server:
hand-off between calls of one process, early release, slots held for a batch, a fan-out's first
wave in one lease, cancellation."""

from __future__ import annotations

import asyncio
import contextvars
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from prefect.client.orchestration import get_client

from prefect_gpt_image.calls.concurrency import api_slot, hold_slots, release_idle_leases
from prefect_gpt_image.calls.concurrency.admission import _admissions, admitted, demand, started_together
from prefect_gpt_image.calls.concurrency.limits import _gates, _server_key

pytestmark = pytest.mark.usefixtures("prefect_env")


def _active(name: str) -> int:
    with get_client(sync_client=True) as client:
        return int(client.read_global_concurrency_limit_by_name(name).active_slots)


def _name() -> str:
    return f"gpt-image-lease-test-{uuid.uuid4().hex[:10]}"


_HANG = 60.0
"""Seconds after which a wait that should have ended fails the test (a hang guard, not a goal)."""


async def _until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (the gates' or the calls' own state) on the loop until true; fail after
    ``_HANG`` seconds."""
    deadline = time.monotonic() + _HANG
    while not condition():
        assert time.monotonic() < deadline, "the state waited for never came"
        await asyncio.sleep(0.005)


def _queued(name: str) -> int:
    """Calls of this process waiting at limit ``name``'s gates (admission and API slot)."""
    key = _server_key(name)
    return sum(gate.waiting for gate in (_admissions.get(key), _gates.get(key)) if gate is not None)


async def _stay_until_all_accounted_for(name: str, calls: int, in_or_done: Callable[[], int]) -> None:
    """A holder stays in until every one of ``calls`` is in, done or queued at a gate: none is
    still on its way, so each was either let in or made to wait while this holder was in."""
    await _until(lambda: _queued(name) + in_or_done() == calls)


def test_calls_never_exceed_the_limit_and_leave_no_slot_held() -> None:
    name = _name()
    in_flight = peak = done = 0

    async def call() -> None:
        nonlocal in_flight, peak, done
        async with api_slot(name, 3):
            in_flight += 1
            peak = max(peak, in_flight)
            await _stay_until_all_accounted_for(name, 15, lambda: in_flight + done)
            in_flight -= 1
            done += 1

    async def main() -> None:
        await asyncio.gather(*(call() for _ in range(15)))

    asyncio.run(main())
    assert peak == 3
    assert _active(name) == 0  # the last calls had no one to hand their lease to: released


def test_a_slot_released_early_lets_the_next_call_in() -> None:
    name = _name()
    order: list[str] = []

    async def first(released: asyncio.Event, second_in: asyncio.Event) -> None:
        async with api_slot(name, 1) as slot:
            order.append("first in")
            await slot.release()
            await slot.release()  # a second release does nothing
            released.set()
            # still inside the block (downloading, storing ...) until the second call got in
            await asyncio.wait_for(second_in.wait(), _HANG)
            order.append("first out")

    async def second(released: asyncio.Event, second_in: asyncio.Event) -> None:
        await released.wait()
        async with api_slot(name, 1):
            order.append("second in")
            second_in.set()

    async def main() -> None:
        released, second_in = asyncio.Event(), asyncio.Event()
        await asyncio.gather(first(released, second_in), second(released, second_in))

    asyncio.run(main())
    assert order == ["first in", "second in", "first out"]
    assert _active(name) == 0


def test_hold_slots_keeps_the_lease_between_calls_and_releases_it_at_the_end() -> None:
    name = _name()
    seen: list[int] = []

    async def main() -> None:
        async with hold_slots(name):
            for _ in range(3):
                async with api_slot(name, 2):
                    pass
                seen.append(await asyncio.to_thread(_active, name))
        seen.append(await asyncio.to_thread(_active, name))

    asyncio.run(main())
    assert seen == [1, 1, 1, 0]  # one lease, kept between the calls; none after the batch


def test_an_unused_kept_lease_is_released_soon() -> None:
    name = _name()

    async def main() -> list[int]:
        async with hold_slots(name):
            async with api_slot(name, 2):
                pass
            held = await asyncio.to_thread(_active, name)
            await release_idle_leases()
            return [held, await asyncio.to_thread(_active, name)]

    assert asyncio.run(main()) == [1, 0]


def test_a_cancelled_waiter_leaks_no_slot() -> None:
    name = _name()

    async def main() -> None:
        holder_in, waiter_gone = asyncio.Event(), asyncio.Event()

        async def holder() -> None:
            async with api_slot(name, 1):
                holder_in.set()
                await asyncio.wait_for(waiter_gone.wait(), _HANG)

        task = asyncio.ensure_future(holder())
        await holder_in.wait()
        waiter = asyncio.ensure_future(api_slot(name, 1).__aenter__())
        await _until(lambda: _queued(name) == 1)  # the waiter waits at the gate
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        waiter_gone.set()
        await task
        async with asyncio.timeout(_HANG), api_slot(name, 1):  # the slot is free again
            pass

    asyncio.run(main())
    assert _active(name) == 0


def test_a_missing_limit_is_created_never_ignored() -> None:
    name = _name()

    async def main() -> Any:
        async with api_slot(name, 2):
            return await asyncio.to_thread(_active, name)

    assert asyncio.run(main()) == 1
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(name).limit == 2


def test_prefetched_slots_serve_the_first_calls_and_go_back_together() -> None:
    name = _name()

    async def main() -> list[int]:
        seen: list[int] = []
        async with hold_slots(name, prefetch=3, slots=3):
            for _ in range(50):  # the prefetch runs in the background: one lease of 3 slots
                if await asyncio.to_thread(_active, name) == 3:
                    break
                await asyncio.sleep(0.05)
            seen.append(await asyncio.to_thread(_active, name))
            await asyncio.gather(*(_call(name, 3) for _ in range(6)))
            seen.append(await asyncio.to_thread(_active, name))  # kept for the batch
        seen.append(await asyncio.to_thread(_active, name))
        return seen

    assert asyncio.run(main()) == [3, 3, 0]


def test_a_prefetch_that_does_not_fit_is_skipped() -> None:
    name = _name()

    async def main() -> int:
        async with api_slot(name, 2):  # one of the two slots is busy: a prefetch of 2 cannot fit
            async with hold_slots(name, prefetch=2, slots=2):
                await _call(name, 2)
        return await asyncio.to_thread(_active, name)

    assert asyncio.run(main()) == 0


async def _call(name: str, slots: int) -> None:
    async with api_slot(name, slots):
        await asyncio.sleep(0.02)


async def _fan_out(name: str, slots: int, calls: int, grants: list[Any], peak: list[int]) -> None:
    """``calls`` calls at once, each admitted as an image task's call is, recording the server
    lease each call's slot belongs to and the most in flight."""
    in_flight = [0, 0]  # in, done

    async def call() -> None:
        async with admitted(name, slots), api_slot(name, slots) as slot:
            grants.append(slot._lease.grant if slot._lease is not None else None)
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
            await _stay_until_all_accounted_for(name, calls, lambda: sum(in_flight))
            in_flight[0] -= 1
            in_flight[1] += 1

    await asyncio.gather(*(call() for _ in range(calls)))


def test_a_fan_outs_first_wave_takes_its_slots_in_one_lease_and_gives_it_back_at_once() -> None:
    name = _name()
    grants: list[Any] = []
    peak = [0]
    asyncio.run(_fan_out(name, 4, 12, grants, peak))
    assert peak == [4]
    assert len(grants) == 12
    assert len({id(grant) for grant in grants}) == 1  # one server lease, handed from call to call
    assert grants[0].slots == 4
    assert _active(name) == 0  # the last call gave back the whole lease, not after the idle time


def test_a_first_wave_that_does_not_fit_in_one_lease_takes_a_slot_each() -> None:
    name = _name()
    grants: list[Any] = []
    peak = [0]

    async def main() -> int:
        async with api_slot(name, 3):  # one of the three slots is busy: a lease of 3 cannot fit
            await _fan_out(name, 3, 6, grants, peak)
        return await asyncio.to_thread(_active, name)

    assert asyncio.run(main()) == 0
    assert peak == [2]
    assert len(grants) == 6 and all(grant.slots == 1 for grant in grants)


def test_a_call_started_with_others_counts_them_in_its_demand() -> None:
    key = ("http://example.invalid/api", _name())
    context = contextvars.copy_context()
    started_together(context, 7)
    assert context.run(demand, key) == 7
    assert demand(key) == 1  # a call of its own
