"""Shared fixtures: sandboxes on free ports, and an environment that never leaves the machine."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.schedule import SharedStackFileScheduling, longest_first

pytest_plugins = ["tests.support.s3", "tests.support.prefect"]

os.environ["DO_NOT_TRACK"] = "1"
for _name in (
    "GPT_IMAGE_API_KEY",
    "GPT_IMAGE_BASE_URL",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "GPT_IMAGE_STORAGE",
    "GPT_IMAGE_INPUT_ROOTS",
):
    os.environ.pop(_name, None)
# The tests' own servers (the sandbox's media, local image servers) are on loopback, which input
# URLs may not reach by default, and they read inputs from buckets of their own beside the store's:
# the tests opt in, as a user with an internal image server or an inputs bucket would
# (tests/reliability/test_input_policy.py takes the opt-ins away to test the defaults).
os.environ["GPT_IMAGE_ALLOW_PRIVATE_HOSTS"] = "127.0.0.1,::1,localhost"
os.environ["GPT_IMAGE_INPUT_BUCKETS"] = "*"


def pytest_configure(config: pytest.Config) -> None:
    """The test process sends Prefect no client-side events: nothing here reads them, and a test
    server with services turned off can stall their websocket, leaving a queue that Prefect retries
    item by item at interpreter exit, long after the servers are gone. Subprocesses (workers, the
    demo) keep their events.
    """
    from prefect.events.clients import NullEventsClient
    from prefect.events.worker import EventsWorker

    EventsWorker.set_client_override(NullEventsClient)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest test files first (tests/support/schedule.py): under ``-n 2`` neither worker is
    left alone with a minutes-long file at the end."""
    longest_first(items)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadfile`` in the order :func:`pytest_collection_modifyitems` chose, the end-to-end
    stack's files one work unit (tests/support/schedule.py); any other mode is xdist's own."""
    if config.getvalue("dist") == "loadfile":
        return SharedStackFileScheduling(config, log)
    return None


@pytest.fixture
def make_sandbox(gpt_image_sandbox_factory: Callable[..., Any]) -> Callable[..., Any]:
    """A factory of sandbox servers on free ports (the package's pytest plugin), stopped after the test."""
    return gpt_image_sandbox_factory
