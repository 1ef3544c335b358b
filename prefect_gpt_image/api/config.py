"""Client configuration: where to call, with which key, how long to wait, and when to retry."""

from __future__ import annotations

import ipaddress
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from email.utils import parsedate_to_datetime
from time import time
from urllib.parse import urlsplit

from pydantic import SecretStr

from .errors import ConfigurationError

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MEDIA_HOSTS",
    "OPENAI_BASE_URL",
    "ClientConfig",
    "RetryPolicy",
    "Timeouts",
    "is_loopback_host",
    "resolve_key",
]

DEFAULT_BASE_URL = "https://cn.crazyrouter.com/v1"
"""The gateway: where ``GPT_IMAGE_API_KEY`` goes unless ``GPT_IMAGE_BASE_URL`` says otherwise."""
OPENAI_BASE_URL = "https://api.openai.com/v1"
"""OpenAI's own API: where ``OPENAI_API_KEY`` goes unless ``OPENAI_BASE_URL`` says otherwise."""
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
    to files there instead of memory. ``max_connections`` caps the connections the client keeps
    open (and reuses); a request beyond it waits for one to be free (``timeouts.pool``).
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
        check_key_transport(self.base_url)

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
        """The configuration with the key and base URL of :func:`resolve_key` (explicit
        ``api_key`` / ``base_url``, else the environment's pairs); other ``overrides`` that are
        not None replace the defaults."""
        given = {k: v for k, v in overrides.items() if v is not None}
        key, url = resolve_key(given.pop("api_key", None), given.pop("base_url", None), os.environ)
        return cls(api_key=key, base_url=url, **given)  # type: ignore[arg-type]


def resolve_key(
    api_key: object | None, base_url: object | None, env: Mapping[str, str]
) -> tuple[SecretStr, str]:
    """The API key and the base URL it is sent to; a key only ever goes to its own pair's host.

    Two pairs: ``GPT_IMAGE_API_KEY`` with ``GPT_IMAGE_BASE_URL`` (default the gateway,
    :data:`DEFAULT_BASE_URL`) and ``OPENAI_API_KEY`` with ``OPENAI_BASE_URL`` (default OpenAI's
    :data:`OPENAI_BASE_URL`). The rules, in order:

    - ``api_key`` and ``base_url`` both given: the caller paired them; used as given.
    - ``api_key`` alone: it goes where the environment pairs that same key (the value of
      ``OPENAI_API_KEY``: OpenAI's pair), else to ``GPT_IMAGE_BASE_URL`` or the gateway, as the
      plugin's own key.
    - ``base_url`` alone: ``OPENAI_API_KEY`` if it is OpenAI's pair's host, else
      ``GPT_IMAGE_API_KEY``; an ``OPENAI_API_KEY`` is never sent to another host.
    - neither: ``GPT_IMAGE_API_KEY`` set, the GPT pair; else ``OPENAI_API_KEY``, the OpenAI pair,
      unless ``GPT_IMAGE_BASE_URL`` is set (another host): refused rather than send it there.

    Raises :class:`ConfigurationError` (nothing sent) when no key is found or the only key
    belongs to another host, naming both pairs and how to fix it.
    """
    gpt_key, gpt_url = _env(env, "GPT_IMAGE_API_KEY"), _env(env, "GPT_IMAGE_BASE_URL")
    openai_key = _env(env, "OPENAI_API_KEY")
    openai_url = normalize_base_url(_env(env, "OPENAI_BASE_URL") or OPENAI_BASE_URL)
    if api_key is not None:
        secret = api_key if isinstance(api_key, SecretStr) else SecretStr(str(api_key))
        if base_url is not None:
            return secret, str(base_url)
        value = secret.get_secret_value()
        if value == openai_key and value != gpt_key:
            return secret, openai_url
        return secret, gpt_url or DEFAULT_BASE_URL
    if base_url is not None:
        url = str(base_url)
        if openai_key and _origin(url) == _origin(openai_url):
            return SecretStr(openai_key), url
        if gpt_key:
            return SecretStr(gpt_key), url
        if openai_key:
            raise ConfigurationError(_elsewhere("the base URL given", url, openai_url))
        raise ConfigurationError(NO_KEY)
    if gpt_key:
        return SecretStr(gpt_key), gpt_url or DEFAULT_BASE_URL
    if openai_key:
        if gpt_url and _origin(gpt_url) != _origin(openai_url):
            raise ConfigurationError(_elsewhere("GPT_IMAGE_BASE_URL", gpt_url, openai_url))
        return SecretStr(openai_key), openai_url
    raise ConfigurationError(NO_KEY)


NO_KEY = (
    "no API key: set GPT_IMAGE_API_KEY (sent to GPT_IMAGE_BASE_URL, default the gateway "
    f"{DEFAULT_BASE_URL}) or OPENAI_API_KEY (sent to OPENAI_BASE_URL, default OpenAI's "
    f"{OPENAI_BASE_URL}), or pass api_key= (or a GptImageCredentials block). To try without a "
    "key, run the offline sandbox: `prefect-gpt-image sandbox --port 8099`, then "
    "GPT_IMAGE_BASE_URL=http://127.0.0.1:8099/v1 GPT_IMAGE_API_KEY=sk-anything"
)
"""The message of the configuration error when no key is found anywhere."""


def _elsewhere(what: str, url: str, openai_url: str) -> str:
    host = urlsplit(url.strip()).hostname or url
    return (
        f"{what} ({host}) has no key of its own: OPENAI_API_KEY is only sent to OPENAI_BASE_URL "
        f"({openai_url}), never to another host. Set GPT_IMAGE_API_KEY to the key for {host}, "
        "or unset GPT_IMAGE_BASE_URL to call OpenAI with OPENAI_API_KEY, or pass api_key and "
        "base_url together"
    )


def _env(env: Mapping[str, str], name: str) -> str | None:
    value = (env.get(name) or "").strip()
    return value or None


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url.strip())
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a URL's host name) is this machine: ``localhost`` or a loopback address."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_key_transport(url: str) -> None:
    """Refuse a base URL that would carry the key over plain http to a host that is not loopback
    (a :class:`ConfigurationError`, before any request)."""
    parts = urlsplit(url)
    if parts.scheme == "http" and not is_loopback_host(parts.hostname or ""):
        raise ConfigurationError(
            f"refusing to send the API key over plain http to {parts.hostname}: use an https base "
            "URL (plain http is only allowed on loopback: 127.0.0.1, ::1, localhost)"
        )


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
