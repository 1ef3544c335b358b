"""``prefect_gpt_image.local_prefect``: a throwaway Prefect server answers, its ``env()`` points a
client at it, and nothing is left behind (process, home, PostgreSQL cluster) after the block."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from prefect_gpt_image import local_postgres
from prefect_gpt_image.local_prefect import LocalPostgres, LocalPrefectServer, pg_binary
from prefect_gpt_image.local_process import stop_process

_CLIENT = """
import json, sys
import prefect.settings
from prefect.client.orchestration import get_client

with get_client(sync_client=True) as client:
    client.upsert_global_concurrency_limit_by_name(sys.argv[1], 3)
    limit = client.read_global_concurrency_limit_by_name(sys.argv[1])
print(json.dumps({"limit": limit.limit, "home": str(prefect.settings.PREFECT_HOME.value())}))
"""


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting for init counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_import_leaves_prefect_unimported() -> None:
    code = "import sys, prefect_gpt_image.local_prefect; assert 'prefect' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_postgres_binaries_are_found_where_debian_puts_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Debian's ``postgresql`` installs ``initdb``/``pg_ctl`` in ``/usr/lib/postgresql/<version>/bin``,
    not on PATH: they are found there (the newest version, compared as numbers), so CI's
    PostgreSQL tests run on a fresh machine instead of falling back or being skipped."""
    for version in ("9.6", "13", "15"):
        bin_dir = tmp_path / version / "bin"
        bin_dir.mkdir(parents=True)
        for name in ("initdb", "pg_ctl"):
            (bin_dir / name).write_text("#!/bin/sh\n")
            (bin_dir / name).chmod(0o755)
    (tmp_path / "16" / "bin").mkdir(parents=True)  # a version without the server binaries
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(local_postgres, "_DEBIAN_PG_BIN", str(tmp_path / "*" / "bin"))
    assert pg_binary("initdb") == str(tmp_path / "15" / "bin" / "initdb")
    assert pg_binary("pg_ctl") == str(tmp_path / "15" / "bin" / "pg_ctl")
    assert pg_binary("postgres") is None
    # on PATH wins
    monkeypatch.setenv("PATH", str(tmp_path / "13" / "bin"))
    assert pg_binary("initdb") == str(tmp_path / "13" / "bin" / "initdb")


@pytest.mark.usefixtures("needs_postgres")
def test_postgres_whose_port_was_taken_meanwhile_starts_on_another() -> None:
    """The port a cluster chose was free when chosen; another process bound it before PostgreSQL
    did (held here, listening): the first start picks another port instead of failing (in
    ``auto`` mode the Prefect server would silently fall back to SQLite)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        postgres = LocalPostgres()
        postgres.port = port  # as if free_port() had returned it and it was taken since
        try:
            postgres.start()
            assert postgres.pid is not None and postgres.port != port
            assert "already in use" in postgres.log_tail(200)
        finally:
            postgres.close()
    assert not postgres.dir.exists()


def test_unknown_database_is_refused() -> None:
    with pytest.raises(ValueError, match="database"):
        LocalPrefectServer(database="mysql")  # type: ignore[arg-type]


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_server_serves_a_client_and_leaves_nothing(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if database == "postgres":
        request.getfixturevalue("needs_postgres")  # skipped without PostgreSQL, fails in CI
    client_home = tmp_path / "client-home"
    name = f"local-prefect-test-{uuid.uuid4().hex[:8]}"
    with LocalPrefectServer(database=database) as server:  # type: ignore[arg-type]
        assert server.database == ("postgresql" if database == "postgres" else "sqlite")
        assert server.api_url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{server.api_url}/health", timeout=5).json() is True
        pid, home, postgres = server.pid, server.home, server.postgres
        assert pid is not None and _alive(pid) and home.is_dir()
        if database == "postgres":
            assert postgres is not None and postgres.pid is not None

        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(server.env(client_home))
        assert env["DO_NOT_TRACK"] == "1"
        child = subprocess.run(
            [sys.executable, "-c", _CLIENT, name],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert child.returncode == 0, child.stderr[-3000:]
        answer = json.loads(child.stdout.strip().splitlines()[-1])
        assert answer == {"limit": 3, "home": str(client_home)}
        # the limit really is on this server
        limit = httpx.get(f"{server.api_url}/v2/concurrency_limits/{name}", timeout=5)
        assert limit.status_code == 200 and limit.json()["limit"] == 3

    assert server.pid is None and not _alive(pid)
    assert not home.exists()
    if postgres is not None:
        assert not postgres.dir.exists()
        assert not any(_alive(p) for p in _pids_of(str(postgres.dir)))


def _pids_of(fragment: str) -> list[int]:
    """Processes whose command line mentions ``fragment``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if fragment in cmdline:
                pids.append(int(entry.name))
    return pids


def test_stop_process_also_stops_what_an_ended_child_left_in_its_group() -> None:
    """A shell that started a background job and exited (the docs' deploy steps end so, their
    worker still shutting down): stop_process stops the job too, not only a running child."""
    shell = subprocess.Popen(
        ["bash", "-c", "trap '' TERM; sleep 300 >/dev/null & echo $!"],  # the job ignores SIGTERM: SIGKILL it
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    job = int(shell.communicate(timeout=30)[0].strip())
    assert shell.returncode == 0
    os.kill(job, 0)  # the job outlived its shell, in the shell's process group
    assert os.getpgid(job) == shell.pid
    stop_process(shell, timeout=1.0)
    with pytest.raises(ProcessLookupError):
        os.killpg(shell.pid, 0)
