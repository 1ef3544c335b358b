"""A throwaway Redis server for the lock tests: Debian's ``redis-server`` on a free port of
127.0.0.1, no persistence, its files in a temporary folder, stopped by its PID."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect_gpt_image.local_prefect import free_port, stop_process
from tests.support.ci import missing

REDIS_SERVER = shutil.which("redis-server")


def require_redis() -> str:
    """The path of ``redis-server``; the test is skipped without it, and fails when ``CI=true``."""
    if REDIS_SERVER is None:
        missing("needs Debian's redis-server (apt-get install -y redis-server)")
    return REDIS_SERVER


@contextmanager
def redis_server() -> Iterator[str]:
    """A running Redis server; yields its URL (``redis://127.0.0.1:PORT/0``)."""
    binary = require_redis()
    root = Path(tempfile.mkdtemp(prefix="gpt-image-redis-"))
    process: subprocess.Popen[bytes] | None = None
    try:
        for attempt in range(_PORT_ATTEMPTS):
            process, port = _spawn(binary, root)
            if _wait_ours(process, port):
                break
            stop_process(process)
            log = (root / "redis.log").read_text(errors="replace")
            # The port chosen was free, then taken before redis-server bound it: choose again.
            if attempt == _PORT_ATTEMPTS - 1 or "already in use" not in log.lower():
                raise RuntimeError(f"redis-server did not start: {log[-2000:]}")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        if process is not None:
            stop_process(process)
        shutil.rmtree(root, ignore_errors=True)


_PORT_ATTEMPTS = 3


def _spawn(binary: str, root: Path) -> tuple[subprocess.Popen[bytes], int]:
    """``redis-server`` on a port free now, no persistence, its log in ``root/redis.log``."""
    port = free_port()
    with (root / "redis.log").open("wb") as log:
        process = subprocess.Popen(
            [
                *(binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"),
                *("--dir", str(root), "--protected-mode", "yes"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process, port


def _wait_ours(process: subprocess.Popen[bytes], port: int, timeout: float = 10.0) -> bool:
    """Wait until the Redis answering on ``port`` is ``process`` (its INFO names its pid: not
    another Redis that took the port); False if ``process`` ended or ``timeout`` passed first."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if _answering_pid(port) == process.pid:
            return True
        time.sleep(0.05)  # polling the server's state, with a deadline
    return False


def _answering_pid(port: int) -> int | None:
    """The process id the Redis on ``port`` reports (``INFO server``), None if none answers."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"INFO server\r\n")
            data = b""
            while (found := re.search(rb"process_id:(\d+)\r\n", data)) is None:
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                data += chunk
    except OSError:
        return None
    return int(found.group(1))
