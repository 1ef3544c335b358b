"""Choosing the fault (if any) each image request gets: scripted first, then seeded chance."""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Iterable

from .config import (
    FAULT_KINDS,
    NO_FAULT,
    STREAM_FAULTS,
    FaultConfig,
    check_fault_kind,
    is_media_fault,
    split_target,
)

__all__ = ["FaultInjector", "applies", "image_fault"]


def applies(kind: str, *, stream: bool) -> bool:
    """Whether ``kind`` can happen to a request (the ``stream_*`` kinds need ``stream=true``)."""
    return stream or kind not in STREAM_FAULTS


def image_fault(kind: str | None, index: int) -> str | None:
    """The media fault the result URL of image ``index`` of an answer gets from its request's
    fault ``kind``: a media fault hits every image's URL, ``KIND@I`` only image ``I``'s (so an
    answer of ``n`` images can lose one while the others arrive); None for any other kind."""
    if kind is None or not is_media_fault(kind):
        return None
    base, target = split_target(kind)
    return base if target is None or target == index else None


class FaultInjector:
    """Hands out faults, thread-safe: queued (scripted) kinds first, in order, then random ones.

    One ``random.Random(seed)`` draw per request that reaches the fault stage keeps runs
    reproducible. A scripted kind that cannot apply to the request it lands on (a ``stream_*``
    kind on a non-stream request) is used up without effect.
    """

    def __init__(self, config: FaultConfig | None = None) -> None:
        """Start with ``config`` (no faults by default) and an empty script."""
        self._lock = threading.Lock()
        self._config = config or FaultConfig()
        self._rng = random.Random(self._config.seed)
        self._script: deque[str] = deque()

    @property
    def config(self) -> FaultConfig:
        """The probabilities and seed in use."""
        with self._lock:
            return self._config

    @property
    def script(self) -> list[str]:
        """The scripted kinds still queued."""
        with self._lock:
            return list(self._script)

    def configure(self, config: FaultConfig) -> None:
        """Use new probabilities and re-seed the random generator."""
        with self._lock:
            self._config = config
            self._rng = random.Random(config.seed)

    def add_script(self, kinds: Iterable[str]) -> list[str]:
        """Queue kinds (``"none"`` = no fault) for the next image requests; returns the queue."""
        checked = [check_fault_kind(str(kind), allow_none=True) for kind in kinds]
        with self._lock:
            self._script.extend(checked)
            return list(self._script)

    def reset(self) -> None:
        """Clear the script and re-seed the random generator."""
        with self._lock:
            self._script.clear()
            self._rng = random.Random(self._config.seed)

    def draw(self, *, stream: bool) -> str | None:
        """The fault for the next image request, or None."""
        with self._lock:
            if self._script:
                kind = self._script.popleft()
                if kind == NO_FAULT or not applies(kind, stream=stream):
                    return None
                return kind
            probs = self._config.probabilities
            if not any(probs.values()):
                return None
            point = self._rng.random()
        total = 0.0
        # The fixed kinds in their fixed order, then parametrised ones (media_flaky:...) sorted.
        for kind in (*FAULT_KINDS, *sorted(set(probs) - set(FAULT_KINDS))):
            prob = probs.get(kind, 0.0)
            if prob <= 0.0 or not applies(kind, stream=stream):
                continue
            total += prob
            if point < total:
                return kind
        return None
