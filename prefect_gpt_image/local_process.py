"""What every throwaway local server of this package shares: a free port on 127.0.0.1, stopping a
child by its process group, and :class:`ThrowawayServer`, the start/close/context-manager shape of
:class:`~prefect_gpt_image.local_prefect.LocalPrefectServer` and
:class:`~prefect_gpt_image.local_postgres.LocalPostgres`.

Nothing here imports Prefect.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Self

from prefect_gpt_image.api.errors import GptImageError

__all__ = ["HOST", "PORT_ATTEMPTS", "LocalPrefectError", "ThrowawayServer", "free_port", "stop_process"]

HOST = "127.0.0.1"
"""The only address a throwaway server listens on."""

PORT_ATTEMPTS = 3
"""How many free ports a first start tries, when another process takes the chosen one meanwhile."""


class LocalPrefectError(GptImageError, RuntimeError):
    """A local Prefect server or PostgreSQL cluster could not be started."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, chosen by the OS (another process may take it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """Stop a child started with ``start_new_session=True``, and the processes it started: SIGTERM
    to its process group, SIGKILL after ``timeout`` seconds. Also when the child itself has ended
    before them (a shell whose background jobs outlive it: a Prefect worker whose server is gone
    can hang in its graceful shutdown); nothing happens when the whole group has ended."""
    if process.poll() is None:
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()
    if not _group_alive(process.pid):
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):  # what the child left
        _signal_group(process.pid, sig)
        deadline = time.monotonic() + wait
        while _group_alive(process.pid) and time.monotonic() < deadline:
            time.sleep(0.1)


def _group_alive(pid: int) -> bool:
    """Whether the process group ``pid`` still has a member."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class ThrowawayServer:
    """A local server process: ``start()`` launches it, ``close()`` stops it and removes what it
    left. As a context manager it is started on entry (and closed if that fails), closed on exit.
    ``log_path`` is the file that receives the server's log.
    """

    log_path: Path

    def start(self) -> Self:
        """Start the server; return once it answers."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop the server and remove its files."""
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else None."""
        raise NotImplementedError

    @property
    def running(self) -> bool:
        """Whether the server's process is alive."""
        return self.pid is not None

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _describe(self) -> str:
        return ""

    def __enter__(self) -> Self:
        with contextlib.ExitStack() as on_failure:
            on_failure.callback(self.close)
            self.start()
            on_failure.pop_all()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"{type(self).__name__}({self._describe()}, {state})"
