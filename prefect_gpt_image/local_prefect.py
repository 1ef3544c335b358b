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
import glob
import http.client
import importlib.util
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
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Self

from prefect_gpt_image.api.errors import GptImageError

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

_HOST = "127.0.0.1"
_LOG_NAME = "server.log"
_PG_LOG_NAME = "pg.log"
_PG_USER = "prefect"
_PG_SETTINGS = (
    "-c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off "
    "-c max_connections=200"
)
_PORT_ATTEMPTS = 3
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""An HTTP opener that ignores ``HTTP_PROXY``: the health check talks to 127.0.0.1 only."""


class LocalPrefectError(GptImageError, RuntimeError):
    """A local Prefect server or PostgreSQL cluster could not be started."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, chosen by the OS (another process may take it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """Stop a child started with ``start_new_session=True``, and the processes it started: SIGTERM
    to its process group, SIGKILL after ``timeout`` seconds. Nothing happens if it has ended."""
    if process.poll() is not None:
        return
    _signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        _signal_group(process.pid, signal.SIGKILL)
        process.wait()


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


_DEBIAN_PG_BIN = "/usr/lib/postgresql/*/bin"
"""Where Debian's ``postgresql`` package puts ``initdb`` and ``pg_ctl`` (not on PATH there)."""


def pg_binary(name: str) -> str | None:
    """The path of PostgreSQL's ``name`` (``initdb``, ``pg_ctl``): on PATH, else in Debian's
    ``/usr/lib/postgresql/<version>/bin`` (the newest version), else None."""
    found = shutil.which(name)
    if found:
        return found
    candidates = [Path(d) / name for d in glob.glob(_DEBIAN_PG_BIN)]
    runnable = [c for c in candidates if os.access(c, os.X_OK)]
    if not runnable:
        return None
    return str(max(runnable, key=lambda c: _version_key(c.parent.parent.name)))


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def postgres_available() -> bool:
    """Whether :class:`LocalPostgres` can run here: ``initdb`` and ``pg_ctl`` found (:func:`pg_binary`),
    ``asyncpg`` (Prefect's PostgreSQL driver) installed and, as root, ``runuser`` and a ``postgres``
    user (PostgreSQL refuses to run as root)."""
    if not (pg_binary("initdb") and pg_binary("pg_ctl")):
        return False
    if os.geteuid() == 0:
        if not shutil.which("runuser"):
            return False
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return False
    return importlib.util.find_spec("asyncpg") is not None


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


class _Throwaway:
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


class LocalPostgres(_Throwaway):
    """A throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl``) on a free port of 127.0.0.1.

    Made for a Prefect server's database in tests: user ``prefect`` with trust authentication,
    durability off (``fsync``, synchronous commit, full-page writes), 200 connections, its data,
    socket and log in a new temporary directory. As root it runs as the ``postgres`` user through
    ``runuser``. ``stop()`` ends it and keeps its data (``start()`` brings it back); ``close()``
    (or leaving the ``with`` block) stops it and deletes the directory. Attributes: ``dir`` (that
    directory), ``data_dir``, ``log_path``, ``port``.
    """

    def __init__(self, *, port: int | None = None) -> None:
        """Prepare (not start) a cluster in a new temporary directory; ``port`` defaults to a free one."""
        self.dir = Path(tempfile.mkdtemp(prefix="local-prefect-pg-"))
        self.data_dir = self.dir / "data"
        self.log_path = self.dir / _PG_LOG_NAME
        self.port = port if port is not None else free_port()
        self._choose_port = port is None  # until the first start: a port taken meanwhile is replaced
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _describe(self) -> str:
        return f"url={self.url!r}, dir='{self.dir}'"

    @property
    def url(self) -> str:
        """The SQLAlchemy URL a Prefect server connects with (``PREFECT_API_DATABASE_CONNECTION_URL``)."""
        return f"postgresql+asyncpg://{_PG_USER}@{_HOST}:{self.port}/postgres"

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while it runs (from ``postmaster.pid``), else None."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, another user's
        return pid

    def start(self) -> Self:
        """Create the cluster (first time only) and start it; return once it accepts connections."""
        if self.running:
            return self
        initdb, pg_ctl = pg_binary("initdb"), pg_binary("pg_ctl")
        if not (initdb and pg_ctl):
            raise LocalPrefectError(
                "PostgreSQL's initdb and pg_ctl are neither on PATH nor in /usr/lib/postgresql/*/bin"
            )
        if self._as:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise LocalPrefectError("running as root, and there is no 'postgres' user") from None
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                initdb, "-D", str(self.data_dir), "-U", _PG_USER, "--auth=trust", "-E", "UTF8", "--no-sync"
            )
        for attempt in range(_PORT_ATTEMPTS):
            options = f"-p {self.port} -k {self.dir} {_PG_SETTINGS}"
            try:
                self._run(
                    pg_ctl, "-D", str(self.data_dir), "-o", options, "-l", str(self.log_path), "-w", "start"
                )
                break
            except LocalPrefectError:
                # A port taken between choosing and binding: choose again (first start only).
                taken = "already in use" in self.log_tail(20)
                if self._choose_port and taken and attempt < _PORT_ATTEMPTS - 1:
                    self.port = free_port()
                    continue
                raise
        self._choose_port = False  # a restart after stop() keeps the port clients know
        atexit.register(self.stop)
        return self

    def stop(self) -> None:
        """Stop the cluster at once (``pg_ctl stop -m immediate``); its data is kept."""
        pg_ctl = pg_binary("pg_ctl")
        if pg_ctl and (self.data_dir / "postmaster.pid").exists():
            subprocess.run(  # noqa: S603 - fixed binary and flags, no shell
                [*self._as, pg_ctl, "-D", str(self.data_dir), "-m", "immediate", "stop"],
                capture_output=True,
                check=False,
            )
        atexit.unregister(self.stop)

    def close(self) -> None:
        """Stop the cluster and delete its directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _run(self, *command: str) -> None:
        try:
            result = subprocess.run(  # noqa: S603 - fixed binaries and flags, no shell
                [*self._as, *command], capture_output=True, check=False
            )
        except OSError as exc:
            raise LocalPrefectError(f"{Path(command[0]).name} could not run: {exc}") from exc
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace").strip()[-3000:]
            raise LocalPrefectError(
                f"{Path(command[0]).name} failed ({result.returncode}):\n{output}\n"
                f"log tail:\n{self.log_tail()}"
            )


class LocalPrefectServer(_Throwaway):
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
        return f"http://{_HOST}:{self.port}/api" if self.port else ""

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
        for attempt in range(_PORT_ATTEMPTS):
            if choose_port:
                self.port = free_port()
            self._spawn()
            try:
                self._wait_healthy()
                break
            except LocalPrefectError:
                self._terminate()
                # A port taken between choosing and binding: choose again.
                if choose_port and attempt < _PORT_ATTEMPTS - 1 and "already in use" in self.log_tail(5):
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
                "PREFECT_SERVER_API_HOST": _HOST,
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
        command = [sys.executable, "-m", "prefect", "server", "start", "--host", _HOST]
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
