"""A deliberately hostile gpt-image-2 gateway for the tests: it answers each image request with
the scenario the test set, for what the contract sandbox does not misbehave with (``file:`` and
link-local URLs, redirects to private addresses or in loops, oversized bodies, wrong images,
answers that are not JSON, error messages that echo the API key).
"""

from __future__ import annotations

import base64
import io
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image

__all__ = ["SCENARIOS", "HostileServer"]

_MB = 1024 * 1024


def _png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, "crimson").save(buf, "PNG")
    return buf.getvalue()


SCENARIOS: dict[str, str] = {
    "file-url": "a result URL with the file: scheme",
    "data-url": "a result URL with the data: scheme",
    "link-local-url": "a result URL on the cloud metadata address 169.254.169.254",
    "ipv6-link-local-url": "a result URL on an IPv6 link-local address",
    "private-https-url": "an https result URL on a private address",
    "offhost-https-url": "an https result URL on a host off the allowlist",
    "userinfo-offhost-url": "an allowed-looking URL whose real host is off the allowlist",
    "redirect-private": "a media URL redirecting to a private address",
    "redirect-link-local": "a media URL redirecting to the metadata address",
    "redirect-file": "a media URL redirecting to a file: URL",
    "redirect-loop": "a media URL redirecting to itself",
    "oversized-declared": "a media body declaring 200 MB",
    "oversized-streamed": "a media body streaming past the 100 MB cap with no length",
    "wrong-size-image": "a valid PNG of another size than requested",
    "wrong-format-image": "a JPEG declared as PNG",
    "b64-not-image": "b64_json that decodes to text",
    "b64-not-base64": "b64_json that is not base64",
    "html-body": "200 with an HTML page instead of JSON",
    "empty-data": "200 with no images",
    "no-url-no-b64": "an item with neither url nor b64_json",
    "sse-not-json": "an SSE completed event whose data is not JSON",
    "sse-no-completed": "an SSE stream that ends after a partial image, without [DONE]",
    "sse-done-without-image": "an SSE stream with [DONE] and no completed event",
    "echo-key-401": "a 401 whose message echoes the bearer key",
}


class HostileServer:
    """``with HostileServer() as h: h.scenario = "file-url"; ... h.base_url``."""

    def __init__(self, requested_size: tuple[int, int] = (1024, 640)) -> None:
        self.scenario = "file-url"
        self.requested_size = requested_size
        self.api_requests = 0
        self.media_gets: Counter[str] = Counter()
        """GETs of ``/media/...`` by the scenario the URL names."""
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    # -- answers ---------------------------------------------------------------------------------

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        scenario = self.scenario
        media = f"{self.url}/media/{scenario}.png"
        good = _png(self.requested_size)
        urls = {
            "file-url": "file:///etc/passwd",
            "data-url": "data:image/png;base64," + base64.b64encode(good).decode(),
            "link-local-url": "http://169.254.169.254/latest/meta-data/image.png",
            "ipv6-link-local-url": "https://[fe80::1]/image.png",
            "private-https-url": "https://192.168.1.20/image.png",
            "offhost-https-url": "https://media.crazyrouter.com.evil.example/image.png",
            "userinfo-offhost-url": "https://media.crazyrouter.com@evil.example/image.png",
        }
        if scenario == "echo-key-401":
            key = handler.headers.get("Authorization", "").removeprefix("Bearer ")
            body = {"error": {"message": f"invalid api key {key}", "type": "auth", "code": "invalid_api_key"}}
            return _send(handler, 401, "application/json", json.dumps(body).encode())
        if scenario == "html-body":
            return _send(handler, 200, "text/html", b"<!doctype html><h1>Welcome to nginx</h1>")
        if scenario.startswith("sse-"):
            return _send(handler, 200, "text/event-stream", _sse(scenario, good))
        item: dict[str, Any]
        if scenario in urls:
            item = {"url": urls[scenario]}
        elif scenario == "b64-not-image":
            item = {"b64_json": base64.b64encode(b"just some text, not a picture").decode()}
        elif scenario == "b64-not-base64":
            item = {"b64_json": "%%% not base64 %%%"}
        elif scenario == "no-url-no-b64":
            item = {"revised_prompt": "nothing here"}
        else:
            item = {"url": media}
        data = [] if scenario == "empty-data" else [item]
        body = {"created": 1778990000, "data": data, "output_format": "png", "size": "1024x640"}
        _send(handler, 200, "application/json", json.dumps(body).encode())

    def _media(self, handler: BaseHTTPRequestHandler) -> None:
        scenario = handler.path.rsplit("/", 1)[-1].removesuffix(".png")
        redirects = {
            "redirect-private": "https://10.1.2.3/image.png",
            "redirect-link-local": "http://169.254.169.254/latest/meta-data/",
            "redirect-file": "file:///etc/shadow",
            "redirect-loop": handler.path,
        }
        if scenario in redirects:
            handler.send_response(302)
            handler.send_header("Location", redirects[scenario])
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        if scenario == "oversized-declared":
            handler.send_response(200)
            handler.send_header("Content-Type", "image/png")
            handler.send_header("Content-Length", str(200 * _MB))
            handler.end_headers()
            handler.wfile.write(_png(self.requested_size)[:64])
            handler.close_connection = True
            return
        if scenario == "oversized-streamed":
            handler.send_response(200)
            handler.send_header("Content-Type", "image/png")
            handler.send_header("Connection", "close")
            handler.end_headers()
            chunk = _png(self.requested_size)[:16] + b"\0" * (_MB - 16)
            try:
                for _ in range(110):
                    handler.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
            handler.close_connection = True
            return
        if scenario == "wrong-size-image":
            return _send(handler, 200, "image/png", _png((512, 512)))
        if scenario == "wrong-format-image":
            buf = io.BytesIO()
            Image.new("RGB", self.requested_size, "navy").save(buf, "JPEG")
            return _send(handler, 200, "image/png", buf.getvalue())
        _send(handler, 404, "application/json", b'{"error": {"message": "not found"}}')

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                with server._lock:
                    server.api_requests += 1
                server._answer(self)

            def do_GET(self) -> None:
                if self.path.startswith("/media/"):
                    with server._lock:
                        server.media_gets[self.path.rsplit("/", 1)[-1].removesuffix(".png")] += 1
                    server._media(self)
                else:
                    _send(self, 404, "application/json", b"{}")

        return Handler


def _send(handler: BaseHTTPRequestHandler, status: int, content_type: str, body: bytes) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.send_header("X-Oneapi-Request-Id", "20260517000000hostile0000000001")
    handler.end_headers()
    handler.wfile.write(body)


def _sse(scenario: str, image: bytes) -> bytes:
    b64 = base64.b64encode(image).decode()
    partial = json.dumps(
        {"type": "image_generation.partial_image", "b64_json": b64, "partial_image_index": 0}
    )
    frames = [b": PING\n\n", b"event: image_generation.partial_image\ndata: " + partial.encode() + b"\n\n"]
    if scenario == "sse-not-json":
        frames.append(b'event: image_generation.completed\ndata: {"type": "image_generation.comp\n\n')
    elif scenario == "sse-done-without-image":
        frames.append(b"data: [DONE]\n\n")
    return b"".join(frames)
