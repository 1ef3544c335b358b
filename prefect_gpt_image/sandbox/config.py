"""Settings of the offline gpt-image-2 sandbox: server behaviour and fault injection.

Both are plain frozen dataclasses so a test can build one in a line and the CLI can map flags to
fields one to one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

__all__ = [
    "CONTRACT_PRICE_PER_IMAGE",
    "FAULT_KINDS",
    "MEDIA_FAULTS",
    "MEDIA_FLAKY",
    "MEDIA_FLAKY_MODES",
    "NO_FAULT",
    "STATUS_FAULTS",
    "STREAM_FAULTS",
    "FaultConfig",
    "MediaFlake",
    "RenderMode",
    "ResultMode",
    "SandboxConfig",
    "check_fault_kind",
    "is_media_fault",
    "media_flake",
    "split_target",
]

CONTRACT_PRICE_PER_IMAGE = 0.0377
"""USD the gateway bills per returned image, flat (contract §7). The sandbox keeps its own copy
on purpose: it is the judge of what a run cost, so it must not read the plugin's setting."""

STATUS_FAULTS: tuple[str, ...] = ("429", "500", "502", "503")
"""Faults answered at once with that HTTP status and an error envelope (never billed)."""
STREAM_FAULTS: tuple[str, ...] = ("stream_error", "stream_truncate")
"""Faults that only apply to ``stream=true`` requests."""
MEDIA_FAULTS: tuple[str, ...] = (
    "media_404",
    "media_fail_once",
    "media_redirect_offhost",
    "media_not_image",
    "media_truncated",
)
"""Faults of the result URL's download (the response itself then carries URLs)."""
MEDIA_FLAKY = "media_flaky"
"""Prefix of the parametrised media fault ``media_flaky:MODE:N``: the result URL's first ``N``
GETs fail with ``MODE`` (see :data:`MEDIA_FLAKY_MODES`), later ones serve the image, like a CDN
that has not caught up yet. ``media_fail_once`` is ``media_flaky:503:1``."""
MEDIA_FLAKY_MODES: tuple[str, ...] = ("404", "403", "503", "reset", "truncated")
"""How a flaky media GET fails: that HTTP status with an error body; ``reset``: the connection
closes right after the headers; ``truncated``: it closes after half the announced body."""
FAULT_KINDS: tuple[str, ...] = (
    *STATUS_FAULTS,
    "drop",
    "slow",
    *STREAM_FAULTS,
    "malformed_json",
    "url_offhost",
    "url_private",
    *MEDIA_FAULTS,
)
"""Every fault kind, in the fixed order used when drawing one at random."""
NO_FAULT = "none"
"""A scripted entry that means: serve this request normally."""

ResultMode = Literal["url", "b64_json"]
RenderMode = Literal["draw", "template"]


@dataclass(frozen=True)
class MediaFlake:
    """A result URL that fails its first ``times`` GETs with ``mode``, then serves the image."""

    mode: str
    times: int


def media_flake(kind: str | None) -> MediaFlake | None:
    """The fail-then-work behaviour a fault kind gives its result URL, or None.

    ``media_flaky:MODE:N`` (``N`` defaults to 1) and ``media_fail_once`` (= ``media_flaky:503:1``);
    a malformed ``media_flaky`` kind raises ValueError.
    """
    if kind == "media_fail_once":
        return MediaFlake("503", 1)
    if kind is None or not (kind == MEDIA_FLAKY or kind.startswith(MEDIA_FLAKY + ":")):
        return None
    _, _, rest = kind.partition(":")
    mode, _, times = rest.partition(":")
    if mode not in MEDIA_FLAKY_MODES:
        raise ValueError(
            f"fault {kind!r}: expected {MEDIA_FLAKY}:MODE:N with MODE one of {', '.join(MEDIA_FLAKY_MODES)}"
        )
    if times and not times.isdigit():
        raise ValueError(f"fault {kind!r}: the number of failures must be a whole number")
    return MediaFlake(mode, int(times) if times else 1)


def is_media_fault(kind: str | None) -> bool:
    """Whether ``kind`` is a fault of the result URL's download (the answer then carries URLs),
    aimed at every image of the answer or at one (``KIND@I``, see :func:`split_target`)."""
    base = split_target(kind)[0] if kind is not None else None
    return base in MEDIA_FAULTS or media_flake(base) is not None


IMAGE_TARGET = "@"
"""``KIND@I`` aims a media fault at image ``I`` (0-based) of the answer alone; a media fault
without it hits the result URL of every image of the answer."""


def split_target(kind: str) -> tuple[str, int | None]:
    """``(KIND, I)`` of ``KIND@I``, ``(kind, None)`` of a kind aimed at no image in particular;
    ValueError when ``I`` is no whole number."""
    base, sep, index = kind.rpartition(IMAGE_TARGET)
    if not sep:
        return kind, None
    if not index.isdigit():
        raise ValueError(f"fault {kind!r}: expected KIND{IMAGE_TARGET}I with I the image's 0-based index")
    return base, int(index)


def check_fault_kind(kind: str, *, allow_none: bool = False) -> str:
    """Return ``kind`` if it names a fault (or ``"none"`` when allowed), else raise ValueError.
    A media fault may be aimed at one image of the answer (``KIND@I``); no other kind may."""
    base, target = split_target(kind)
    if target is not None:
        if not is_media_fault(base):
            raise ValueError(f"fault {kind!r}: only a media fault may aim at one image ({IMAGE_TARGET}I)")
        return kind
    if kind in FAULT_KINDS or (allow_none and kind == NO_FAULT) or media_flake(kind) is not None:
        return kind
    raise ValueError(
        f"unknown fault kind {kind!r}; expected one of {', '.join(FAULT_KINDS)} or {MEDIA_FLAKY}:MODE:N"
    )


@dataclass(frozen=True)
class FaultConfig:
    """Random fault injection: each image request gets at most one fault.

    ``probabilities`` maps fault kinds (see :data:`FAULT_KINDS`, and ``media_flaky:MODE:N``) to
    the chance that a request gets that fault; their sum must not exceed 1. Draws come from one
    ``random.Random(seed)``, so the same sequence of requests gets the same faults. A kind is only
    drawn for requests it can apply to (the ``stream_*`` kinds only for streams).
    """

    probabilities: Mapping[str, float] = field(default_factory=dict)
    seed: int | None = None

    def __post_init__(self) -> None:
        """Check and normalize the fields."""
        probs: dict[str, float] = {}
        for kind, prob in dict(self.probabilities).items():
            check_fault_kind(kind)
            value = float(prob)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"probability of {kind!r} must be within 0..1, not {prob!r}")
            probs[kind] = value
        if sum(probs.values()) > 1.0 + 1e-9:
            raise ValueError("fault probabilities must add up to at most 1")
        object.__setattr__(self, "probabilities", MappingProxyType(probs))

    @classmethod
    def parse(cls, specs: Iterable[str], seed: int | None = None) -> FaultConfig:
        """Build from ``KIND=PROB`` strings, as given to the CLI's ``--fault`` flag."""
        probs: dict[str, float] = {}
        for spec in specs:
            kind, sep, prob = spec.partition("=")
            if not sep:
                raise ValueError(f"expected KIND=PROBABILITY, got {spec!r}")
            try:
                probs[kind.strip()] = float(prob)
            except ValueError:
                raise ValueError(f"probability in {spec!r} is not a number") from None
        return cls(probabilities=probs, seed=seed)

    def to_json(self) -> dict[str, object]:
        """A JSON-ready copy, for the control endpoints."""
        return {"probabilities": dict(self.probabilities), "seed": self.seed}


@dataclass(frozen=True)
class SandboxConfig:
    """How the sandbox server behaves; every field has a default and a CLI flag.

    ``latency`` is the simulated generation time per image request; ``max_concurrency`` caps
    image requests in flight (more get 429); ``keys`` empty accepts any bearer key; ``balance``
    is the number of images that may be billed before 403 ``insufficient_user_quota``;
    ``public_url`` (e.g. ``http://localhost:8000``) overrides the scheme and host of result URLs,
    which otherwise follow the request's ``Host`` header. ``render="template"`` serves copies of
    one pre-rendered image per size and format, each made unique by a metadata chunk (cheap
    enough that a benchmark measures the client, not the sandbox); ``texture`` adds grain so
    files are about as large as real results. ``price_per_image`` is what the ledger charges
    per billed image (USD; the contract's price by default), like the gateway. ``token_prices``
    (USD per million text input, image input and image output tokens) makes it bill like OpenAI's
    own API instead: each request is charged by the ``usage`` its answer carries.
    """

    host: str = "127.0.0.1"
    port: int = 0
    latency: float = 0.0
    max_concurrency: int | None = None
    result_mode: ResultMode = "url"
    keys: tuple[str, ...] = ()
    media_ttl: float = 3600.0
    balance: int | None = None
    max_body_bytes: int = 64 * 1024 * 1024
    moderation_trigger: str = "[sandbox:block]"
    retry_after: float | None = None
    stream_done: bool = True
    stream_completed_url: bool = False
    slow_seconds: float = 5.0
    public_url: str | None = None
    render: RenderMode = "draw"
    texture: bool = False
    price_per_image: float = CONTRACT_PRICE_PER_IMAGE
    token_prices: tuple[float, float, float] | None = None
    faults: FaultConfig = field(default_factory=FaultConfig)

    def __post_init__(self) -> None:
        """Check and normalize the fields."""
        object.__setattr__(self, "keys", tuple(self.keys))
        if self.result_mode not in ("url", "b64_json"):
            raise ValueError(f"result_mode must be 'url' or 'b64_json', not {self.result_mode!r}")
        for name in ("latency", "media_ttl", "slow_seconds", "price_per_image"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.token_prices is not None:
            prices = tuple(float(p) for p in self.token_prices)
            if len(prices) != 3 or any(p < 0 for p in prices):
                raise ValueError("token_prices must be three non-negative USD per million tokens")
            object.__setattr__(self, "token_prices", prices)
        if self.render not in ("draw", "template"):
            raise ValueError(f"render must be 'draw' or 'template', not {self.render!r}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1 (or None for no limit)")
        if self.balance is not None and self.balance < 0:
            raise ValueError("balance must not be negative")
        if self.max_body_bytes < 1:
            raise ValueError("max_body_bytes must be positive")
        if self.retry_after is not None and self.retry_after < 0:
            raise ValueError("retry_after must not be negative")
        if not (0 <= self.port <= 65535):
            raise ValueError("port must be within 0..65535")
        if not isinstance(self.faults, FaultConfig):
            raise TypeError("faults must be a FaultConfig")
