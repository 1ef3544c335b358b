"""What the sandbox's routes share: :class:`SandboxState`, the config, ledger, fault injector,
media store and render cache of one server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from .config import FaultConfig, SandboxConfig
from .faults import FaultInjector
from .hold import AnswerHold
from .ledger import Ledger
from .media import MediaStore
from .render import RenderCache, Renderer

__all__ = ["SandboxState"]


class SandboxState:
    """What the routes share: config, ledger, fault injector, media store, render cache and the
    answer hold (result downloads kept waiting while a test chooses its moment).

    ``sleep`` is how every simulated wait (latency, its share between stream events, a ``slow``
    fault) is awaited, ``asyncio.sleep`` by default: a test may set another to see which waits
    the sandbox makes, or to hold one until the test has seen what happens meanwhile.
    """

    def __init__(self, config: SandboxConfig) -> None:
        """Build fresh state for ``config``."""
        self.config = config
        self.ledger = Ledger(config.balance, config.price_per_image, config.token_prices)
        self.faults = FaultInjector(config.faults)
        self.media = MediaStore()
        self.renders = RenderCache(renderer=Renderer(config.render, texture=config.texture))
        self.hold = AnswerHold()
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    def set_faults(self, faults: FaultConfig) -> None:
        """Use new fault probabilities (re-seeded) from now on."""
        self.faults.configure(faults)

    def reset(self) -> None:
        """Clear the ledger, request log, scripted faults and counters (media GET counts too);
        re-seed the faults."""
        self.ledger.reset()
        self.media.reset_counts()
        self.faults.reset()
