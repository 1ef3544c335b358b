"""Two "machines" (processes with their own PREFECT_HOME, lock folder and spool, sharing only the
Prefect server, the store and, for one of them, a Redis server) get the same 20 new requests at
the same moment. With ``GPT_IMAGE_LOCK_URL`` naming a real Redis server each request is billed
exactly once; with file locks in separate folders the same race pays for requests twice, as the
README says it may: the Redis locks are what prevent it."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from prefect_gpt_image.local_prefect import stop_process
from prefect_gpt_image.local_s3 import LocalS3Server
from tests.support.judge import assert_stored_equals_delivered

from . import crash_batch
from .conftest import CANARY_KEY, fast_settings, s3_storage_block, save_block
from .redis_server import redis_server, require_redis

ROWS = 20
LIMIT = 8
"""The global limit both machines share: both run calls at once."""
LATENCY = 0.3


@pytest.fixture
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


def _machine(root: Path, name: str, lock_url: str | None) -> dict[str, str]:
    """The environment of one machine: its own Prefect home, lock folder and spool."""
    home = root / name
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPT_IMAGE_LOCK")}
    env.update(
        {
            "PREFECT_HOME": str(home / "prefect"),
            "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(home / "prefect" / "storage"),
            "GPT_IMAGE_LOCK_DIR": str(home / "locks"),
            "GPT_IMAGE_SPOOL": str(home / "spool"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    if lock_url is not None:
        env["GPT_IMAGE_LOCK_URL"] = lock_url
    return env


def _race(tmp_path: Path, sandbox: Any, lock_url: str | None, storage: str) -> tuple[Counter[str], list[str]]:
    """Both machines run the same batch at once into ``storage`` (a block on the real S3 server);
    billed requests per prompt, and their logs."""
    settings_block = save_block(fast_settings(concurrency_limit=LIMIT), "rel-machines")
    prompts = [f"machines row {i:02d}: a lantern on a jetty" for i in range(ROWS)]
    prompts_file = tmp_path / "prompts.json"
    prompts_file.write_text(json.dumps(prompts))
    go = tmp_path / "go"
    processes: list[subprocess.Popen[bytes]] = []
    logs = [tmp_path / f"machine-{name}.log" for name in ("a", "b")]
    try:
        for name, log_path in zip(("a", "b"), logs, strict=True):
            env = _machine(tmp_path, name, lock_url)
            processes.append(
                crash_batch.start(prompts_file, storage, settings_block, LIMIT, 120, log_path, go=go, env=env)
            )
        deadline = time.monotonic() + 60
        while not all("ready" in p.read_text(errors="replace") for p in logs):
            assert all(p.poll() is None for p in processes), [p.read_text()[-2000:] for p in logs]
            assert time.monotonic() < deadline, "the machines did not get ready"
            time.sleep(0.05)
        go.touch()
        codes = [p.wait(90) for p in processes]
    finally:
        for process in processes:
            stop_process(process)
    texts = [p.read_text(errors="replace").replace(CANARY_KEY, "***") for p in logs]
    assert codes == [0, 0], texts
    prompt_of = {r["request_id"]: r["fields"]["prompt"] for r in sandbox.ledger.requests}
    billed = Counter(prompt_of[e["request_id"]] for e in sandbox.ledger.entries)
    assert set(billed) == set(prompts)
    return billed, texts


@pytest.fixture
def shared_store(local_s3: LocalS3Server, s3_bucket: str) -> tuple[str, tuple[LocalS3Server, str]]:
    """The store both machines share: a storage block on a bucket of the real S3 server (its
    name for ``storage=``), and the bucket to judge."""
    return "gpt-image-storage/" + save_block(s3_storage_block(local_s3, s3_bucket), "rel-machines"), (
        local_s3,
        s3_bucket,
    )


def test_redis_locks_make_two_machines_pay_once(
    rel_env: Path,
    make_sandbox: Any,
    tmp_path: Path,
    redis_url: str,
    shared_store: tuple[str, tuple[LocalS3Server, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sandbox = make_sandbox(latency=LATENCY)
    monkeypatch.setenv("GPT_IMAGE_API_KEY", CANARY_KEY)
    monkeypatch.setenv("GPT_IMAGE_BASE_URL", sandbox.base_url)
    billed, texts = _race(tmp_path, sandbox, redis_url, shared_store[0])

    assert set(billed.values()) == {1}, billed  # each request billed exactly once, on either machine
    assert sandbox.ledger.stats()["max_in_flight"] >= 2
    # every image delivered is in the bucket, byte for byte, one per row
    assert len(assert_stored_equals_delivered(sandbox, shared_store[1])) == ROWS
    # each machine stored or found every row, and no lock is left on the Redis server
    assert all(f"{ROWS} of {ROWS} rows stored" in text for text in texts), texts
    import redis

    assert redis.Redis.from_url(redis_url).keys("lock:*") == []
    for name in ("a", "b"):
        assert not list((tmp_path / name / "locks").glob("*.lock"))


def test_file_locks_in_separate_folders_pay_twice(
    rel_env: Path,
    make_sandbox: Any,
    tmp_path: Path,
    shared_store: tuple[str, tuple[LocalS3Server, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_redis()  # the counterpart of the Redis test: it shows what that test proves
    sandbox = make_sandbox(latency=LATENCY)
    monkeypatch.setenv("GPT_IMAGE_API_KEY", CANARY_KEY)
    monkeypatch.setenv("GPT_IMAGE_BASE_URL", sandbox.base_url)
    billed, _texts = _race(tmp_path, sandbox, None, shared_store[0])

    twice = [prompt for prompt, count in billed.items() if count == 2]
    assert twice, billed  # the documented double pay: same request, same moment, two machines
    assert set(billed.values()) <= {1, 2}
    assert_stored_equals_delivered(sandbox, shared_store[1])  # paid twice, nothing lost
    print(f"file locks in separate folders: {len(twice)} of {ROWS} requests billed twice")


def test_the_redis_lock_manager_is_chosen_by_configuration_and_releases_async_locks(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from prefect_redis.locking import RedisLockManager

    from prefect_gpt_image.calls.redis_locks import RedisImageLockManager
    from prefect_gpt_image.tasks import get_lock_manager, use_lock_manager

    monkeypatch.setenv("GPT_IMAGE_LOCK_URL", redis_url)
    locks = get_lock_manager()
    assert isinstance(locks, RedisImageLockManager) and get_lock_manager() is locks
    assert redis_url not in repr(locks)

    async def take(holder: str, timeout: float) -> bool:
        return await locks.aacquire_lock("k", holder, acquire_timeout=timeout, hold_timeout=0.5)

    # taken from async code, released from sync code (the plain RedisLockManager leaves it taken)
    assert asyncio.run(take("a", 0))
    assert not asyncio.run(take("b", 0)) and locks.is_lock_holder("k", "a")
    locks.release_lock("k", "a")
    assert not locks.is_locked("k")
    # it expires: a dead holder blocks nobody for ever; releasing an expired lock says so
    assert asyncio.run(take("a", 0)) and asyncio.run(take("b", 2))
    with pytest.raises(ValueError):
        locks.release_lock("k", "a")
    locks.release_lock("k", "b")

    monkeypatch.setenv("GPT_IMAGE_LOCK_URL", "memcached://127.0.0.1:1")
    with pytest.raises(ValueError, match="GPT_IMAGE_LOCK_URL"):
        get_lock_manager()
    # the README's code hook: a plain RedisLockManager is used as the fixed one
    use_lock_manager(RedisLockManager(connection_url=redis_url))
    try:
        assert isinstance(get_lock_manager(), RedisImageLockManager)
    finally:
        use_lock_manager(None)
