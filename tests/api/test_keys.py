"""Keys go only where they belong: ``GPT_IMAGE_API_KEY`` with ``GPT_IMAGE_BASE_URL`` (the
gateway), ``OPENAI_API_KEY`` with ``OPENAI_BASE_URL`` (OpenAI), never one to the other's host
unless the caller paired them explicitly; no key over plain http off loopback; one error, naming
both pairs and the sandbox, when there is no key.

Two local stand-ins play the gateway and OpenAI: each records the bearer key of every request it
gets and forwards the request to a sandbox (the OpenAI one answers ``b64_json``, as OpenAI does),
so the client's call really completes. Combinations whose key would go to a default host off
this machine are checked on the resolved configuration only, never connected.
"""

from __future__ import annotations

import http.client
import socket
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

import pytest
from pydantic import ValidationError

from prefect_gpt_image.api import (
    DEFAULT_BASE_URL,
    OPENAI_BASE_URL,
    ClientConfig,
    ConfigurationError,
    GptImageError,
    ImagesClient,
    RetryPolicy,
)
from prefect_gpt_image.blocks import GptImageCredentials
from tests.support.local_http import LocalHTTPServer

GPT_KEY = "sk-gateway-key-1111"
OPENAI_KEY = "sk-openai-key-2222"
OTHER_KEY = "sk-explicit-key-3333"
FAST = RetryPolicy(max_attempts=1)
_NAMES = ("GPT_IMAGE_API_KEY", "GPT_IMAGE_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL")


class StandIn:
    """A local stand-in for one service: records the bearer key of each request, forwards the
    request to ``upstream`` (a sandbox) and returns its answer."""

    def __init__(self, upstream: str) -> None:
        self.keys: list[str] = []
        target = urlsplit(upstream)
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                stand_in.keys.append(self.headers.get("Authorization", "").removeprefix("Bearer "))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn = http.client.HTTPConnection(target.hostname or "", target.port, timeout=30)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    answer = conn.getresponse()
                    data = answer.read()
                finally:
                    conn.close()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _forward

            def log_message(self, *args: Any) -> None:
                pass

        self._server = LocalHTTPServer(Handler)

    @property
    def base_url(self) -> str:
        return self._server.base_url

    def close(self) -> None:
        self._server.close()


@pytest.fixture
def stand_ins(make_sandbox: Callable[..., Any]) -> Iterator[tuple[StandIn, StandIn]]:
    """The gateway's stand-in (URL answers) and OpenAI's (``b64_json`` answers), on 127.0.0.1."""
    gateway = StandIn(make_sandbox().url)
    openai = StandIn(make_sandbox(result_mode="b64_json").url)
    try:
        yield gateway, openai
    finally:
        gateway.close()
        openai.close()


@pytest.fixture
def no_outside_connection(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every connection or name lookup this process attempts off loopback is recorded and refused
    (so a test proves a refusal came before any connection, without sending a packet)."""
    attempts: list[Any] = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else address
        if host not in ("127.0.0.1", "::1") and self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
            raise OSError(f"test: connection to {address} refused")
        return real_connect(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in ("127.0.0.1", "::1", "localhost", None):
            attempts.append(host)
            raise socket.gaierror(f"test: lookup of {host} refused")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return attempts


def _set_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name in _NAMES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


# Each case: the environment and the client's arguments ("G"/"O" stand for the gateway's and
# OpenAI's stand-in URLs), and which stand-in sees which key ("G"/"O"), or the error's words.
CASES: list[tuple[str, dict[str, str], dict[str, str], tuple[str, str] | str]] = [
    (
        "gpt-pair-wins-with-both-pairs-set",
        {
            "GPT_IMAGE_API_KEY": GPT_KEY,
            "GPT_IMAGE_BASE_URL": "G",
            "OPENAI_API_KEY": OPENAI_KEY,
            "OPENAI_BASE_URL": "O",
        },
        {},
        ("G", GPT_KEY),
    ),
    ("openai-pair", {"OPENAI_API_KEY": OPENAI_KEY, "OPENAI_BASE_URL": "O"}, {}, ("O", OPENAI_KEY)),
    (
        "openai-key-never-goes-to-gpt-base-url",
        {"OPENAI_API_KEY": OPENAI_KEY, "GPT_IMAGE_BASE_URL": "G"},
        {},
        "GPT_IMAGE_BASE_URL",
    ),
    (
        "openai-key-with-both-urls",
        {"OPENAI_API_KEY": OPENAI_KEY, "GPT_IMAGE_BASE_URL": "G", "OPENAI_BASE_URL": "O"},
        {},
        "Set GPT_IMAGE_API_KEY",
    ),
    (
        "explicit-key-and-url-are-paired-by-the-caller",
        {"OPENAI_API_KEY": OPENAI_KEY, "OPENAI_BASE_URL": "O"},
        {"api_key": OPENAI_KEY, "base_url": "G"},
        ("G", OPENAI_KEY),
    ),
    (
        "explicit-openai-key-alone-goes-to-openai",
        {"OPENAI_API_KEY": OPENAI_KEY, "OPENAI_BASE_URL": "O", "GPT_IMAGE_BASE_URL": "G"},
        {"api_key": OPENAI_KEY},
        ("O", OPENAI_KEY),
    ),
    (
        "explicit-other-key-alone-goes-to-gpt-url",
        {"OPENAI_API_KEY": OPENAI_KEY, "OPENAI_BASE_URL": "O", "GPT_IMAGE_BASE_URL": "G"},
        {"api_key": OTHER_KEY},
        ("G", OTHER_KEY),
    ),
    (
        "explicit-openai-url-gets-the-openai-key",
        {"GPT_IMAGE_API_KEY": GPT_KEY, "OPENAI_API_KEY": OPENAI_KEY, "OPENAI_BASE_URL": "O"},
        {"base_url": "O"},
        ("O", OPENAI_KEY),
    ),
    (
        "explicit-gateway-url-gets-the-gpt-key",
        {"GPT_IMAGE_API_KEY": GPT_KEY, "OPENAI_API_KEY": OPENAI_KEY, "OPENAI_BASE_URL": "O"},
        {"base_url": "G"},
        ("G", GPT_KEY),
    ),
    (
        "explicit-gateway-url-refuses-the-openai-key",
        {"OPENAI_API_KEY": OPENAI_KEY, "OPENAI_BASE_URL": "O"},
        {"base_url": "G"},
        "OPENAI_API_KEY is only sent to OPENAI_BASE_URL",
    ),
    ("no-key-anywhere", {"GPT_IMAGE_BASE_URL": "G", "OPENAI_BASE_URL": "O"}, {}, "prefect-gpt-image sandbox"),
]


@pytest.mark.parametrize("env,kwargs,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_key_matrix_each_key_reaches_only_its_own_stand_in(
    stand_ins: tuple[StandIn, StandIn],
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    kwargs: dict[str, str],
    expected: tuple[str, str] | str,
) -> None:
    gateway, openai = stand_ins
    urls = {"G": gateway.base_url, "O": openai.base_url}
    _set_env(monkeypatch, {name: urls.get(value, value) for name, value in env.items()})
    arguments = {name: urls.get(value, value) for name, value in kwargs.items()}
    if isinstance(expected, str):
        with pytest.raises(ConfigurationError, match=expected) as caught:
            ImagesClient(**arguments, retry=FAST)
        assert isinstance(caught.value, GptImageError) and isinstance(caught.value, ValueError)
        assert GPT_KEY not in str(caught.value) and OPENAI_KEY not in str(caught.value)
        assert gateway.keys == [] and openai.keys == []
        return
    with ImagesClient(**arguments, retry=FAST) as client:
        (image,) = client.generate("a key test", size="1024x1024")
    assert image.width == 1024
    where, key = expected
    seen = {"G": gateway.keys, "O": openai.keys}
    assert seen[where] == [key] and seen["O" if where == "G" else "G"] == []
    if kwargs.get("base_url") != "G" or kwargs.get("api_key") != OPENAI_KEY:
        assert OPENAI_KEY not in gateway.keys  # the gateway sees an OpenAI key only when paired by hand


def test_a_credentials_block_pairs_its_key_and_url(
    stand_ins: tuple[StandIn, StandIn], monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway, openai = stand_ins
    _set_env(monkeypatch, {"GPT_IMAGE_API_KEY": GPT_KEY, "OPENAI_API_KEY": OPENAI_KEY})
    with GptImageCredentials(api_key=OTHER_KEY, base_url=openai.base_url).get_client() as client:
        client.generate("a block's key", size="1024x1024")
    assert openai.keys == [OTHER_KEY] and gateway.keys == []


# Combinations whose key goes to a default host off this machine: the resolved configuration only.
RESOLVED: list[tuple[str, dict[str, str], dict[str, str], str, str]] = [
    ("gpt-key-alone-goes-to-the-gateway", {"GPT_IMAGE_API_KEY": GPT_KEY}, {}, DEFAULT_BASE_URL, GPT_KEY),
    ("openai-key-alone-goes-to-openai", {"OPENAI_API_KEY": OPENAI_KEY}, {}, OPENAI_BASE_URL, OPENAI_KEY),
    (
        "gpt-key-never-goes-to-openai-base-url",
        {"GPT_IMAGE_API_KEY": GPT_KEY, "OPENAI_BASE_URL": "https://openai.example/v1"},
        {},
        DEFAULT_BASE_URL,
        GPT_KEY,
    ),
    (
        "both-keys-no-urls-gpt-pair",
        {"GPT_IMAGE_API_KEY": GPT_KEY, "OPENAI_API_KEY": OPENAI_KEY},
        {},
        DEFAULT_BASE_URL,
        GPT_KEY,
    ),
    (
        "explicit-openai-key-alone-goes-to-openai",
        {"OPENAI_API_KEY": OPENAI_KEY, "GPT_IMAGE_API_KEY": GPT_KEY},
        {"api_key": OPENAI_KEY},
        OPENAI_BASE_URL,
        OPENAI_KEY,
    ),
    ("explicit-key-alone-is-the-gateways", {}, {"api_key": OTHER_KEY}, DEFAULT_BASE_URL, OTHER_KEY),
    (
        "gpt-base-url-on-openais-host-takes-the-openai-key",
        {"OPENAI_API_KEY": OPENAI_KEY, "GPT_IMAGE_BASE_URL": "https://api.openai.com/v1/"},
        {},
        OPENAI_BASE_URL,
        OPENAI_KEY,
    ),
]


@pytest.mark.parametrize("env,kwargs,url,key", [c[1:] for c in RESOLVED], ids=[c[0] for c in RESOLVED])
def test_key_matrix_towards_default_hosts_is_resolved_without_connecting(
    monkeypatch: pytest.MonkeyPatch,
    no_outside_connection: list[Any],
    env: dict[str, str],
    kwargs: dict[str, str],
    url: str,
    key: str,
) -> None:
    _set_env(monkeypatch, env)
    config = ClientConfig.from_env(**kwargs)
    assert (config.base_url, config.api_key.get_secret_value()) == (url, key)
    assert no_outside_connection == []


def test_no_key_names_both_pairs_and_the_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    _set_env(monkeypatch, {})
    with pytest.raises(ConfigurationError) as caught:
        ClientConfig.from_env()
    message = str(caught.value)
    for words in (
        "GPT_IMAGE_API_KEY",
        "GPT_IMAGE_BASE_URL",
        DEFAULT_BASE_URL,
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        OPENAI_BASE_URL,
        "prefect-gpt-image sandbox",
    ):
        assert words in message, (words, message)


@pytest.mark.parametrize(
    "url", ["http://images.example.com/v1", "http://10.0.0.5:8080/v1", "http://169.254.169.254/v1"]
)
def test_the_key_never_goes_over_plain_http_off_loopback(
    monkeypatch: pytest.MonkeyPatch, no_outside_connection: list[Any], url: str
) -> None:
    host = urlsplit(url).hostname or ""
    _set_env(monkeypatch, {"GPT_IMAGE_API_KEY": GPT_KEY, "GPT_IMAGE_BASE_URL": url})
    for make in (
        lambda: ImagesClient(retry=FAST),  # the environment
        lambda: ImagesClient(GPT_KEY, base_url=url),  # both explicit: still not over plain http
        lambda: ClientConfig(api_key=GPT_KEY, base_url=url),
    ):
        with pytest.raises(ConfigurationError, match=f"plain http to {host}") as caught:
            make()
        assert GPT_KEY not in str(caught.value)
    with pytest.raises(ValidationError, match="plain http"):
        GptImageCredentials(api_key=GPT_KEY, base_url=url)
    assert no_outside_connection == []  # refused before any lookup or connection
    for loopback in ("http://127.0.0.1:8099/v1", "http://[::1]:8099/v1", "http://localhost:8099/v1"):
        assert ClientConfig(api_key=GPT_KEY, base_url=loopback).base_url == loopback
