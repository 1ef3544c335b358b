"""pytest fixtures serving the gpt-image-2 sandbox (registered as the ``gpt_image_sandbox`` plugin).

* ``gpt_image_sandbox``: a fresh server per test; configure it with
  ``@pytest.mark.gpt_image_sandbox(latency=0.1, keys=("sk-a",))``.
* ``gpt_image_sandbox_session``: one server for the whole session (call ``.reset()`` as needed).
* ``gpt_image_sandbox_factory``: ``factory(**overrides)`` starts more servers, all stopped after
  the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .server import SandboxServer

__all__ = [
    "gpt_image_sandbox",
    "gpt_image_sandbox_factory",
    "gpt_image_sandbox_session",
    "pytest_configure",
]


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``gpt_image_sandbox`` marker."""
    config.addinivalue_line(
        "markers",
        "gpt_image_sandbox(**overrides): SandboxConfig fields for the gpt_image_sandbox fixture",
    )


@pytest.fixture
def gpt_image_sandbox(request: pytest.FixtureRequest) -> Iterator[SandboxServer]:
    """A running sandbox for one test, configured by the ``gpt_image_sandbox`` marker."""
    marker = request.node.get_closest_marker("gpt_image_sandbox")
    overrides: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    with SandboxServer(**overrides) as server:
        yield server


@pytest.fixture(scope="session")
def gpt_image_sandbox_session() -> Iterator[SandboxServer]:
    """One running sandbox shared by the whole session (state is kept between tests)."""
    with SandboxServer() as server:
        yield server


@pytest.fixture
def gpt_image_sandbox_factory() -> Iterator[Callable[..., SandboxServer]]:
    """A factory starting sandboxes with field overrides; all are stopped after the test."""
    servers: list[SandboxServer] = []

    def factory(**overrides: Any) -> SandboxServer:
        """Start a sandbox with ``overrides``."""
        server = SandboxServer(**overrides).start()
        servers.append(server)
        return server

    yield factory
    for server in reversed(servers):
        server.stop()
