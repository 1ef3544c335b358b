"""A batch verb's progress: rows done of the total, the elapsed time and the running cost, from
the flow's own accounting; plain lines off a terminal, a bar on one, nothing with ``--json``.
Judged by the sandbox's ledger."""

from __future__ import annotations

import fcntl
import json
import os
import re
import struct
import subprocess
import termios
from pathlib import Path

from prefect_gpt_image.calls import usd

from .conftest import COMMAND, TIMEOUT, Cli, read_terminal

LINE = re.compile(
    r"^(?P<command>batch|batch-edit|pipeline): (?P<final>done, )?(?P<done>\d+)/(?P<total>\d+) "
    r"(?P<unit>rows|steps), [\d.]+ s; "
    r"(?P<bill>paid (?P<paid>\$[\d.]+) for (?P<images>\d+) images?; "
    r"(?P<served>\d+) served from the store .*)$"
)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
BAR = re.compile(r"\d+/3 rows|paid \$[\d.]+, \d+ from the store")


def _manifest(path: Path, prompts: list[str]) -> Path:
    path.write_text("prompt\n" + "".join(f"{p}\n" for p in prompts))
    return path


def test_progress_lines_off_a_terminal_end_with_what_the_ledger_billed(cli_on_server: Cli) -> None:
    """Six rows, two of them already in the store: a line as rows finish, each counting more
    rows and never less paid, and a final one whose paid figure is what the sandbox billed for
    this batch and whose served count is the two stored rows."""
    cli = cli_on_server
    prompts = [f"a paper kite number {i}" for i in range(6)]
    first = cli.run("batch", str(_manifest(cli.root / "first.csv", prompts[:2])), "--quality", "low")
    assert first.returncode == 0, first.tail()
    billed_before, cost_before = cli.billed_images(), cli.sandbox.ledger.total_cost

    run = cli.run("batch", str(_manifest(cli.root / "all.csv", prompts)), "--quality", "low")
    assert run.returncode == 0, run.tail()
    assert cli.billed_images() - billed_before == 4
    lines = [m for m in map(LINE.match, run.stderr.splitlines()) if m is not None]
    assert len(lines) >= 2, run.tail()
    final = lines[-1]
    assert final["final"] and (final["done"], final["total"]) == ("6", "6"), final.string
    assert final["paid"] == usd(cli.sandbox.ledger.total_cost - cost_before), final.string
    assert (final["images"], final["served"]) == ("4", "2"), final.string
    assert not any(m["final"] for m in lines[:-1])
    done = [int(m["done"]) for m in lines]
    paid = [float(m["paid"].lstrip("$")) for m in lines]
    assert done == sorted(done) and paid == sorted(paid), [m.string for m in lines]
    assert all(m["total"] == "6" for m in lines)
    # The command's own bill on stdout says the same.
    assert run.stdout.strip().splitlines()[-1] == final["bill"]


def test_a_pipeline_counts_its_steps_and_ends_with_what_the_ledger_billed(cli_on_server: Cli) -> None:
    cli = cli_on_server
    manifest = cli.root / "rows.csv"
    manifest.write_text("product\na mug\na lamp\n")
    steps = cli.root / "steps.json"
    steps.write_text(
        json.dumps([{"kind": "generate", "prompt": "{product}"}, {"kind": "edit", "prompt": "at dusk"}])
    )
    run = cli.run("pipeline", str(manifest), str(steps), "--quality", "low")
    assert run.returncode == 0, run.tail()
    assert cli.billed_images() == 4
    lines = [m for m in map(LINE.match, run.stderr.splitlines()) if m is not None]
    assert lines and all((m["command"], m["unit"], m["total"]) == ("pipeline", "steps", "4") for m in lines)
    final = lines[-1]
    assert final["final"] and final["done"] == "4", final.string
    assert (final["paid"], final["images"]) == (usd(cli.sandbox.ledger.total_cost), "4"), final.string


def _on_terminal(cli: Cli, *args: str, stdout_too: bool) -> tuple[int, str, str]:
    """Run the command with stderr (and stdout, ``stdout_too``) on a pseudo-terminal of 150
    columns; its exit code, what the terminal showed (escape codes removed) and stdout if piped."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 150, 0, 0))
    env = {**cli.env, "TERM": "xterm-256color"}
    env.pop("COLUMNS", None)
    child = subprocess.Popen(
        [COMMAND, *args],
        cwd=cli.root,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=slave if stdout_too else subprocess.PIPE,
        stderr=slave,
    )
    os.close(slave)
    screen = read_terminal(master, TIMEOUT, ended=lambda: child.poll() is not None)
    out = child.stdout.read().decode() if child.stdout is not None else ""
    code = child.wait(timeout=TIMEOUT)
    os.close(master)
    text = ANSI.sub("", screen.decode(errors="replace")).replace("\r", "\n")
    print(text[-3000:])
    return code, text, out


def test_on_a_terminal_a_bar_ends_at_n_of_n_with_the_cost_and_json_shows_no_progress(
    cli_on_server: Cli,
) -> None:
    cli = cli_on_server
    manifest = str(_manifest(cli.root / "three.csv", ["a red kite", "a green hill", "a blue lake"]))
    code, screen, _ = _on_terminal(cli, "batch", manifest, "--quality", "low", stdout_too=True)
    assert code == 0, screen
    assert cli.billed_images() == 3
    paid = usd(cli.sandbox.ledger.total_cost)
    bars = [line for line in screen.splitlines() if re.search(r"\b\d+/3 rows\b", line)]
    assert bars, screen
    assert "3/3 rows" in bars[-1] and f"paid {paid}, 0 from the store" in bars[-1], bars[-1]
    assert not LINE.search(screen), "plain progress lines on a terminal"

    code, screen, out = _on_terminal(cli, "batch", manifest, "--quality", "low", "--json", stdout_too=False)
    assert code == 0, screen
    document = json.loads(out)
    assert document["cost"]["cached_images"] == 3 and cli.billed_images() == 3
    assert not BAR.search(screen), screen
