"""Client configuration: where to call, with which key, how long to wait, and when to retry."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field, replace
from email.utils import parsedate_to_datetime
from time import time
from urllib.parse import urlsplit

from pydantic import SecretStr

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MEDIA_HOSTS",
    "ClientConfig",
    "RetryPolicy",
    "Timeouts",
]

DEFAULT_BASE_URL = "https://cn.crazyrouter.com/v1"
DEFAULT_MEDIA_HOSTS: tuple[str, ...] = ("media.crazyrouter.com",)
"""Hosts result URLs may point to, besides the base URL's own host (contract §4)."""


@dataclass(frozen=True)
class Timeouts:
    """Seconds to wait. ``read`` covers a whole synchronous generation (``quality=high`` can
    exceed 180 s, so it defaults to 360 s); ``stream_idle`` is the longest silence allowed between
    stream events; ``download`` bounds each result download's reads.
    """

    connect: float = 10.0
    read: float = 360.0
    write: float = 120.0
    pool: float = 600.0
    stream_idle: float = 120.0
    download: float = 120.0


@dataclass(frozen=True)
class RetryPolicy:
    """Our own retry policy (the HTTP library never retries underneath it).

    Retried: 429, 500, 502, 503 and failures to connect, with exponential backoff from
    ``initial_backoff`` doubling up to ``max_backoff``, plus up to ``jitter`` (a fraction) random
    extra; a ``Retry-After`` or ``retry-after-ms`` header replaces the computed wait. At most
    ``max_attempts`` attempts and ``max_total_seconds`` of waiting in all.
    A request that was sent but got no complete answer (timeout, dropped connection) may already be
    billed: it is retried only when ``retry_outcome_unknown`` is True.

    A result URL is fetched again, with the same backoff, for up to ``media_retry_seconds`` after
    its first failure when it fails in a way a CDN that has not caught up yet does (404 or 403, 408,
    425, 429, 5xx, a reset or a body cut short): its image is already billed. Only then is the
    image given up (reported as billed and not delivered).
    """

    max_attempts: int = 5
    initial_backoff: float = 1.0
    max_backoff: float = 32.0
    multiplier: float = 2.0
    jitter: float = 0.25
    max_total_seconds: float = 300.0
    retry_statuses: tuple[int, ...] = (429, 500, 502, 503)
    retry_outcome_unknown: bool = False
    media_retry_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.max_total_seconds < 0:
            raise ValueError("backoff and total time must not be negative")
        if self.media_retry_seconds < 0:
            raise ValueError("media_retry_seconds must not be negative")

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
        if retry_after is not None:
            return max(0.0, min(retry_after, self.max_total_seconds))
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return base * (1.0 + self.jitter * random.random())

    @staticmethod
    def retry_after(headers: dict[str, str] | None) -> float | None:
        """Seconds from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date), if any."""
        if not headers:
            return None
        ms = headers.get("retry-after-ms")
        if ms:
            try:
                return float(ms) / 1000.0
            except ValueError:
                pass
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return float(value)
        except ValueError:
            pass
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time())
        except (TypeError, ValueError):
            return None


@dataclass(frozen=True)
class ClientConfig:
    """Everything a client needs. The key is a ``SecretStr``: its repr never shows it.

    ``allowed_media_hosts`` lists the hosts result URLs may come from, in addition to the base
    URL's host; ``max_download_bytes`` caps each result; ``spool_dir``, when set, streams results
    to files there instead of memory.
    """

    api_key: SecretStr = field(repr=False)
    base_url: str = DEFAULT_BASE_URL
    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    allowed_media_hosts: tuple[str, ...] = DEFAULT_MEDIA_HOSTS
    max_download_bytes: int = 100 * 1024 * 1024
    spool_dir: str | None = None
    max_connections: int = 64
    user_agent: str = "prefect-gpt-image"

    def __post_init__(self) -> None:
        if not isinstance(self.api_key, SecretStr):
            object.__setattr__(self, "api_key", SecretStr(str(self.api_key)))
        object.__setattr__(self, "base_url", normalize_base_url(self.base_url))

    @property
    def media_hosts(self) -> frozenset[str]:
        """The base URL's host plus ``allowed_media_hosts``, lower-cased."""
        host = (urlsplit(self.base_url).hostname or "").lower()
        return frozenset({host, *(h.lower() for h in self.allowed_media_hosts)})

    def with_options(self, **changes: object) -> ClientConfig:
        """A copy with some fields changed."""
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, **overrides: object) -> ClientConfig:
        """Read ``GPT_IMAGE_API_KEY`` / ``GPT_IMAGE_BASE_URL`` (else ``OPENAI_API_KEY`` /
        ``OPENAI_BASE_URL``); explicit ``overrides`` that are not None win.
        """
        given = {k: v for k, v in overrides.items() if v is not None}
        if "api_key" not in given:
            key = os.environ.get("GPT_IMAGE_API_KEY") or os.environ.get("OPENAI_API_KEY")
            if not key:
                raise ValueError("no API key: pass api_key or set GPT_IMAGE_API_KEY (or OPENAI_API_KEY)")
            given["api_key"] = SecretStr(key)
        if "base_url" not in given:
            url = os.environ.get("GPT_IMAGE_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
            if url:
                given["base_url"] = url
        return cls(**given)  # type: ignore[arg-type]


def normalize_base_url(url: str) -> str:
    """Strip trailing slashes and a trailing endpoint path, so paths never double up."""
    url = url.strip().rstrip("/")
    for suffix in ("/images/generations", "/images/edits"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"base_url must be an http(s) URL, got {url!r}")
    return url
