"""A throwaway Prefect server (``prefect server start``) for tests, benchmarks and CI.

The server runs as ``python -m prefect server start`` in a child process, on a free port of
127.0.0.1 (``PREFECT_SERVER_API_PORT`` too, or the UI would call port 4200), with a temporary
``PREFECT_HOME``, the UI and the background services a test does not need turned off, and
``DO_NOT_TRACK=1``. It is stopped by its PID (its whole process group).

Its database is a throwaway PostgreSQL cluster (:class:`LocalPostgres`, about 1 s to create) when
PostgreSQL's ``initdb``/``pg_ctl`` (on PATH or in Debian's ``/usr/lib/postgresql/<version>/bin``)
and ``asyncpg`` are installed, else SQLite in the server's home, as Prefect defaults to. Reason:
under concurrent flows Prefect's SQLite database locks up (its busy timeout is 60 s and clients
back off on the resulting 503s): a 20-task batch took 13 s or 135 s at random on SQLite and 5-8 s
on PostgreSQL.

The cluster is in :mod:`prefect_gpt_image.local_postgres`, what both servers share (free ports,
stopping a process group, the start/close shape) in :mod:`prefect_gpt_image.local_process`; their
public names are imported from here too.

Nothing here imports Prefect: a script can start a server and put :meth:`LocalPrefectServer.env`
into ``os.environ`` before it imports ``prefect``, which reads its settings when imported. (Only
:func:`drain_client_workers` touches Prefect, and only when this process has already imported it.)

Example::

    with LocalPrefectServer() as server:
        os.environ.update(server.env())
        ...  # import prefect, run flows against the server
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import inspect
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, Self

from .local_postgres import LocalPostgres, pg_binary, postgres_available
from .local_process import (
    HOST,
    PORT_ATTEMPTS,
    LocalPrefectError,
    ThrowawayServer,
    free_port,
    stop_process,
)

__all__ = [
    "DEFAULT_SERVICES_OFF",
    "DatabaseChoice",
    "LocalPostgres",
    "LocalPrefectError",
    "LocalPrefectServer",
    "drain_client_workers",
    "free_port",
    "pg_binary",
    "postgres_available",
    "stop_process",
]

DatabaseChoice = Literal["auto", "postgres", "sqlite"]
"""What :class:`LocalPrefectServer` runs on: PostgreSQL when available (``auto``), or one of them."""

DEFAULT_SERVICES_OFF: tuple[str, ...] = (
    "SCHEDULER",
    "LATE_RUNS",
    "FOREMAN",
    "PAUSE_EXPIRATIONS",
    "CANCELLATION_CLEANUP",
    "TRIGGERS",
    "DB_VACUUM",
)
"""Server services turned off by default (``PREFECT_SERVER_SERVICES_<NAME>_ENABLED=false``): a
throwaway server schedules nothing, and their loops cost CPU and database locks."""

_LOG_NAME = "server.log"
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""An HTTP opener that ignores ``HTTP_PROXY``: the health check talks to 127.0.0.1 only."""


def drain_client_workers() -> None:
    """Send the Prefect logs and events this process has queued, and stop their workers.

    Call it while the server they go to still runs: otherwise interpreter exit waits on their
    retries. Does nothing if this process has not imported Prefect; errors are ignored.
    """
    if "prefect" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        for service in (APILogWorker, EventsWorker):
            result = service.drain_all()
            if inspect.isawaitable(result):
                await result

    with contextlib.suppress(Exception):
        run_coro_as_sync(drain())


class LocalPrefectServer(ThrowawayServer):
    """A ``prefect server start`` process on a free port of 127.0.0.1, with its own home.

    ``database``: ``"auto"`` runs it on a :class:`LocalPostgres` when :func:`postgres_available`
    (SQLite if that cluster fails to start), ``"postgres"`` requires PostgreSQL, ``"sqlite"`` uses
    SQLite in the home. ``ui`` serves the UI too; ``services_off`` are the server services turned
    off; ``extra_env`` is added last to the server's environment (which has no ``PREFECT_*``
    variable of this process). ``start()`` waits until ``/api/health`` answers; ``stop()`` ends the
    process (home and database kept: ``start()`` brings the same server back); ``close()`` (or
    leaving the ``with`` block) also stops the database and deletes the home if it was made here.
    Attributes: ``home``, ``log_path`` (``server.log`` in the home), ``port`` (None until the first
    ``start()`` unless given), ``postgres`` (the :class:`LocalPostgres` it runs on, if any).
    """

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        *,
        database: DatabaseChoice = "auto",
        ui: bool = False,
        services_off: Sequence[str] = DEFAULT_SERVICES_OFF,
        extra_env: Mapping[str, str] | None = None,
        startup_timeout: float = 90.0,
        port: int | None = None,
    ) -> None:
        """Prepare (not start) a server; ``home`` (its ``PREFECT_HOME``, with its log) defaults to a
        new temporary directory, ``port`` to a free one."""
        if database not in ("auto", "postgres", "sqlite"):
            raise ValueError(f"database must be 'auto', 'postgres' or 'sqlite', not {database!r}")
        self._made_home = home is None
        self.home = Path(tempfile.mkdtemp(prefix="local-prefect-")) if home is None else Path(home).resolve()
        self.log_path = self.home / _LOG_NAME
        self.database_choice: DatabaseChoice = database
        self.ui = ui
        self.services_off = tuple(services_off)
        self.extra_env = dict(extra_env or {})
        self.startup_timeout = startup_timeout
        self.port = port
        self.postgres: LocalPostgres | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def _describe(self) -> str:
        return f"api_url={self.api_url!r}, database={self.database!r}"

    @property
    def api_url(self) -> str:
        """The API's URL, ``http://127.0.0.1:PORT/api`` (empty before the first ``start()``)."""
        return f"http://{HOST}:{self.port}/api" if self.port else ""

    @property
    def database(self) -> str:
        """The database the server runs on: ``"postgresql"`` or ``"sqlite"``."""
        return "postgresql" if self.postgres is not None else "sqlite"

    @property
    def pid(self) -> int | None:
        """The ``prefect server start`` process id while it runs, else None."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def start(self) -> Self:
        """Start the database if needed, then the server; return once ``/api/health`` answers."""
        if self.running:
            return self
        self._start_database()
        choose_port = self.port is None
        for attempt in range(PORT_ATTEMPTS):
            if choose_port:
                self.port = free_port()
            self._spawn()
            try:
                self._wait_healthy()
                break
            except LocalPrefectError:
                self._terminate()
                # A port taken between choosing and binding: choose again.
                if choose_port and attempt < PORT_ATTEMPTS - 1 and "already in use" in self.log_tail(5):
                    continue
                raise
        atexit.register(self._terminate)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Send this process's queued Prefect logs and events (:func:`drain_client_workers`), then
        stop the server (SIGTERM to its process group, SIGKILL after ``timeout`` s)."""
        if self.running:
            drain_client_workers()
        self._terminate(timeout)
        atexit.unregister(self._terminate)

    def close(self) -> None:
        """Stop the server and its PostgreSQL cluster; delete the home if this object made it."""
        self.stop()
        if self.postgres is not None:
            self.postgres.close()
        if self._made_home:
            shutil.rmtree(self.home, ignore_errors=True)

    # -- clients --------------------------------------------------------------------------------

    def env(self, home: str | os.PathLike[str] | None = None) -> dict[str, str]:
        """Environment variables that point a Prefect client at this server: a child process, or
        this one before it imports ``prefect``. ``home`` is the client's ``PREFECT_HOME`` (results
        under ``home/storage``), by default the server's; give each child its own to keep them apart.
        """
        client_home = self.home if home is None else Path(home)
        return {
            "PREFECT_API_URL": self.api_url,
            "PREFECT_HOME": str(client_home),
            "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(client_home / "storage"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
        }

    # -- internals ------------------------------------------------------------------------------

    def _start_database(self) -> None:
        if self.postgres is not None:
            self.postgres.start()
            return
        if self.database_choice == "sqlite":
            return
        if not postgres_available():
            if self.database_choice == "postgres":
                raise LocalPrefectError(
                    "PostgreSQL is not available: it needs initdb and pg_ctl (on PATH or in "
                    "/usr/lib/postgresql/*/bin) and asyncpg "
                    "(as root also runuser and a 'postgres' user); use database='sqlite'"
                )
            return
        postgres = LocalPostgres()
        try:
            postgres.start()
        except (LocalPrefectError, OSError):
            postgres.close()
            if self.database_choice == "postgres":
                raise
            return  # auto: SQLite
        self.postgres = postgres

    def _server_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            {
                "PREFECT_HOME": str(self.home),
                "PREFECT_SERVER_APIHOST": HOST,
                "PREFECT_SERVER_API_PORT": str(self.port),
                "PREFECT_API_URL": self.api_url,
                "PREFECT_SERVER_UI_ENABLED": "true" if self.ui else "false",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_LOGGING_LEVEL": "WARNING",
                "DO_NOT_TRACK": "1",
            }
        )
        for service in self.services_off:
            env[f"PREFECT_SERVER_SERVICES_{service}_ENABLED"] = "false"
        if self.postgres is not None:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.postgres.url
        env.update(self.extra_env)
        return env

    def _spawn(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "prefect", "server", "start", "--host", HOST]
        command += ["--port", str(self.port)]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(  # noqa: S603 - this Python, fixed arguments, no shell
                command,
                env=self._server_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.home,
                start_new_session=True,
            )

    def _healthy(self) -> bool:
        try:
            with _DIRECT.open(f"{self.api_url}/health", timeout=2) as answer:
                return bool(answer.status == 200)
        except (OSError, http.client.HTTPException):
            return False

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                code = None if self._process is None else self._process.returncode
                raise LocalPrefectError(f"prefect server exited ({code}); log tail:\n{self.log_tail()}")
            if self._healthy():
                return
            time.sleep(0.25)
        raise LocalPrefectError(
            f"prefect server on {self.api_url} not healthy after {self.startup_timeout:g} s; "
            f"log tail:\n{self.log_tail()}"
        )

    def _terminate(self, timeout: float = 15.0) -> None:
        process, self._process = self._process, None
        if process is not None:
            stop_process(process, timeout)
