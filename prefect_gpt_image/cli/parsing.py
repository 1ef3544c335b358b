"""Argument parsing that says what to do: a misspelled verb, option or choice names the closest
valid one (Python 3.11's argparse does not), and ``--api-key`` is refused with the reason."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from typing import Any

from prefect_gpt_image.api.suggest import closest

from .exits import UsageError

__all__ = ["API_KEY_REFUSED", "Parser", "closest", "refuse_api_key", "unknown_options"]

API_KEY_REFUSED = (
    "--api-key is refused: a key typed on the command line stays in your shell history and is "
    "visible to every user of this machine (`ps`) while the command runs. Instead, export "
    "GPT_IMAGE_API_KEY (or OPENAI_API_KEY) in the environment, name a saved credentials block "
    "with --credentials-block NAME, or run the command on a terminal with no key set and type "
    "the key at its hidden prompt."
)


def _closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate nearest to ``word`` (:func:`~prefect_gpt_image.api.suggest.closest`), if any."""
    found = closest(word, candidates)
    return found[0] if found else None


def refuse_api_key(argv: Sequence[str]) -> None:
    """Raise UsageError if ``argv`` passes a key as an option (the value is never echoed)."""
    for arg in argv:
        if arg == "--":
            return
        if arg == "--api-key" or arg.startswith("--api-key="):
            raise UsageError(API_KEY_REFUSED)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors suggest the closest valid choice (verbs, ``--quality``...)."""

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        choices = action.choices
        if choices is None or value in choices:
            return
        names = [str(choice) for choice in choices]
        near = _closest(str(value), names)
        hint = f"; did you mean {near!r}?" if near else ""
        raise argparse.ArgumentError(
            action, f"invalid choice: {value!r}{hint} (choose from {', '.join(map(repr, names))})"
        )


def unknown_options(parser: argparse.ArgumentParser, extras: Sequence[str]) -> str:
    """The error message for arguments ``parser`` (a verb's) does not know, naming the closest
    option of that verb for each misspelled one. Only option names are echoed, never values (a
    value may be a secret typed after a misspelled option)."""
    known = [s for action in parser._actions for s in action.option_strings if s.startswith("--")]
    parts = []
    values = 0
    for extra in extras:
        if not extra.startswith("-"):
            values += 1
            continue
        name = extra.split("=", 1)[0]
        near = _closest(name, known)
        parts.append(f"{name} (did you mean {near}?)" if near else name)
    if values:
        parts.append(f"{values} extra value(s)")
    return f"unrecognized argument(s): {', '.join(parts)}; see `{parser.prog} --help`"
