"""A throwaway Redis server for the lock tests: Debian's ``redis-server`` on a free port of
127.0.0.1, no persistence, its files in a temporary folder, stopped by its PID."""

from __future__ import annotations

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
    port = free_port()
    log = (root / "redis.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(root),
            "--protected-mode",
            "yes",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {(root / 'redis.log').read_text()[-2000:]}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_process(process)
        log.close()
        shutil.rmtree(root, ignore_errors=True)
