"""Global concurrency and rate limits around paid calls, on a real Prefect server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prefect import flow, task_engine, unmapped
from prefect.client.orchestration import get_client
from prefect.task_runners import ThreadPoolTaskRunner

from prefect_gpt_image.blocks import GptImageCredentials, GptImageSettings, GptImageStorage
from prefect_gpt_image.calls.concurrency.leases import _LeaseService
from prefect_gpt_image.tasks import ImageRef, bounded_task_runner, generate_image, submission
from tests.support.sandbox import ledger

from .conftest import CANARY_KEY

pytestmark = pytest.mark.usefixtures("prefect_env")


def _limit(name: str) -> Any:
    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name)


def _mapped_flow(
    subject: str,
    count: int,
    credentials: GptImageCredentials,
    settings: GptImageSettings,
    storage: GptImageStorage,
    task_runner: Any = None,
) -> Any:
    """A user's sync flow mapping ``generate_image`` over ``count`` prompts about ``subject``."""

    @flow(task_runner=task_runner)
    def mapped() -> list[list[ImageRef]]:
        futures = generate_image.map(
            [f"{subject} number {i}" for i in range(count)],
            credentials=unmapped(credentials),
            settings=unmapped(settings),
            storage=unmapped(storage),
        )
        return [future.result() for future in futures]

    return mapped


def _spy_order(monkeypatch: pytest.MonkeyPatch, limit_name: str) -> list[tuple[str, int]]:
    """What happens first: ("lease", slots) for each lease asked of limit ``limit_name``,
    ("run", 0) for each task run's engine started (map: our submitter's, awaited: Prefect's)."""
    order: list[tuple[str, int]] = []
    grant = _LeaseService._grant

    async def spy_grant(self: _LeaseService, client: Any, name: str, duration: float, slots: int) -> Any:
        if name == limit_name:
            order.append(("lease", slots))
        return await grant(self, client, name, duration, slots)

    def spy_engine(original: Any) -> Any:
        def started(*args: Any, **kwargs: Any) -> Any:
            order.append(("run", 0))
            return original(*args, **kwargs)

        return started

    monkeypatch.setattr(_LeaseService, "_grant", spy_grant)
    monkeypatch.setattr(submission, "run_task_async", spy_engine(submission.run_task_async))
    monkeypatch.setattr(task_engine, "run_task_async", spy_engine(task_engine.run_task_async))
    return order


@pytest.mark.parametrize("style", ["map", "gather"])
def test_a_fan_out_takes_its_first_wave_of_slots_before_its_first_task_run_starts(
    style: str,
    make_sandbox: Any,
    settings: GptImageSettings,
    local_storage: GptImageStorage,
    limit_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first wave's lease is asked for before any task run of the fan-out starts: once they
    have, their writes hold the database of Prefect's ephemeral SQLite server, and the lease
    waited 2-2.5 s (bench/compose.py, the ephemeral case), most of a small fan-out's time."""
    sandbox = make_sandbox(latency=0.2)
    credentials = GptImageCredentials(api_key=CANARY_KEY, base_url=sandbox.base_url)
    order = _spy_order(monkeypatch, limit_name)
    prompts = [f"{style} egret number {i}" for i in range(8)]

    if style == "map":
        assert len(_mapped_flow(f"{style} egret", 8, credentials, settings, local_storage)()) == 8
    else:

        @flow
        async def gathered() -> list[list[ImageRef]]:
            calls = (
                generate_image(p, credentials=credentials, settings=settings, storage=local_storage)
                for p in prompts
            )
            return list(await asyncio.gather(*calls))

        assert len(asyncio.run(gathered())) == 8
    assert ledger(sandbox)["stats"]["billed_images"] == 8
    assert order[0] == ("lease", 4), order[:6]
    assert order.count(("run", 0)) == 8
    assert _limit(limit_name).active_slots == 0


def test_twenty_calls_under_a_missing_limit_of_four(
    make_sandbox: Any, settings: GptImageSettings, local_storage: GptImageStorage, limit_name: str
) -> None:
    """The limit does not exist: it is created (never ignored) and holds calls to 4 in flight."""
    latency = 0.3
    sandbox = make_sandbox(latency=latency)
    credentials = GptImageCredentials(api_key=CANARY_KEY, base_url=sandbox.base_url)

    @flow
    async def batch() -> list[list[ImageRef]]:
        return await asyncio.gather(
            *(
                generate_image(
                    f"fox number {i}", credentials=credentials, settings=settings, storage=local_storage
                )
                for i in range(20)
            )
        )

    results = asyncio.run(batch())
    stats = ledger(sandbox)["stats"]
    assert len(results) == 20 and stats["billed_images"] == 20
    assert 2 <= stats["max_in_flight"] <= 4  # never more than the limit, and really concurrent
    limit = _limit(limit_name)
    assert limit.limit == 4 and limit.active and limit.active_slots == 0
    # How fast slots are handed from call to call (against ceil(N/K)·L) is bench/compose.py's
    # target (asyncio.gather of 200 calls under a limit of 16, <= 1.15 x the bound).


def test_an_existing_limit_keeps_its_value_in_a_sync_flow(
    make_sandbox: Any, settings: GptImageSettings, local_storage: GptImageStorage, limit_name: str
) -> None:
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(limit_name, 2)
    sandbox = make_sandbox(latency=0.2)
    credentials = GptImageCredentials(api_key=CANARY_KEY, base_url=sandbox.base_url)

    batch = _mapped_flow(
        "cat", 8, credentials, settings, local_storage, bounded_task_runner(settings=settings)
    )
    assert len(batch()) == 8
    stats = ledger(sandbox)["stats"]
    assert stats["billed_images"] == 8 and stats["max_in_flight"] <= 2
    assert _limit(limit_name).limit == 2


def test_requests_per_minute_creates_a_decaying_limit(
    sandbox: Any, credentials: GptImageCredentials, settings: GptImageSettings, local_storage: GptImageStorage
) -> None:
    rated = settings.model_copy(update={"requests_per_minute": 120})

    @flow
    async def three() -> list[list[ImageRef]]:
        return [
            await generate_image(f"owl {i}", credentials=credentials, settings=rated, storage=local_storage)
            for i in range(3)
        ]

    assert len(asyncio.run(three())) == 3
    rpm = _limit(rated.rate_limit_name)
    assert rpm.limit == 120 and rpm.slot_decay_per_second == pytest.approx(2.0)


def test_bounded_task_runner_size() -> None:
    def workers(runner: Any) -> int:
        assert isinstance(runner, ThreadPoolTaskRunner)
        return int(runner._max_workers)

    assert workers(bounded_task_runner()) == 8
    assert workers(bounded_task_runner(settings=GptImageSettings(concurrency_limit=10))) == 20
    assert workers(bounded_task_runner(3)) == 3


def test_a_mapped_fan_out_asks_the_server_once_for_its_first_wave(
    make_sandbox: Any,
    settings: GptImageSettings,
    local_storage: GptImageStorage,
    limit_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``.map`` in a sync flow: the first wave's slots come in one lease (one round trip, not one
    per call queued on the server's limit row), handed from call to call, all back at the end."""
    sandbox = make_sandbox(latency=0.2)
    credentials = GptImageCredentials(api_key=CANARY_KEY, base_url=sandbox.base_url)
    order = _spy_order(monkeypatch, limit_name)

    fan_out = _mapped_flow("heron", 10, credentials, settings, local_storage)
    assert len(fan_out()) == 10
    stats = ledger(sandbox)["stats"]
    assert stats["billed_images"] == 10 and stats["max_in_flight"] <= 4
    assert [slots for what, slots in order if what == "lease"] == [4]
    assert _limit(limit_name).active_slots == 0
