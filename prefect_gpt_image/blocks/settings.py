"""The settings block: model defaults and the policy (timeouts, retries, concurrency, rate,
budget, price) that deployments share."""

from __future__ import annotations

from typing import Any, Literal, Self

from prefect.blocks.core import Block
from pydantic import Field, field_validator, model_validator

from prefect_gpt_image.api import ClientConfig, RetryPolicy, Timeouts
from prefect_gpt_image.api.config import DEFAULT_MEDIA_HOSTS
from prefect_gpt_image.api.inputpolicy import InputPolicy
from prefect_gpt_image.api.models import (
    DEFAULT_MODEL,
    Background,
    Moderation,
    OutputFormat,
    Quality,
    parse_size,
)
from prefect_gpt_image.api.pricing import (
    GATEWAY_PER_IMAGE,
    GATEWAY_PRICE_PER_IMAGE,
    OPENAI_GPT_IMAGE_2,
    PriceModel,
    TokenRates,
    price_model_for,
)

from ._meta import DOCUMENTATION_URL, LOGO_URL

__all__ = ["DEFAULT_PRICE_PER_IMAGE", "GptImageSettings"]

DEFAULT_PRICE_PER_IMAGE = GATEWAY_PRICE_PER_IMAGE
"""USD per returned image in Crazyrouter's 2026-06 price list (contract §7); prices change."""


class GptImageSettings(Block):
    """Model defaults and policy for gpt-image-2 calls, shared by flows and deployments.

    Request defaults (``model``, ``size``, ``quality``, ``output_format``, ``background``, ...)
    apply when a task does not pass its own value. The policy fields bound what a run may do:
    HTTP timeouts, the client's retry policy, the Prefect global concurrency limit every paid
    call holds a slot of (``concurrency_limit_name``, created with ``concurrency_limit`` slots when
    missing; an existing limit keeps its own value), an optional requests-per-minute limit, and a
    per-flow-run budget in images and in estimated cost (the price model's estimate of each call,
    see :meth:`prices`).

    Example:
        Shared policy for every deployment::

            from prefect_gpt_image.blocks import GptImageSettings

            GptImageSettings(quality="high", concurrency_limit=8, max_cost_per_run=5.0).save("prod")

            settings = GptImageSettings.load("prod")
            refs = await generate_image("a red fox", settings=settings)
    """

    _block_type_name = "GPT Image Settings"
    _logo_url = LOGO_URL  # type: ignore[assignment]
    _documentation_url = DOCUMENTATION_URL  # type: ignore[assignment]
    _description = (
        "Defaults and policy for gpt-image-2 calls: model, size, quality, timeouts, retries, "
        "concurrency and rate limits, price and per-run budget."
    )

    # -- request defaults ------------------------------------------------------------------------
    model: str = Field(default=DEFAULT_MODEL, min_length=1, description="The model name.")
    size: str = Field(
        default="1024x1024",
        description="'auto' or WIDTHxHEIGHT (multiples of 16, at most 3840 a side), e.g. 1536x1024.",
        examples=["1024x1024", "1536x1024", "1024x1536", "auto"],
    )
    quality: Quality = Field(default="auto", description="auto, low, medium or high.")
    output_format: OutputFormat = Field(default="png", description="File type of the results.")
    background: Background = Field(default="auto", description="auto or opaque.")
    output_compression: int | None = Field(
        default=None, ge=0, le=100, description="0..100, only with jpeg or webp."
    )
    moderation: Moderation | None = Field(
        default=None, description="Moderation level for generations (auto or low); unset: the API's."
    )

    # -- HTTP timeouts ---------------------------------------------------------------------------
    connect_timeout_seconds: float = Field(default=10.0, gt=0, description="Seconds to connect.")
    read_timeout_seconds: float = Field(
        default=360.0,
        gt=0,
        description="Seconds to wait for a whole synchronous answer; quality=high can exceed 180 s.",
    )
    stream_idle_timeout_seconds: float = Field(
        default=120.0, gt=0, description="Longest silence allowed between stream events."
    )

    # -- client retry policy ---------------------------------------------------------------------
    max_attempts: int = Field(
        default=5, ge=1, description="Attempts per call for 429, 500-503 and failures to connect."
    )
    initial_backoff_seconds: float = Field(
        default=1.0, ge=0, description="First wait between attempts; it doubles each time."
    )
    max_total_retry_seconds: float = Field(
        default=300.0, ge=0, description="Most time spent waiting between attempts of one call."
    )
    retry_outcome_unknown: bool = Field(
        default=False,
        description=(
            "Retry a call that was sent but got no complete answer (timeout, dropped connection). "
            "It may already have been billed: retrying can pay twice."
        ),
    )
    media_retry_seconds: float = Field(
        default=30.0,
        ge=0,
        description=(
            "How long a result URL that fails right after the answer (404 or 403 while fresh, 5xx, "
            "reset, body cut short) is tried again before its image, already billed, is given up "
            "and reported as billed but not delivered."
        ),
    )

    # -- concurrency and rate --------------------------------------------------------------------
    concurrency_limit_name: str = Field(
        default="gpt-image",
        min_length=1,
        description="Prefect global concurrency limit that every paid call holds a slot of.",
    )
    concurrency_limit: int = Field(
        default=4,
        ge=1,
        description="Slots of that limit when it must be created (an existing limit keeps its value).",
    )
    requests_per_minute: int | None = Field(
        default=None,
        ge=1,
        description="Optional API requests per minute, enforced by the limit '<name>-rpm' (slot decay).",
    )

    # -- money -----------------------------------------------------------------------------------
    price_model: Literal["auto", "per_image", "tokens"] = Field(
        default="auto",
        description="How calls are priced: auto follows the endpoint (OpenAI's api.openai.com: "
        "tokens; the gateway and any other host: a flat price per image); per_image or tokens "
        "force one (e.g. tokens for an OpenAI-compatible proxy that bills like OpenAI).",
    )
    price_per_image: float = Field(
        default=DEFAULT_PRICE_PER_IMAGE,
        ge=0,
        description="USD per returned image of the per-image price model (the gateway's price list).",
    )
    text_input_usd_per_million: float | None = Field(
        default=None, ge=0, description="Token price model: USD per 1M text input tokens; unset: OpenAI's."
    )
    image_input_usd_per_million: float | None = Field(
        default=None, ge=0, description="Token price model: USD per 1M image input tokens; unset: OpenAI's."
    )
    image_output_usd_per_million: float | None = Field(
        default=None, ge=0, description="Token price model: USD per 1M image output tokens; unset: OpenAI's."
    )
    max_images_per_run: int | None = Field(
        default=None, ge=0, description="Most images one flow run may pay for; unset: unlimited."
    )
    max_cost_per_run: float | None = Field(
        default=None,
        ge=0,
        description="Most USD one flow run may spend, by the price model's estimate of each call; "
        "unset: unlimited.",
    )

    # -- results ---------------------------------------------------------------------------------
    max_call_artifacts_per_run: int = Field(
        default=20,
        ge=0,
        description="Image calls of one flow run that publish their own artifacts (an image and a "
        "card each); later calls publish none, so a flow fanning out thousands of calls does not "
        "spend two Prefect API calls on each (batch flows list every row in one table instead).",
    )
    allowed_media_hosts: list[str] = Field(
        default_factory=lambda: list(DEFAULT_MEDIA_HOSTS),
        description="Hosts result URLs may point to, besides the base URL's own host.",
    )

    # -- what a run may read -----------------------------------------------------------------------
    allowed_private_hosts: list[str] = Field(
        default_factory=list,
        description="Host names, addresses or networks (10.1.0.0/16) input URLs may reach although "
        "they are not public, e.g. an internal image server. Unlisted, a URL whose host is or "
        "resolves to a loopback, private, link-local (cloud metadata), shared or unique-local "
        "address is refused. $GPT_IMAGE_ALLOW_PRIVATE_HOSTS on the worker replaces this list.",
    )
    input_roots: list[str] | None = Field(
        default=None,
        description="Folders local input paths, file:// URIs, manifests and folders to walk must be "
        "inside (symlinks and .. resolved first); the store's own folder is always allowed. Unset: "
        "anywhere the process can read; empty: no local file. Set it for deployments. "
        "$GPT_IMAGE_INPUT_ROOTS (comma-separated) on the worker replaces it.",
    )
    input_buckets: list[str] = Field(
        default_factory=list,
        description="Buckets s3:// inputs, manifests and prefixes may name besides the store's own; "
        "'*': any bucket. $GPT_IMAGE_INPUT_BUCKETS on the worker replaces it.",
    )

    @field_validator("size")
    @classmethod
    def _check_size(cls, value: str) -> str:
        if value != "auto":
            parse_size(value)
        return value

    @model_validator(mode="after")
    def _check_compression(self) -> Self:
        if self.output_compression is not None and self.output_format == "png":
            raise ValueError("output_compression needs output_format jpeg or webp, not png")
        return self

    @property
    def rate_limit_name(self) -> str:
        """The name of the requests-per-minute limit: ``<concurrency_limit_name>-rpm``."""
        return f"{self.concurrency_limit_name}-rpm"

    def prices(self, base_url: str) -> PriceModel:
        """The price model of calls sent to ``base_url``: chosen by the endpoint (``price_model``
        auto) or forced, with the figures these settings replace (a price per image other than
        the gateway's list price, or any token price set); see :mod:`~prefect_gpt_image.api.pricing`."""
        if self.price_model == "per_image":
            model = GATEWAY_PER_IMAGE
        elif self.price_model == "tokens":
            model = OPENAI_GPT_IMAGE_2
        else:
            model = price_model_for(base_url)
        if model.rates is not None:
            published = model.rates
            rates = TokenRates(
                text_input=_given(self.text_input_usd_per_million, published.text_input),
                image_input=_given(self.image_input_usd_per_million, published.image_input),
                image_output=_given(self.image_output_usd_per_million, published.image_output),
            )
            return model.with_figures(rates=rates) if rates != published else model
        if self.price_per_image != model.per_image:
            return model.with_figures(per_image=self.price_per_image)
        return model

    def timeouts(self) -> Timeouts:
        """The client's :class:`~prefect_gpt_image.api.Timeouts` from these settings."""
        return Timeouts(
            connect=self.connect_timeout_seconds,
            read=self.read_timeout_seconds,
            stream_idle=self.stream_idle_timeout_seconds,
        )

    def retry_policy(self) -> RetryPolicy:
        """The client's :class:`~prefect_gpt_image.api.RetryPolicy` from these settings."""
        return RetryPolicy(
            max_attempts=self.max_attempts,
            initial_backoff=self.initial_backoff_seconds,
            max_total_seconds=self.max_total_retry_seconds,
            retry_outcome_unknown=self.retry_outcome_unknown,
            media_retry_seconds=self.media_retry_seconds,
        )

    def configure(self, config: ClientConfig) -> ClientConfig:
        """``config`` with these settings' timeouts, retry policy and allowed media hosts, and
        room in its connection pool for every concurrency slot's call and a download each: a
        download never queues behind calls that hold the connections for a minute."""
        return config.with_options(
            timeouts=self.timeouts(),
            retry=self.retry_policy(),
            allowed_media_hosts=tuple(self.allowed_media_hosts),
            max_connections=max(config.max_connections, 2 * self.concurrency_limit),
        )

    def input_policy(self) -> InputPolicy:
        """What a run may read (see :mod:`~prefect_gpt_image.api.inputpolicy`): these settings'
        allowed private hosts, input roots and buckets, each replaced by its environment variable
        when that is set."""
        return InputPolicy.build(
            private_hosts=self.allowed_private_hosts, roots=self.input_roots, buckets=self.input_buckets
        )

    def request_defaults(self, *, moderation: bool = True) -> dict[str, Any]:
        """The request fields these settings fill in (unset optional ones left out).

        ``moderation=False`` leaves out ``moderation``, which only generations accept.
        """
        fields: dict[str, Any] = {
            "model": self.model,
            "size": self.size,
            "quality": self.quality,
            "output_format": self.output_format,
            "background": self.background,
        }
        if self.output_compression is not None:
            fields["output_compression"] = self.output_compression
        if moderation and self.moderation is not None:
            fields["moderation"] = self.moderation
        return fields

    def call_deadline_seconds(self) -> float:
        """An upper bound of one paid call's duration under these settings: every attempt's
        connect, read and download timeouts plus the retry waits and the media retry window. Locks
        taken for a call are held at most this long, so a killed holder never blocks its key for
        ever."""
        t = self.timeouts()
        per_attempt = t.connect + max(t.read, t.stream_idle) + t.download
        # a result URL retried over its window, plus the attempt begun just before the window ends
        waits = self.max_total_retry_seconds + self.media_retry_seconds + t.connect + t.download
        return self.max_attempts * per_attempt + waits + 60.0


def _given(value: float | None, published: float) -> float:
    return published if value is None else value
