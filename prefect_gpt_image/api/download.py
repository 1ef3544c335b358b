"""Fetching result images: URL allowlist, size cap, retries, and checking the bytes.

Result URLs are temporary (contract §4), so they are fetched at once. The API key is never sent
to a media host, redirects are followed by hand so each hop is checked, and a body that is not
the image it claims to be is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urljoin, urlsplit

import httpx

from .config import ClientConfig, is_loopback_host
from .errors import DownloadError, UnsafeURLError
from .images import ImageFormat, probe_image
from .netpolicy import address_kind, safe_url

__all__ = ["Downloaded", "check_url", "download_image", "verify_image", "verify_in_worker"]

log = logging.getLogger("prefect_gpt_image.api")

_MAX_REDIRECTS = 3
_RETRY_STATUSES = {403, 404, 408, 425, 429, 500, 502, 503, 504}
"""Statuses of a fresh result URL worth another try: a CDN in front of object storage may miss
(404, 403) or fail (5xx) for a short while right after the answer (contract §4)."""


@dataclass(frozen=True)
class Downloaded:
    """A fetched and checked image: bytes in memory, or a spool file when ``path`` is set."""

    data: bytes | None
    path: Path | None
    format: ImageFormat
    width: int
    height: int
    sha256: str
    size_bytes: int


def check_url(url: str, allowed_hosts: frozenset[str]) -> None:
    """Refuse a result URL that is not https on an allowed host (plain http only on loopback),
    or that names a non-public address (see :func:`~.netpolicy.address_kind`).
    """
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise UnsafeURLError(f"result URL scheme {parts.scheme!r} is not allowed", url=url)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    loopback = is_loopback_host(host)
    if parts.scheme == "http" and not loopback:
        raise UnsafeURLError(f"plain http is only allowed on loopback, not {host}", url=url)
    if address is not None and not loopback and address_kind(address) is not None:
        raise UnsafeURLError(f"result URL points to a non-public address {host}", url=url)
    if host not in allowed_hosts:
        raise UnsafeURLError(
            f"result URL host {host} is not in the allowed media hosts {sorted(allowed_hosts)}",
            url=url,
        )


def verify_image(
    data: bytes, *, expected_format: str | None, expected_size: tuple[int, int] | None
) -> tuple[ImageFormat, int, int]:
    """Check ``data`` is a valid image (a PNG by its chunk CRCs, others decoded) of the declared
    format and size; raise ValueError if not."""
    info = probe_image(data, decode=False)
    if expected_format and info.format != expected_format:
        raise ValueError(f"expected a {expected_format} image, got {info.format}")
    if expected_size and (info.width, info.height) != expected_size:
        raise ValueError(f"expected {expected_size[0]}x{expected_size[1]}, got {info.width}x{info.height}")
    return info.format, info.width, info.height


_VERIFY_WORKERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gpt-image-verify")
"""Where images are checked: off the event loop (a 1024x1024 JPEG or WebP of realistic size takes
tens of ms to decode, a 4K one hundreds; a PNG's CRC check about 1 ms per 1.5 MB), and two at a
time, whatever the number of calls in flight (a 3840x2160 image holds 12 MB of file while it is
checked, and a decoded one 25 MB of pixels)."""


def _verify_source(
    source: bytes | Path, expected_format: str | None, expected_size: tuple[int, int] | None
) -> tuple[ImageFormat, int, int]:
    data = source.read_bytes() if isinstance(source, Path) else source
    return verify_image(data, expected_format=expected_format, expected_size=expected_size)


async def verify_in_worker(
    source: bytes | Path, *, expected_format: str | None, expected_size: tuple[int, int] | None
) -> tuple[ImageFormat, int, int]:
    """:func:`verify_image` of the bytes (or the file) ``source`` in a worker thread, so the event
    loop (and every other call on it) is not blocked while the image is decoded."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_VERIFY_WORKERS, _verify_source, source, expected_format, expected_size)


async def download_image(
    http: httpx.AsyncClient,
    url: str,
    config: ClientConfig,
    *,
    expected_format: str | None,
    expected_size: tuple[int, int] | None,
    request_id: str | None,
) -> Downloaded:
    """Fetch ``url``, cap its size, and check the image.

    A failure a fresh URL may recover from (see :data:`_RETRY_STATUSES`, a reset, a body cut
    short) is tried again with the retry policy's backoff for up to its ``media_retry_seconds``
    after the first failure (so a slow first try never eats the window); then the image is given
    up with a :class:`DownloadError`. A URL or a redirect that is not allowed, an oversized or
    invalid body fails at once.
    """
    policy = config.retry
    first_failure: float | None = None
    attempt = 0
    while True:
        attempt += 1
        try:
            return await _fetch_once(
                http, url, config, expected_format=expected_format, expected_size=expected_size
            )
        except _TransientDownload as exc:
            now = time.monotonic()
            if first_failure is None:
                first_failure = now
            wait = min(policy.backoff(attempt), first_failure + policy.media_retry_seconds - now)
            if wait <= 0:
                raise DownloadError(
                    f"result URL given up after {attempt} attempt(s) over {now - first_failure:.1f} s "
                    f"(media_retry_seconds={policy.media_retry_seconds:g}), the last: {exc}",
                    url=safe_url(url),
                    request_id=request_id,
                ) from None
            log.warning(
                "download of %s failed (%s); retry %d in %.1fs (request id: %s)",
                safe_url(url),
                exc,
                attempt,
                wait,
                request_id,
            )
            await asyncio.sleep(wait)
        except DownloadError as exc:
            exc.request_id = exc.request_id or request_id
            raise


class _TransientDownload(Exception):
    """A download failure worth another try (404/403 while fresh, 5xx, 429, connection trouble,
    a body cut short)."""


async def _fetch_once(
    http: httpx.AsyncClient,
    url: str,
    config: ClientConfig,
    *,
    expected_format: str | None,
    expected_size: tuple[int, int] | None,
) -> Downloaded:
    allowed = config.media_hosts
    current = url
    timeout = httpx.Timeout(
        config.timeouts.download, connect=config.timeouts.connect, pool=config.timeouts.pool
    )
    for _ in range(_MAX_REDIRECTS + 1):
        check_url(current, allowed)
        try:
            async with http.stream("GET", current, timeout=timeout, follow_redirects=False) as response:
                if response.is_redirect:
                    location = response.headers.get("location", "")
                    current = urljoin(current, location)
                    continue
                if response.status_code in _RETRY_STATUSES:
                    raise _TransientDownload(f"HTTP {response.status_code}")
                if response.status_code != 200:
                    raise DownloadError(
                        f"result URL answered HTTP {response.status_code}", url=safe_url(current)
                    )
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > config.max_download_bytes:
                    raise DownloadError(
                        f"result is {declared} bytes, over the {config.max_download_bytes} cap",
                        url=safe_url(current),
                    )
                return await _receive(
                    response, config, expected_format=expected_format, expected_size=expected_size
                )
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise _TransientDownload(type(exc).__name__) from None
    raise UnsafeURLError(f"more than {_MAX_REDIRECTS} redirects", url=safe_url(url))


_SPOOL_FLUSH_BYTES = 4 * 1024 * 1024
"""With a spool folder, received bytes are written out in blocks of about this size (few system
calls on the event loop) and never held in memory beyond one block."""


@dataclass
class _SpoolFile:
    """The spool file of one download, once opened."""

    path: Path | None = None
    handle: BinaryIO | None = None

    def write(self, folder: str, chunks: list[bytes]) -> None:
        if self.handle is None:
            os.makedirs(folder, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix="dl-", suffix=".part", dir=folder)
            self.path, self.handle = Path(name), os.fdopen(fd, "wb")
        self.handle.write(b"".join(chunks))

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def discard(self) -> None:
        self.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


async def _receive(
    response: httpx.Response,
    config: ClientConfig,
    *,
    expected_format: str | None,
    expected_size: tuple[int, int] | None,
) -> Downloaded:
    """Stream the body to memory or a spool file, then hash and check the image.

    The event loop only receives; writing out the last block, hashing and decoding run in a
    worker thread, so a large image never blocks the other calls on the loop.
    """
    total = 0
    chunks: list[bytes] = []
    buffered = 0
    spool = _SpoolFile()
    try:
        async for chunk in response.aiter_bytes():
            total += len(chunk)
            if total > config.max_download_bytes:
                raise DownloadError(
                    f"result exceeds the {config.max_download_bytes}-byte cap",
                    url=safe_url(str(response.url)),
                )
            chunks.append(chunk)
            buffered += len(chunk)
            if config.spool_dir and buffered >= _SPOOL_FLUSH_BYTES:
                spool.write(config.spool_dir, chunks)
                chunks, buffered = [], 0
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                _VERIFY_WORKERS,
                _finish,
                chunks,
                spool,
                config.spool_dir,
                total,
                expected_format,
                expected_size,
            )
        except ValueError as exc:
            raise DownloadError(
                f"result is not a valid image: {exc}", url=safe_url(str(response.url))
            ) from None
    except BaseException:
        spool.discard()
        raise


def _finish(
    chunks: list[bytes],
    spool: _SpoolFile,
    spool_dir: str | None,
    total: int,
    expected_format: str | None,
    expected_size: tuple[int, int] | None,
) -> Downloaded:
    """(In a worker) the rest of a download: its file or bytes, sha256, and the image check."""
    if spool_dir:
        spool.write(spool_dir, chunks)
        spool.close()
        assert spool.path is not None
        body = spool.path.read_bytes()
    else:
        body = b"".join(chunks)
    chunks.clear()
    sha = hashlib.sha256(body).hexdigest()
    fmt, width, height = verify_image(body, expected_format=expected_format, expected_size=expected_size)
    if spool.path is None:
        return Downloaded(body, None, fmt, width, height, sha, total)
    del body
    # Unique per download: the same image fetched twice at once must not share a file.
    final = spool.path.with_name(f"{sha}-{spool.path.stem.removeprefix('dl-')}.{fmt}")
    os.replace(spool.path, final)
    spool.path = final
    return Downloaded(None, final, fmt, width, height, sha, total)
