"""Shared setup of the benchmarks: servers, environment, timing helpers and the report format.

Every benchmark starts what it needs itself and stops it by PID when it ends (also on Ctrl-C or
SIGTERM): the sandbox in a thread of this process (or a child process where the benchmark
measures this process's memory), a Prefect server through
:class:`~prefect_gpt_image.local_prefect.LocalPrefectServer` (``prefect server start`` on a free
port of 127.0.0.1, temporary ``PREFECT_HOME``, PostgreSQL when ``initdb``/``pg_ctl`` and
``asyncpg`` are installed, else SQLite) and SeaweedFS through
:class:`~prefect_gpt_image.local_s3.LocalS3Server`.

Prefect reads its settings from the environment when it is imported, so :func:`start_stack` runs
before anything imports ``prefect``; the benchmarks import the plugin inside their functions.

Output: :func:`report` prints a table, a MET/MISSED line per target (:func:`compare`), then a LAST
line of ``name=value`` pairs; :func:`exit_code` makes a miss exit 1 under ``BENCH_STRICT=1``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from prefect_gpt_image.local_prefect import DatabaseChoice, LocalPrefectServer, free_port, stop_process

os.environ["DO_NOT_TRACK"] = "1"

API_KEY = "sk-bench-0000000000000000"
_STARTUP_TIMEOUT = 120.0

# -- command line ------------------------------------------------------------------------------


def parser(description: str, *, n: int, k: int, latency: float) -> argparse.ArgumentParser:
    """The flags every benchmark has: ``--n``, ``--k``, ``--latency``, ``--db``, ``--profile``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--n", type=int, default=n, help="images per batch (default %(default)s)")
    p.add_argument(
        "--k", type=int, default=k, help="global concurrency limit = sandbox cap (default %(default)s)"
    )
    p.add_argument(
        "--latency", type=float, default=latency, help="sandbox seconds per image (default %(default)s)"
    )
    p.add_argument(
        "--db",
        choices=("auto", "postgres", "sqlite"),
        default="auto",
        help="database of the Prefect server: PostgreSQL when installed (auto), or SQLite",
    )
    p.add_argument(
        "--profile",
        metavar="PATH",
        default=None,
        help="profile the measured plugin run with pyinstrument; write PATH (.html or .txt)",
    )
    return p


# -- processes ---------------------------------------------------------------------------------

_children: list[int] = []
"""Process-group ids of the children started here, stopped at exit by PID."""


def _kill_group(pid: int, sig: int = signal.SIGTERM) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _stop_process(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    stop_process(process, timeout)
    with contextlib.suppress(ValueError):
        _children.remove(process.pid)


def _stop_all_children() -> None:
    for pid in list(_children):
        _kill_group(pid, signal.SIGKILL)


atexit.register(_stop_all_children)


def _on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


signal.signal(signal.SIGTERM, _on_signal)


def spawn(cmd: Sequence[str], *, env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own process group (stopped by PID at exit), output to ``log``."""
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603 - our own commands
            list(cmd),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )
    _children.append(process.pid)
    return process


# -- PostgreSQL and the Prefect server ---------------------------------------------------------


@dataclass
class Stack:
    """What :func:`start_stack` started: the temporary root, Prefect's API URL and database."""

    root: Path
    api_url: str
    database: str
    server_pid: int
    seconds_to_start: float
    db_pid: int | None = None
    notes: list[str] = field(default_factory=list)

    def db_pids(self) -> list[int]:
        """The database's processes (PostgreSQL's postmaster and its backends), if any."""
        return [self.db_pid] if self.db_pid is not None else []


@contextlib.contextmanager
def start_stack(db: str = "auto", *, ui: bool = False) -> Iterator[Stack]:
    """A temporary root folder and a Prefect server (serving its UI too with ``ui``); this
    process's environment points at them.

    Sets ``PREFECT_API_URL``, a temporary ``PREFECT_HOME`` (results, locks), ``GPT_IMAGE_SPOOL``,
    ``GPT_IMAGE_API_KEY`` and ``DO_NOT_TRACK=1``. Call it before importing ``prefect``.
    """
    if "prefect" in sys.modules:
        raise RuntimeError("start_stack() must run before prefect is imported")
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="gpt-image-bench-"))
    try:
        with LocalPrefectServer(
            root / "server-home",
            database=cast(DatabaseChoice, db),
            ui=ui,
            startup_timeout=_STARTUP_TIMEOUT,
        ) as server:
            home = root / "home"
            home.mkdir()
            os.environ.update(
                {
                    **server.env(home),
                    "GPT_IMAGE_SPOOL": str(root / "spool"),
                    "GPT_IMAGE_API_KEY": API_KEY,
                }
            )
            for name in ("GPT_IMAGE_LOCK_DIR", "GPT_IMAGE_STORAGE", "GPT_IMAGE_BASE_URL"):
                os.environ.pop(name, None)
            assert server.pid is not None
            yield Stack(
                root=root,
                api_url=server.api_url,
                database=server.database,
                server_pid=server.pid,
                seconds_to_start=time.monotonic() - started,
                db_pid=server.postgres.pid if server.postgres is not None else None,
            )
            # leaving the block sends this process's queued Prefect logs and events, then stops
            # the server by PID and PostgreSQL with pg_ctl
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- sandbox and S3 ----------------------------------------------------------------------------


@contextlib.contextmanager
def sandbox(**config: Any) -> Iterator[Any]:
    """The sandbox in a thread of this process, serving copies of pre-rendered, realistically
    large images (``render="template"``, ``texture=True``) unless told otherwise; the client's
    ``GPT_IMAGE_BASE_URL`` points at it."""
    from prefect_gpt_image.sandbox import SandboxServer

    config.setdefault("render", "template")
    config.setdefault("texture", True)
    with SandboxServer(**config) as server:
        os.environ["GPT_IMAGE_BASE_URL"] = server.base_url
        try:
            yield server
        finally:
            os.environ.pop("GPT_IMAGE_BASE_URL", None)


@dataclass
class ChildSandbox:
    """A sandbox in a child process (its CPU and memory are not this process's): its base URL,
    its PID, and its ledger, request log and reset over HTTP."""

    base_url: str
    pid: int

    def _call(self, path: str, method: str = "GET") -> dict[str, Any]:
        root = self.base_url.removesuffix("/v1")
        request = urllib.request.Request(f"{root}/sandbox/{path}", method=method)  # noqa: S310
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
            data: dict[str, Any] = json.load(answer)
            return data

    def ledger(self) -> dict[str, Any]:
        """``{"entries": [...], "stats": {...}}``."""
        return self._call("ledger")

    def stats(self) -> dict[str, Any]:
        """The ledger's stats (``requests``, ``max_in_flight``, ``billed_images``, ...)."""
        stats: dict[str, Any] = self.ledger()["stats"]
        return stats

    def requests(self) -> list[dict[str, Any]]:
        """The request log (``started``/``finished`` epoch seconds, ``endpoint``, ``status``)."""
        log: list[dict[str, Any]] = self._call("requests")["requests"]
        return log

    def reset(self) -> None:
        """Forget the ledger, the log and the counters."""
        self._call("reset", method="POST")


def sandbox_flags(latency: float, k: int) -> list[str]:
    """The flags of a benchmark sandbox: ``latency`` s per image, at most ``k`` in flight,
    copies of pre-rendered, realistically large images."""
    return ["--latency", str(latency), "--max-concurrency", str(k), "--render", "template", "--texture"]


@contextlib.contextmanager
def sandbox_process(root: Path, *flags: str) -> Iterator[ChildSandbox]:
    """The sandbox as a child process (``python -m prefect_gpt_image.sandbox FLAGS``), so its
    memory is not this process's; stopped by PID."""
    port = free_port()
    log = root / f"sandbox-{port}.log"
    cmd = [sys.executable, "-m", "prefect_gpt_image.sandbox", "--port", str(port), *flags]
    process = spawn(cmd, env=dict(os.environ), log=log, cwd=root)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"sandbox exited: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/sandbox/ledger", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sandbox did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.1)
        os.environ["GPT_IMAGE_BASE_URL"] = base_url
        yield ChildSandbox(base_url=base_url, pid=process.pid)
    finally:
        os.environ.pop("GPT_IMAGE_BASE_URL", None)
        _stop_process(process)


@contextlib.contextmanager
def local_s3(bucket: str = "bench") -> Iterator[Any]:
    """A SeaweedFS S3 server with ``bucket``; boto3's environment (``AWS_*``) points at it."""
    from prefect_gpt_image.local_s3 import LocalS3Server

    saved = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    with LocalS3Server() as server:
        if server.pid is not None:
            _children.append(server.pid)
        try:
            server.create_bucket(bucket)
            os.environ.update(server.env())
            yield server
        finally:
            for key in [k for k in os.environ if k.startswith("AWS_")]:
                del os.environ[key]
            os.environ.update(saved)
            if server.pid is not None:
                with contextlib.suppress(ValueError):
                    _children.remove(server.pid)


# -- Prefect helpers ---------------------------------------------------------------------------


def save_settings(name: str, **fields: Any) -> str:
    """Save a ``GptImageSettings`` block ``name`` with ``fields``; return its name."""
    from prefect_gpt_image.blocks import GptImageSettings

    GptImageSettings(**fields).save(name, overwrite=True)
    return name


def run_batch(prompts: list[str] | None, **kwargs: Any) -> tuple[float, Any]:
    """Run the ``batch_generate`` flow on a fresh event loop; (wall seconds, BatchResult).
    ``prompts=None``: the rows come from ``manifest=...`` in ``kwargs``."""
    import asyncio

    from prefect_gpt_image.flows import batch_generate

    async def go() -> tuple[float, Any]:
        started = time.perf_counter()
        rows = {"prompts": prompts} if prompts is not None else {}
        state = await batch_generate(**rows, return_state=True, **kwargs)
        elapsed = time.perf_counter() - started
        return elapsed, await state.aresult(raise_on_failure=False)

    return asyncio.run(go())


@contextlib.contextmanager
def profiled(path: str | None) -> Iterator[None]:
    """Profile the block with pyinstrument (async-aware) into ``path``, if given."""
    if not path:
        yield
        return
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.001, async_mode="enabled")
    profiler.start()
    try:
        yield
    finally:
        profiler.stop()
        out = Path(path)
        if out.suffix == ".html":
            out.write_text(profiler.output_html())
        else:
            out.write_text(profiler.output_text(unicode=True, color=False, show_all=False))
        print(f"profile written to {out}", file=sys.stderr)


# -- memory ------------------------------------------------------------------------------------


def rss_mb() -> float:
    """This process's resident set size now, in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class PeakRSS:
    """Samples this process's RSS every ``interval`` seconds in a thread; ``peak`` in MB.

    The kernel's own high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``) is
    used too, so a spike between samples is not missed.
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)

    def __enter__(self) -> PeakRSS:
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")
        self.peak = rss_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb(), _hwm_mb())

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_mb())


def _hwm_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


# -- CPU accounting ----------------------------------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK")


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds used so far by it and its ended children) of every process."""
    table: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            raw = (entry / "stat").read_text()
            fields = raw[raw.rindex(")") + 2 :].split()
            # utime + stime, and cutime + cstime: the CPU of its children that ended (PostgreSQL
            # backends, server workers), which would otherwise vanish from the sum with them
            used = sum(int(fields[i]) for i in (11, 12, 13, 14))
            table[int(entry.name)] = (int(fields[1]), used / _TICKS)
    return table


def cpu_seconds(roots: Sequence[int]) -> float:
    """CPU seconds used so far by the processes ``roots`` and all their descendants."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, todo, seen = 0.0, list(roots), set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in table:
            continue
        seen.add(pid)
        total += table[pid][1]
        todo += children.get(pid, [])
    return total


class CpuMeter:
    """CPU seconds used during a block by this process and by the Prefect server (with its
    database): ``with CpuMeter(stack) as cpu: ...; cpu.plugin, cpu.server``."""

    def __init__(self, stack: Stack | None) -> None:
        self.stack = stack
        self.plugin = self.server = 0.0

    def _server_pids(self) -> list[int]:
        if self.stack is None:
            return []
        return [self.stack.server_pid, *self.stack.db_pids()]

    def __enter__(self) -> CpuMeter:
        self._self0 = _own_cpu()
        self._server0 = cpu_seconds(self._server_pids())
        return self

    def __exit__(self, *exc: object) -> None:
        self.plugin = _own_cpu() - self._self0
        self.server = cpu_seconds(self._server_pids()) - self._server0


def wait_server_idle(stack: Stack, *, busy_below: float = 0.1, timeout: float = 60.0) -> float:
    """Wait until the Prefect server (and its database) use less than ``busy_below`` of a core
    over half a second: it records a batch's task runs in the background, seconds after the
    batch, and a measurement started meanwhile competes with it for the CPU. Returns the wait."""
    started = time.monotonic()
    pids = [stack.server_pid, *stack.db_pids()]
    while time.monotonic() - started < timeout:
        before = cpu_seconds(pids)
        time.sleep(0.5)
        if cpu_seconds(pids) - before < busy_below * 0.5:
            break
    return time.monotonic() - started


def _own_cpu() -> float:
    """CPU seconds used by this process alone (all its threads, not its children)."""
    usage = os.times()
    return usage.user + usage.system


# -- reporting ---------------------------------------------------------------------------------


def machine() -> str:
    """CPU model, cores, memory, OS, Python and Prefect versions, in one line."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        mem = f", {kb / 1024**2:.0f} GB"
    try:
        import prefect

        prefect_version = prefect.__version__
    except ImportError:  # pragma: no cover
        prefect_version = "?"
    return (
        f"{cpu}, {os.cpu_count()} cores{mem}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, prefect {prefect_version}"
    )


def request_timeline(
    log: Sequence[dict[str, Any]], k: int
) -> tuple[list[float], list[float], list[float]] | None:
    """The image requests of a sandbox's request log that were answered, as sorted start and
    answer times (epoch seconds) and the gaps between an answer and the request taking its slot
    (the i-th request after the first ``k`` against the (i-k)-th answer); None if none was."""
    calls = [r for r in log if r["endpoint"].endswith("/generations") and r["finished"]]
    if not calls:
        return None
    starts = sorted(r["started"] for r in calls)
    ends = sorted(r["finished"] for r in calls)
    return starts, ends, [starts[i] - ends[i - k] for i in range(k, len(starts))]


def median(values: Sequence[float]) -> float:
    """The median (NaN for none)."""
    return statistics.median(values) if values else math.nan


def fmt(value: Any) -> str:
    """A table cell: floats with 3 significant decimals, the rest as text."""
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table (markdown pipes) of ``rows``, columns in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    cells = [[fmt(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) + " |" for r in cells]
    return "\n".join(lines)


def report(
    title: str,
    command: Sequence[str],
    rows: Sequence[dict[str, Any]],
    last: dict[str, Any],
    verdicts: Sequence[Verdict] = (),
) -> None:
    """Print the title, machine, command and table, a MET/MISSED line per target (``verdicts``,
    from :func:`compare`), then the LAST line of ``name=value`` pairs."""
    print()
    print(f"## {title}")
    print(f"machine: {machine()}")
    print(f"command: {' '.join(command)}")
    print()
    print(table(rows))
    print()
    for verdict in verdicts:
        print(verdict)
    print(" ".join(f"{k}={_pair(v)}" for k, v in last.items()), flush=True)


def _pair(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if not math.isnan(value) else "nan"
    return str(value)


@dataclass(frozen=True)
class Verdict:
    """A figure against its target (bench/README.md): ``direction`` ``<=`` (at most) or ``>=``
    (at least). A figure that was not measured (NaN) misses."""

    name: str
    value: float
    target: float
    direction: Literal["<=", ">="]

    @property
    def met(self) -> bool:
        """Whether the figure meets its target."""
        if math.isnan(self.value):
            return False
        return self.value <= self.target if self.direction == "<=" else self.value >= self.target

    def __str__(self) -> str:
        word = "MET" if self.met else "MISSED"
        return f"{word}: {self.name} = {_pair(float(self.value))} (target {self.direction} {self.target:g})"


def compare(name: str, value: float, target: float, direction: Literal["<=", ">="] = "<=") -> Verdict:
    """``name``'s figure ``value`` against its ``target``; give the verdicts to :func:`report`
    (a MET/MISSED line each) and :func:`exit_code` (``BENCH_STRICT=1``: a miss exits 1)."""
    return Verdict(name, float(value), float(target), direction)


def strict() -> bool:
    """Whether ``BENCH_STRICT`` asks a missed target or a failed check to exit 1."""
    return os.environ.get("BENCH_STRICT", "").strip().lower() in ("1", "true", "yes")


def exit_code(problems: Sequence[str], verdicts: Sequence[Verdict] = ()) -> int:
    """The benchmark's exit status: 0, or 1 under ``BENCH_STRICT=1`` when a check failed
    (``problems``, from :func:`check`) or a target was missed (saying which, on stderr)."""
    missed = [v for v in verdicts if not v.met]
    if not (problems or missed):
        return 0
    summary = f"{len(missed)} target(s) missed, {len(problems)} check(s) failed"
    if not strict():
        print(f"{summary} (BENCH_STRICT=1 makes this exit 1)", file=sys.stderr)
        return 0
    print(f"BENCH_STRICT: {summary}: " + "; ".join([*map(str, missed), *problems]), file=sys.stderr)
    return 1


def check(condition: bool, message: str, problems: list[str]) -> None:
    """Record ``message`` in ``problems`` (printed to stderr) when ``condition`` is false."""
    if not condition:
        problems.append(message)
        print(f"WARNING: {message}", file=sys.stderr)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(wall seconds, result) of ``fn()``."""
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result
