"""The client's connection pool (``api.pool``) against a small HTTP/1.1 server on 127.0.0.1 that
the test controls: which connections it keeps, when it hangs up."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from prefect_gpt_image.api.client import AsyncImagesClient
from prefect_gpt_image.api.pool import LinearPool, pooled_transport


class Server:
    """Answers every request with ``200 ok``; ``hang_up`` closes each connection after its first
    answer; ``hold`` keeps answers back until set. Counts the connections it accepted."""

    def __init__(self, *, hang_up: bool = False) -> None:
        self.hang_up = hang_up
        self.accepted = 0
        self.closed = asyncio.Event()
        self.hold = asyncio.Event()
        self.hold.set()
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    return
                await self.hold.wait()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
                if self.hang_up:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()
            await writer.wait_closed()  # the FIN is in the client's socket when this is set
            self.closed.set()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Server]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()


def _client(max_connections: int, max_keepalive: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_keepalive)
    return httpx.AsyncClient(transport=pooled_transport(limits, ssl.create_default_context()))


def test_the_images_client_uses_the_linear_pool_with_its_limits() -> None:
    async def run() -> None:
        async with AsyncImagesClient("sk-x", base_url="http://127.0.0.1:9/v1") as client:
            pool = client._http._transport._pool  # type: ignore[attr-defined]
            assert isinstance(pool, LinearPool)
            assert pool._max_connections == pool._max_keepalive_connections == client.config.max_connections

    asyncio.run(run())


def test_a_connection_the_server_closed_is_never_used_again() -> None:
    """The server hangs up after each answer: the next request goes on a new connection, never
    on the closed one (where a POST would be lost after it was sent, maybe billed)."""

    async def run() -> None:
        async with Server(hang_up=True).running() as server, _client(4, 4) as client:
            url = f"http://127.0.0.1:{server.port}/"
            assert (await client.get(url)).text == "ok"
            await server.closed.wait()
            assert (await client.get(url)).text == "ok"
            assert server.accepted == 2

    asyncio.run(run())


def test_connections_are_reused_and_idle_ones_beyond_the_keepalive_limit_closed() -> None:
    """Three requests at once open three connections (max 3); once answered, one is kept idle
    (keep-alive 1) and serves the next requests alone."""

    async def run() -> None:
        server = Server()
        async with server.running(), _client(3, 1) as client:
            url = f"http://127.0.0.1:{server.port}/"
            server.hold.clear()
            pending = [asyncio.ensure_future(client.get(url)) for _ in range(3)]
            while server.accepted < 3:
                await asyncio.sleep(0.01)
            server.hold.set()
            assert [(await r).text for r in pending] == ["ok"] * 3
            for _ in range(5):
                assert (await client.get(url)).text == "ok"
            pool = client._transport._pool  # type: ignore[attr-defined]
            assert len(pool.connections) == 1 and server.accepted == 3
            # A fourth request at once never exceeds max_connections: it waits for a free one.
            server.hold.clear()
            pending = [asyncio.ensure_future(client.get(url)) for _ in range(4)]
            while server.accepted < 5 or len(pool._requests) < 4:
                await asyncio.sleep(0.01)
            assert len(pool.connections) == 3
            assert sum(request.is_queued() for request in pool._requests) == 1
            server.hold.set()
            assert [(await r).text for r in pending] == ["ok"] * 4

    asyncio.run(run())
