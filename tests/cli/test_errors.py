"""Errors that say what to do, the refused ``--api-key``, and the key kept out of every output."""

from __future__ import annotations

import os
import pty
import sys
from collections.abc import Callable
from typing import Any

from .conftest import API_KEY, COMMAND, Cli, read_terminal


def test_api_key_option_is_refused_saying_why_and_never_echoed(cli: Cli) -> None:
    run = cli.run("generate", "a fox", "--api-key", "sk-typed-on-the-line-123")
    assert run.returncode == 2, run.tail()
    assert "shell history" in run.stderr and "`ps`" in run.stderr
    assert "GPT_IMAGE_API_KEY" in run.stderr and "--credentials-block" in run.stderr
    assert "sk-typed-on-the-line-123" not in run.stdout + run.stderr
    run = cli.run("generate", "a fox", "--api-key=sk-typed-on-the-line-123")
    assert run.returncode == 2 and "sk-typed-on-the-line-123" not in run.stdout + run.stderr
    assert cli.sandbox.ledger.requests == []


def test_misspellings_name_the_closest_valid_verb_option_choice_and_size(cli: Cli) -> None:
    run = cli.run("genrate", "a fox")
    assert run.returncode == 2 and "did you mean 'generate'" in run.stderr, run.tail()
    run = cli.run("generate", "a fox", "--qualty", "low")
    assert run.returncode == 2 and "did you mean --quality" in run.stderr, run.tail()
    run = cli.run("plan", "batch-edti", "x")
    assert run.returncode == 2 and "did you mean 'batch-edit'" in run.stderr, run.tail()
    run = cli.run("generate", "a fox", "--quality", "hihg")
    assert run.returncode == 2 and "did you mean 'high'" in run.stderr, run.tail()
    run = cli.run("generate", "a fox", "--size", "1000x1000")
    assert run.returncode == 2 and "multiples of 16" in run.stderr and "1008x1008" in run.stderr, run.tail()
    assert cli.sandbox.ledger.requests == []


def test_no_key_without_a_terminal_exits_3_naming_where_a_key_comes_from(cli: Cli) -> None:
    env = {k: v for k, v in cli.env.items() if k != "GPT_IMAGE_API_KEY"}
    run = cli.run("generate", "a fox", "--json", env=env)
    assert run.returncode == 3, run.tail()
    document = run.json()
    assert document["ok"] is False and document["error_type"] == "ConfigurationError"
    assert "GPT_IMAGE_API_KEY" in document["error"]
    assert cli.sandbox.ledger.requests == []


def _files_text(root: os.PathLike[str]) -> bytes:
    data = b""
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                with open(path, "rb") as handle:
                    data += handle.read()
    return data


def test_the_environment_key_appears_in_no_output_and_no_written_file(cli: Cli) -> None:
    for args in (["generate", "a fox"], ["generate", "a fox", "--json"], ["plan", "generate", "a fox"]):
        run = cli.run(*args, "--quality", "low")
        assert run.returncode == 0, run.tail()
        assert API_KEY not in run.stdout + run.stderr
    assert all(r["auth_ok"] for r in cli.sandbox.ledger.requests)
    assert API_KEY.encode() not in _files_text(cli.root)


def test_a_key_typed_at_the_hidden_prompt_is_used_and_never_shown_or_written(
    make_sandbox: Callable[..., Any], cli: Cli
) -> None:
    """On a terminal with no key set, the command asks for it with echo off; the sandbox accepts
    only that key, so a billed image proves it was the one sent."""
    typed = "sk-typed-at-the-prompt-8e41"
    sandbox = make_sandbox(latency=0.05, keys=(typed,))
    env = {k: v for k, v in cli.env.items() if k != "GPT_IMAGE_API_KEY"}
    env["GPT_IMAGE_BASE_URL"] = sandbox.base_url
    pid, fd = pty.fork()
    if pid == 0:  # the child: the command on the pseudo-terminal
        os.chdir(cli.root)
        os.execve(COMMAND, [COMMAND, "generate", "a fox", "--quality", "low"], env)  # noqa: S606
    sent = False

    def answer(output: bytes) -> None:
        nonlocal sent
        if not sent and b"API key" in output:
            os.write(fd, typed.encode() + b"\n")
            sent = True

    output = read_terminal(fd, 120, on_output=answer)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    text = output.decode(errors="replace")
    sys.stdout.write(text)
    assert sent, text
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert typed not in text, "the typed key was echoed"
    assert sandbox.ledger.billed_images == 1
    assert typed.encode() not in _files_text(cli.root)
