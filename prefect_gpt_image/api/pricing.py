"""What an image call costs: the price model of the endpoint the calls go to.

Two endpoints bill gpt-image-2 differently:

- the Crazyrouter gateway (the default base URL) bills a flat price per returned image, whatever
  the size, quality or inputs (contract §7: $0.0377 in its 2026-06 price list);
- OpenAI's own API (``api.openai.com``) bills tokens: text input, image input (the images an edit
  sends) and image output, whose count per image follows the size and quality.

:func:`price_model_for` picks the model from the client's base URL (OpenAI's host: tokens; the
gateway or any other host, such as the sandbox standing in for it: per image). A model gives an
*estimate* of a call before it is made (:meth:`PriceModel.estimate`: what plans and budget caps use)
and the *actual* cost after it was answered (:meth:`PriceModel.actual`): from the answer's
``usage`` when the model bills tokens and the answer carries it, else the model's own figure.

Every model names itself and the date its figures were taken (:attr:`PriceModel.label`,
``id@as_of``); the manifests of the stored images keep that label beside their cost. Prices
change: the settings block can replace the figures (see ``GptImageSettings.price_model``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Literal
from urllib.parse import urlsplit

from .models import EditRequest, ImageRequest, parse_size
from .responses import Usage

__all__ = [
    "GATEWAY_PER_IMAGE",
    "GATEWAY_PRICE_PER_IMAGE",
    "OPENAI_GPT_IMAGE_2",
    "CostSource",
    "PriceModel",
    "TokenRates",
    "price_model_for",
]

CostSource = Literal["usage", "model"]
"""Where an actual cost came from: the answer's token ``usage``, or the price model's figure."""

OPENAI_HOSTS = frozenset({"api.openai.com"})
"""Hosts that bill by tokens as OpenAI's own API does."""

_MILLION = 1_000_000
_SQUARE = "1024x1024"


@dataclass(frozen=True)
class TokenRates:
    """USD per million tokens of text input, image input and image output."""

    text_input: float
    image_input: float
    image_output: float

    def cost(self, *, text_input: int, image_input: int, image_output: int) -> float:
        """USD of those token counts."""
        return (
            text_input * self.text_input + image_input * self.image_input + image_output * self.image_output
        ) / _MILLION


def _frozen(table: Mapping[str, Mapping[str, int]]) -> Mapping[str, Mapping[str, int]]:
    return MappingProxyType({size: MappingProxyType(dict(row)) for size, row in table.items()})


@dataclass(frozen=True)
class PriceModel:
    """The prices of one endpoint: a flat ``per_image`` price, or token ``rates`` with the image
    output tokens per size and quality (``output_tokens``).

    ``id`` and ``as_of`` (the date the figures were taken) name the figures; ``source`` says where
    they come from. For a token model, ``input_image_tokens`` is the estimate of one input image
    of an edit (the answer's ``usage`` gives the real count) and a prompt is estimated at four
    characters per token.
    """

    id: str
    as_of: str
    source: str
    per_image: float | None = None
    rates: TokenRates | None = None
    output_tokens: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    input_image_tokens: int = 0

    def __post_init__(self) -> None:
        if (self.per_image is None) == (self.rates is None):
            raise ValueError("a price model has either per_image or rates, not both or neither")
        if self.rates is not None and _SQUARE not in self.output_tokens:
            raise ValueError(f"a token price model needs the output tokens of {_SQUARE}")
        object.__setattr__(self, "output_tokens", _frozen(self.output_tokens))

    @property
    def label(self) -> str:
        """``id@as_of``: which figures priced a call (kept in each image's manifest)."""
        return f"{self.id}@{self.as_of}"

    @property
    def by_tokens(self) -> bool:
        """Whether this model bills tokens (else a flat price per image)."""
        return self.rates is not None

    def with_figures(
        self,
        *,
        per_image: float | None = None,
        rates: TokenRates | None = None,
    ) -> PriceModel:
        """This model with other figures (a settings override): its id gets ``+settings`` and its
        ``as_of`` becomes ``settings``, so the manifests say the prices were not the published ones."""
        changes: dict[str, object] = {"id": f"{self.id}+settings", "as_of": "settings"}
        if per_image is not None and self.per_image is not None:
            changes["per_image"] = per_image
        if rates is not None and self.rates is not None:
            changes["rates"] = rates
        if len(changes) == 2:
            return self
        return replace(self, **changes)  # type: ignore[arg-type]

    def image_tokens(self, size: str | None, quality: str | None) -> int:
        """Output tokens of one image: the published figure of ``size`` (``auto``: 1024x1024, the
        dearest of the published sizes), other sizes scaled from 1024x1024 by their pixels;
        quality ``auto`` is priced as ``high`` (the model may choose it: an estimate is an upper
        bound)."""
        level = "high" if quality in (None, "auto") else str(quality)
        if level == "hd":
            level = "high"
        key = _SQUARE if size in (None, "auto") else str(size)
        row = self.output_tokens.get(key)
        if row is not None and level in row:
            return row[level]
        width, height = parse_size(key)
        return math.ceil(self.output_tokens[_SQUARE][level] * width * height / 1024**2)

    def estimate(
        self,
        *,
        n: int = 1,
        size: str | None = None,
        quality: str | None = None,
        prompt: str = "",
        input_images: int = 0,
    ) -> float:
        """Estimated USD of a call returning ``n`` images of ``size`` and ``quality`` from
        ``prompt`` and ``input_images`` input images (an edit's)."""
        if self.per_image is not None:
            return n * self.per_image
        assert self.rates is not None
        return self.rates.cost(
            text_input=math.ceil(len(prompt) / 4),
            image_input=input_images * self.input_image_tokens,
            image_output=n * self.image_tokens(size, quality),
        )

    def estimate_request(self, request: ImageRequest) -> float:
        """:meth:`estimate` of a validated request (an edit's input images counted)."""
        return self.estimate(
            n=request.n,
            size=request.size,
            quality=request.quality,
            prompt=request.prompt,
            input_images=len(request.images) if isinstance(request, EditRequest) else 0,
        )

    def actual(self, request: ImageRequest, images: int, usage: Usage | None) -> tuple[float, CostSource]:
        """USD a call answered with ``images`` images was billed, and where the figure came from:
        a token model prices the answer's ``usage`` when it has one; otherwise the model's price
        of ``images`` images (the flat price, or the estimate of that many)."""
        if self.rates is not None and usage is not None and usage.output_tokens is not None:
            details = usage.input_tokens_details or {}
            image_in = int(details.get("image_tokens") or 0)
            text_in = details.get("text_tokens")
            text = int(text_in) if text_in is not None else max(0, (usage.input_tokens or 0) - image_in)
            cost = self.rates.cost(text_input=text, image_input=image_in, image_output=usage.output_tokens)
            return cost, "usage"
        if self.per_image is not None:
            return images * self.per_image, "model"
        return self.estimate_request(request.model_copy(update={"n": images})), "model"


GATEWAY_PRICE_PER_IMAGE = 0.0377
"""USD per returned image in Crazyrouter's 2026-06 price list (contract §7)."""

GATEWAY_PER_IMAGE = PriceModel(
    id="crazyrouter-gpt-image-2",
    as_of="2026-06",
    source="Crazyrouter's price list for gpt-image-2: flat per returned image (contract §7)",
    per_image=GATEWAY_PRICE_PER_IMAGE,
)
"""The gateway's price: $0.0377 per returned image, any size or quality."""

OPENAI_GPT_IMAGE_2 = PriceModel(
    id="openai-gpt-image-2",
    as_of="2026-04-21",
    source=(
        "OpenAI API pricing for gpt-image-2 at its launch (2026-04-21): text input $5, image input "
        "$8, image output $30 per 1M tokens; 1024x1024 output 196/1756/7024 tokens (low/medium/high, "
        "$0.006/$0.053/$0.211 an image); 1024x1536 and 1536x1024 from the published $0.005/$0.041/"
        "$0.165 an image at $30 per 1M; an input image estimated at 1536 tokens (not published)"
    ),
    rates=TokenRates(text_input=5.0, image_input=8.0, image_output=30.0),
    output_tokens={
        "1024x1024": {"low": 196, "medium": 1756, "high": 7024},
        "1024x1536": {"low": 167, "medium": 1367, "high": 5500},
        "1536x1024": {"low": 167, "medium": 1367, "high": 5500},
    },
    input_image_tokens=1536,
)
"""OpenAI's own API: token prices of gpt-image-2 and its output tokens per size and quality."""


def price_model_for(base_url: str) -> PriceModel:
    """The published price model of the endpoint at ``base_url``: OpenAI's token prices on
    OpenAI's host, the gateway's flat price anywhere else (the gateway is the default endpoint;
    the sandbox and other OpenAI-compatible hosts are priced like it unless the settings say
    otherwise)."""
    host = (urlsplit(base_url).hostname or "").lower()
    return OPENAI_GPT_IMAGE_2 if host in OPENAI_HOSTS else GATEWAY_PER_IMAGE
