"""Pytest fixtures for a REAL Prefect server: ``prefect_server`` (one per session) and
``prefect_env`` (a clean Prefect home, results folder, spool and lock folder per test).

The server is ``prefect server start`` in a subprocess: a temporary ``PREFECT_HOME``, a free port
on 127.0.0.1 (``PREFECT_SERVER_API_PORT`` too, or the UI would call 4200), the UI and the services
the tests do not need turned off, ``DO_NOT_TRACK=1``; it is stopped by its PID at the end.

Database: SQLite in that home, as Prefect defaults to, unless PostgreSQL's ``initdb``/``pg_ctl``
and ``asyncpg`` are installed, in which case a throwaway PostgreSQL cluster on a free port is used
(about 1 s to create). Reason: under concurrent flows Prefect's SQLite database locks up; its busy
timeout is 60 s and its client backs off on the resulting 503s, so a 20-task batch measured here took
13 s or 135 s at random on SQLite and 5-8 s on PostgreSQL. ``GPT_IMAGE_TEST_PREFECT_DB=sqlite``
forces SQLite. Register with ``pytest_plugins = ["tests.support.prefect"]``.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

__all__ = [
    "PrefectServer",
    "flow_run",
    "flow_run_artifacts",
    "flow_run_logs",
    "prefect_env",
    "prefect_server",
]

_STARTUP_TIMEOUT = 90.0
_OFF_SERVICES = (
    "SCHEDULER",
    "LATE_RUNS",
    "FOREMAN",
    "PAUSE_EXPIRATIONS",
    "CANCELLATION_CLEANUP",
    "TRIGGERS",
    "DB_VACUUM",
)


@dataclass(frozen=True)
class PrefectServer:
    """A running Prefect server: its API URL, home folder, process id and log file."""

    api_url: str
    home: Path
    pid: int
    log_path: Path

    def client_env(self, home: Path) -> dict[str, str]:
        """Environment variables that point a child process (with its own ``home``) at this server."""
        return {
            "PREFECT_API_URL": self.api_url,
            "PREFECT_HOME": str(home),
            "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(home / "storage"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
        }


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_env(home: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(port),
            "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
            "PREFECT_SERVER_UI_ENABLED": "false",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "DO_NOT_TRACK": "1",
        }
    )
    for service in _OFF_SERVICES:
        env[f"PREFECT_SERVER_SERVICES_{service}_ENABLED"] = "false"
    return env


def _wait_healthy(api_url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"prefect server exited ({process.returncode}):\n{log_path.read_text()[-3000:]}"
            )
        try:
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(
        f"prefect server not healthy after {_STARTUP_TIMEOUT:g} s:\n{log_path.read_text()[-3000:]}"
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class _Postgres:
    """A throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl``) on a free port of 127.0.0.1.

    As root (PostgreSQL refuses to run as root) it runs as the ``postgres`` user via ``runuser``.
    """

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="prefect-pg-"))
        self.port = _free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://prefect@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
        assert initdb and pg_ctl
        data = self.dir / "data"
        subprocess.run(
            [*self._as, initdb, "-D", str(data), "-U", "prefect", "--auth=trust", "-E", "UTF8", "--no-sync"],
            check=True,
            capture_output=True,
        )
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        subprocess.run(
            [
                *self._as,
                pg_ctl,
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(self.dir / "pg.log"),
                "-w",
                "start",
            ],
            check=True,
            capture_output=True,
        )

    def stop(self) -> None:
        pg_ctl = shutil.which("pg_ctl")
        if pg_ctl and (self.dir / "data" / "postmaster.pid").exists():
            subprocess.run(
                [*self._as, pg_ctl, "-D", str(self.dir / "data"), "-m", "immediate", "stop"],
                capture_output=True,
                check=False,
            )
        shutil.rmtree(self.dir, ignore_errors=True)


def _postgres_available() -> bool:
    if os.environ.get("GPT_IMAGE_TEST_PREFECT_DB", "").lower() == "sqlite":
        return False
    if not (shutil.which("initdb") and shutil.which("pg_ctl")):
        return False
    if os.geteuid() == 0 and not shutil.which("runuser"):
        return False
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        return False
    return True


def _start_database() -> _Postgres | None:
    """A PostgreSQL cluster when possible, else None (SQLite)."""
    if not _postgres_available():
        return None
    postgres = _Postgres()
    try:
        postgres.start()
    except (subprocess.CalledProcessError, OSError, KeyError, AssertionError):
        postgres.stop()
        return None
    return postgres


def _drain_workers() -> None:
    """Send queued logs and events before the server goes away (else exit waits on retries)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        try:
            result = APILogWorker.instance().drain()
            if inspect.isawaitable(result):
                await result
        except RuntimeError:
            pass  # never started
        result = EventsWorker.drain_all()
        if inspect.isawaitable(result):
            await result

    run_coro_as_sync(drain())


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[PrefectServer]:
    """A real Prefect server for the whole session; the test process's API URL points at it."""
    import prefect.context
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings

    root = Path(tempfile.mkdtemp(prefix="prefect-server-"))
    home = root / "home"
    home.mkdir()
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    log_path = root / "server.log"
    database = _start_database()
    env = _server_env(home, port)
    if database is not None:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database.url
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=root,
            start_new_session=True,
        )
    saved_url = os.environ.get("PREFECT_API_URL")
    try:
        _wait_healthy(api_url, process, log_path)
        # Child processes read the environment.
        os.environ["PREFECT_API_URL"] = api_url
        with contextlib.ExitStack() as stack:
            stack.enter_context(
                temporary_settings({PREFECT_API_URL: api_url, PREFECT_SERVER_ANALYTICS_ENABLED: False})
            )
            # Threads started without a copy of our context (Prefect's service loops) read the
            # global settings context: point it at this server too, as prefect_test_harness does.
            global_context = getattr(prefect.context, "_temporary_global_settings_context", None)
            if global_context is not None:
                stack.enter_context(global_context(prefect.context.get_settings_context()))
            yield PrefectServer(api_url=api_url, home=home, pid=process.pid, log_path=log_path)
            _drain_workers()
    finally:
        if saved_url is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = saved_url
        _stop(process)
        if database is not None:
            database.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def prefect_env(
    prefect_server: PrefectServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """A clean ``PREFECT_HOME`` (results, locks) and spool for one test, on the session server.

    Results under ``$PREFECT_HOME/storage`` would otherwise leak between tests (the harness
    isolates only the database). Yields the temporary home.
    """
    from prefect.settings import PREFECT_HOME, PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings

    home = tmp_path / "prefect-home"
    home.mkdir()
    monkeypatch.setenv("PREFECT_HOME", str(home))
    monkeypatch.setenv("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(home / "storage"))
    monkeypatch.setenv("GPT_IMAGE_SPOOL", str(tmp_path / "spool"))
    monkeypatch.delenv("GPT_IMAGE_LOCK_DIR", raising=False)
    monkeypatch.delenv("GPT_IMAGE_STORAGE", raising=False)
    with temporary_settings(
        {PREFECT_HOME: str(home), PREFECT_RESULTS_LOCAL_STORAGE_PATH: str(home / "storage")}
    ):
        yield home


def flow_run_logs(flow_run_id: Any) -> list[str]:
    """Every log message the server holds for a flow run and its task runs (sent ones flushed)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200, offset=0
        )
    return [log.message for log in logs]


def flow_run_artifacts(flow_run_id: Any) -> list[dict[str, Any]]:
    """Every artifact of a flow run (and its task runs), as the REST API returns them.

    (Prefect 3.8.8's ``read_artifacts`` sends ``null`` for unset filters, which its server refuses.)
    """
    from prefect.settings import PREFECT_API_URL

    response = httpx.post(
        f"{PREFECT_API_URL.value()}/artifacts/filter",
        json={"artifacts": {"flow_run_id": {"any_": [str(flow_run_id)]}}, "limit": 200},
        timeout=30,
    )
    response.raise_for_status()
    return list(response.json())


def flow_run(flow_run_id: Any) -> Any:
    """The flow run as the server has it (parameters included)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)
