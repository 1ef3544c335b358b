"""A throwaway PostgreSQL cluster (:class:`LocalPostgres`) for a local Prefect server's database,
and how to tell whether one can run here (:func:`pg_binary`, :func:`postgres_available`).

Why PostgreSQL: under concurrent flows Prefect's SQLite database locks up (see
:mod:`prefect_gpt_image.local_prefect`). Nothing here imports Prefect.
"""

from __future__ import annotations

import atexit
import glob
import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Self

from .local_process import HOST, PORT_ATTEMPTS, LocalPrefectError, ThrowawayServer, free_port

__all__ = ["LocalPostgres", "pg_binary", "postgres_available"]

_PG_LOG_NAME = "pg.log"
_PG_USER = "prefect"
_PG_SETTINGS = (
    "-c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off "
    "-c max_connections=200"
)

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


class LocalPostgres(ThrowawayServer):
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
        return f"postgresql+asyncpg://{_PG_USER}@{HOST}:{self.port}/postgres"

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
        for attempt in range(PORT_ATTEMPTS):
            options = f"-p {self.port} -k {self.dir} {_PG_SETTINGS}"
            try:
                self._run(
                    pg_ctl, "-D", str(self.data_dir), "-o", options, "-l", str(self.log_path), "-w", "start"
                )
                break
            except LocalPrefectError:
                # A port taken between choosing and binding: choose again (first start only).
                taken = "already in use" in self.log_tail(20)
                if self._choose_port and taken and attempt < PORT_ATTEMPTS - 1:
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
