"""Pytest fixtures for a REAL Prefect server: ``prefect_server`` (one per session) and
``prefect_env`` (a clean Prefect home, results folder, spool and lock folder per test).

The server is :class:`~prefect_gpt_image.local_prefect.LocalPrefectServer`: ``prefect server
start`` in a subprocess on a free port of 127.0.0.1 with a temporary ``PREFECT_HOME``, the UI and
the services the tests do not need turned off, stopped by its PID at the end; on a throwaway
PostgreSQL cluster when ``initdb``/``pg_ctl`` and ``asyncpg`` are installed (under concurrent
flows Prefect's SQLite database locks up), else SQLite. ``GPT_IMAGE_TEST_PREFECT_DB=sqlite``
forces SQLite. A test that only means something on PostgreSQL uses the ``needs_postgres``
fixture: skipped without it, failed under ``CI=true``. Register with
``pytest_plugins = ["tests.support.prefect"]``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from prefect_gpt_image.local_prefect import LocalPrefectServer, drain_client_workers, postgres_available
from tests.support.ci import missing

__all__ = [
    "PrefectServer",
    "flow_run",
    "flow_run_artifacts",
    "flow_run_logs",
    "needs_postgres",
    "prefect_env",
    "prefect_server",
    "use_postgres",
]


class PrefectServer(LocalPrefectServer):
    """The session's server: a :class:`LocalPrefectServer` with the tests' ``client_env`` name."""

    def client_env(self, home: Path) -> dict[str, str]:
        """Environment variables that point a child process (with its own ``home``) at this server."""
        return self.env(home)


def use_postgres() -> bool:
    """Whether test servers run on PostgreSQL: it is installed and ``GPT_IMAGE_TEST_PREFECT_DB``
    is not ``sqlite``."""
    if os.environ.get("GPT_IMAGE_TEST_PREFECT_DB", "").lower() == "sqlite":
        return False
    return postgres_available()


@pytest.fixture
def needs_postgres() -> None:
    """For a test that only means something on PostgreSQL (``pytest.mark.usefixtures("needs_postgres")``):
    skipped without it, FAILS under ``CI=true``."""
    if use_postgres():
        return
    if postgres_available():
        missing("needs PostgreSQL, and GPT_IMAGE_TEST_PREFECT_DB=sqlite turned it off")
    missing(
        "needs PostgreSQL (Debian's postgresql: initdb and pg_ctl on PATH or in "
        "/usr/lib/postgresql/*/bin; as root runuser and a 'postgres' user) and asyncpg"
    )


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[PrefectServer]:
    """A real Prefect server for the whole session; the test process's API URL points at it."""
    import prefect.context
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings

    saved_url = os.environ.get("PREFECT_API_URL")
    with PrefectServer(database="auto" if use_postgres() else "sqlite") as server:
        api_url = server.api_url
        try:
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
                yield server
                drain_client_workers()
        finally:
            if saved_url is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = saved_url


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
