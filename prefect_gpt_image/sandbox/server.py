"""Run the sandbox app with uvicorn in a background thread, on a socket bound up front.

Binding the socket before uvicorn starts means port 0 gives a free port with no race, and the
port is known as soon as :meth:`SandboxServer.start` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import threading
import time
from types import TracebackType
from typing import Any, Self

import uvicorn

from .app import SandboxState, create_app
from .config import FaultConfig, SandboxConfig
from .hold import AnswerHold
from .ledger import Ledger
from .media import MediaCount

__all__ = ["SandboxServer"]

_START_TIMEOUT = 10.0


class _UvicornServer(uvicorn.Server):
    """uvicorn's server, woken at once by :meth:`request_exit` instead of at its next 0.1 s tick."""

    _loop: asyncio.AbstractEventLoop | None = None
    _wake: asyncio.Event | None = None

    async def main_loop(self) -> None:
        """uvicorn's housekeeping loop (Date header, exit check), interruptible."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.1)
            should_exit = await self.on_tick(counter)

    def request_exit(self) -> None:
        """Ask the server to shut down (callable from any thread)."""
        self.should_exit = True
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(wake.set)


class SandboxServer:
    """The offline gpt-image-2 server: ``with SandboxServer(latency=0.5) as sb: ... sb.base_url``.

    ``config`` is a :class:`SandboxConfig`; keyword ``overrides`` replace its fields. The server
    runs in a daemon thread with its own event loop; :meth:`stop` (or leaving the ``with`` block)
    shuts it down and frees the port.
    """

    def __init__(self, config: SandboxConfig | None = None, **overrides: Any) -> None:
        """Prepare (not start) a server with ``config`` and field ``overrides``."""
        base = config or SandboxConfig()
        self.config = dataclasses.replace(base, **overrides) if overrides else base
        self.state = SandboxState(self.config)
        self.app = create_app(self.state)
        self._server: _UvicornServer | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._port: int | None = None
        self._error: BaseException | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Self:
        """Bind, start serving in a background thread and wait (up to 10 s) until it is ready."""
        if self._thread is not None:
            raise RuntimeError("the sandbox server is already running")
        host = self.config.host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on sockets that say they are TCP
        # (proto 0 would add a 40 ms delayed-ACK stall to every response).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, self.config.port))
            sock.listen(2048)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._port = int(sock.getsockname()[1])
        uv_config = uvicorn.Config(
            self.app,
            log_level="warning",
            log_config=None,
            access_log=False,
            lifespan="off",
            http="h11",
            ws="none",
            loop="asyncio",
            timeout_graceful_shutdown=2,
        )
        server = _UvicornServer(uv_config)
        self._server = server
        self._error = None
        thread = threading.Thread(
            target=self._run, args=(server, sock), name=f"gpt-image-sandbox:{self._port}", daemon=True
        )
        self._thread = thread
        thread.start()
        deadline = time.monotonic() + _START_TIMEOUT
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                error = self._error
                self.stop()
                raise RuntimeError(f"the sandbox server did not start: {error!r}") from error
            time.sleep(0.005)
        return self

    def _run(self, server: _UvicornServer, sock: socket.socket) -> None:
        """Thread body: serve until asked to exit; keep any startup error for start()."""
        try:
            asyncio.run(server.serve(sockets=[sock]))
        except BaseException as exc:
            self._error = exc

    def stop(self) -> None:
        """Shut down (in-flight requests get 2 s to finish), join the thread, free the port."""
        server, thread, sock = self._server, self._thread, self._sock
        self.state.hold.release()  # a held download must not keep the server from stopping
        if server is not None:
            server.request_exit()
        if thread is not None:
            thread.join(timeout=5.0)
            if thread.is_alive() and server is not None:
                server.force_exit = True
                thread.join(timeout=5.0)
        if sock is not None:
            sock.close()
        self._server = self._thread = self._sock = None

    def __enter__(self) -> Self:
        """Start the server."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server."""
        self.stop()

    @property
    def running(self) -> bool:
        """True while the server thread is serving."""
        return self._thread is not None and self._thread.is_alive()

    # -- addresses -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port (known once started)."""
        if self._port is None:
            raise RuntimeError("the sandbox server has not been started")
        return self._port

    @property
    def url(self) -> str:
        """The server root, e.g. ``http://127.0.0.1:PORT`` (media and control routes live here)."""
        host = self.config.host
        if host in ("0.0.0.0", ""):  # noqa: S104 - only mapping a wildcard bind to loopback
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The API base URL to give a client: ``http://127.0.0.1:PORT/v1``."""
        return f"{self.url}/v1"

    # -- state ---------------------------------------------------------------------------------

    @property
    def ledger(self) -> Ledger:
        """Billing ledger and request log (thread-safe)."""
        return self.state.ledger

    @property
    def hold(self) -> AnswerHold:
        """The answer hold: result downloads kept waiting until released (see :mod:`.hold`)."""
        return self.state.hold

    def media_counts(self) -> dict[str, MediaCount]:
        """GET counts of every result URL by media name (as ``GET /sandbox/media`` serves them),
        kept after the images expire."""
        return self.state.media.counts()

    def script_faults(self, kinds: list[str] | tuple[str, ...]) -> list[str]:
        """Queue fault kinds (``"none"`` = no fault) for the next image requests, in order."""
        return self.state.faults.add_script(kinds)

    def set_faults(self, faults: FaultConfig) -> None:
        """Replace the random fault probabilities (and re-seed) while running."""
        self.state.set_faults(faults)

    def reset(self) -> None:
        """Clear the ledger, request log, scripted faults and counters (media GET counts too);
        re-seed the faults."""
        self.state.reset()

    def __repr__(self) -> str:
        """Class name and address."""
        where = self.base_url if self._port is not None else "not started"
        return f"SandboxServer({where})"
