"""The request on the wire: which endpoint, which headers and timeout, and the body (JSON for a
generation, one buffered multipart form for an edit).

Built anew for every attempt, so a retry sends exactly what the first attempt sent.
"""

from __future__ import annotations

import ssl
from functools import cache

import httpx

from .config import ClientConfig
from .models import EditRequest, GenerateRequest, ImageRequest

__all__ = ["build_http_request", "endpoint", "tls_context"]


@cache
def tls_context() -> ssl.SSLContext:
    """The TLS settings every client of this process shares (httpx's defaults: system-trusted
    certifi roots). Made once: loading the roots costs tens of milliseconds per client."""
    return httpx.create_ssl_context()


def endpoint(request: ImageRequest) -> str:
    """The path, relative to the base URL, that ``request`` is posted to."""
    return "images/edits" if isinstance(request, EditRequest) else "images/generations"


def build_http_request(
    http: httpx.AsyncClient, config: ClientConfig, request: GenerateRequest | EditRequest
) -> httpx.Request:
    """The HTTP request for ``request``: bearer key, the stream-idle timeout for a stream, and
    the body (an edit's images and mask as ``image[]`` / ``mask`` file parts)."""
    url = f"{config.base_url}/{endpoint(request)}"
    headers = {"Authorization": f"Bearer {config.api_key.get_secret_value()}"}
    timeout = http.timeout
    if request.stream:
        t = config.timeouts
        timeout = httpx.Timeout(t.stream_idle, connect=t.connect, write=t.write, pool=t.pool)
        headers["Accept"] = "text/event-stream"
    if isinstance(request, EditRequest):
        files: list[tuple[str, tuple[str, bytes, str]]] = [
            ("image[]", (img.filename, img.data, img.content_type)) for img in request.images
        ]
        if request.mask is not None:
            m = request.mask
            files.append(("mask", (m.filename, m.data, m.content_type)))
        built = http.build_request(
            "POST",
            url,
            data=request.form_fields(),
            files=files,
            headers=headers,
            timeout=timeout,
        )
        # One buffer, sent in one write (streamed, each field's headers and value is a write
        # of its own under a cancel scope: a few milliseconds of event loop per edit).
        built.read()
        return built
    return http.build_request("POST", url, json=request.wire_fields(), headers=headers, timeout=timeout)
