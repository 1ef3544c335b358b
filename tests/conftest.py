"""Shared fixtures: sandboxes on free ports, and an environment that never leaves the machine."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

pytest_plugins = ["tests.support.s3", "tests.support.prefect"]

os.environ["DO_NOT_TRACK"] = "1"
for _name in (
    "GPT_IMAGE_API_KEY",
    "GPT_IMAGE_BASE_URL",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "GPT_IMAGE_STORAGE",
):
    os.environ.pop(_name, None)


@pytest.fixture
def make_sandbox(gpt_image_sandbox_factory: Callable[..., Any]) -> Callable[..., Any]:
    """A factory of sandbox servers on free ports (the package's pytest plugin), stopped after the test."""
    return gpt_image_sandbox_factory
