"""What a test does when a part it needs is not installed here: it is skipped on a developer's
machine and FAILS in CI (``CI=true``, as ``.ci/run`` sets), so CI never passes by skipping."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

__all__ = ["in_ci", "missing"]


def in_ci() -> bool:
    """Whether this is a CI run: ``CI`` is ``true`` (or ``1``/``yes``)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing(message: str) -> NoReturn:
    """Skip the test for a missing part (``message`` says what and how to get it); fail under CI."""
    if in_ci():
        pytest.fail(f"{message} -- CI (CI=true) must install it: nothing is skipped in CI")
    pytest.skip(message)
