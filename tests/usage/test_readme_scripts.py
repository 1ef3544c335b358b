"""The README's examples, run as written in subprocesses against the sandbox, judged by its
ledger and the store (that they are the README's text is checked in ``test_readme.py``)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from tests.support.judge import assert_stored_equals_delivered

from .conftest import Usage


def _billed(sandbox: Any) -> Counter[str]:
    billed: Counter[str] = Counter()
    for entry in sandbox.ledger.entries:
        billed[entry["endpoint"].rsplit("/", 1)[-1]] += entry["n"]
    return billed


def test_readme_sync_flow(usage: Usage) -> None:
    run = usage.run("readme_sync_flow.py")
    assert run.returncode == 0, run.tail()
    # generate 1 + edit 1 + blend 1 + 3 mapped prompts; each stored once
    assert _billed(usage.sandbox) == {"generations": 4, "edits": 2}, run.tail()
    assert len(assert_stored_equals_delivered(usage.sandbox, usage.storage)) == 6  # bytes hashed
    again = usage.run("readme_sync_flow.py")  # a new process: everything from the store
    assert again.returncode == 0, again.tail()
    assert usage.sandbox.ledger.billed_images == 6 and "Cached" in again.stdout + again.stderr


def test_readme_async_flow(usage: Usage) -> None:
    run = usage.run("readme_async_flow.py")
    assert run.returncode == 0, run.tail()
    assert _billed(usage.sandbox) == {"generations": 2}
    assert len(assert_stored_equals_delivered(usage.sandbox, usage.storage)) == 2  # bytes hashed


def test_readme_flows_from_a_script(usage: Usage) -> None:
    run = usage.run("readme_flows.py")
    assert run.returncode == 0, run.tail()
    # the pipeline's generate and edit (a mask from the dict region), then a batch of 3
    assert _billed(usage.sandbox) == {"generations": 4, "edits": 1}, run.tail()
    edit = next(r for r in usage.sandbox.ledger.requests if r["endpoint"].endswith("/edits"))
    assert [f["field"] for f in edit["files"]] == ["image[]", "mask"]
    assert "3 of 3 rows stored" in run.stdout


def test_readme_client(usage: Usage) -> None:
    run = usage.run("readme_client.py")
    assert run.returncode == 0, run.tail()
    assert _billed(usage.sandbox) == {"generations": 2, "edits": 1}
    assert len([line for line in run.stdout.splitlines() if "1536 1024 png" in line]) == 3
