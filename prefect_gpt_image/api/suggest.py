"""Errors that say what to do: the closest valid name for a misspelled one, and the nearest valid
sizes for a size the API refuses.

One place for every "did you mean" of the package: task keywords, option dicts, pipeline steps,
the request models (and the command line may use it too). It lives in the API layer, below
everything, and imports nothing of Prefect.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from .errors import GptImageError

__all__ = [
    "UnknownOptionError",
    "check_keywords",
    "closest",
    "did_you_mean",
    "nearest_sizes",
    "unknown_name",
    "with_suggestions",
]


class UnknownOptionError(GptImageError, TypeError):
    """A keyword or key that is not an option of what was called, with the closest valid name.

    A ``TypeError`` (as Python's own "unexpected keyword argument") raised before anything is
    bound, run or paid for."""


def closest(name: str, choices: Iterable[str], n: int = 1) -> list[str]:
    """The ``n`` valid names closest to ``name`` (difflib's ratio ≥ 0.6, best first); a name
    differing only in case or in ``-``/``_`` comes first."""
    options = list(choices)
    folded = {c.lower().replace("-", "_"): c for c in options}
    exact = folded.get(name.lower().replace("-", "_"))
    matches = difflib.get_close_matches(name, options, n=n, cutoff=0.6)
    return ([exact] + [m for m in matches if m != exact])[:n] if exact else matches


def did_you_mean(name: str, choices: Iterable[str], kind: str = "option") -> str:
    """``did you mean 'quality'?``, or ``valid options: ...`` when no valid name is close."""
    options = sorted(choices)
    matches = closest(name, options)
    return f"did you mean {matches[0]!r}?" if matches else f"valid {kind}s: {', '.join(options)}"


def unknown_name(name: str, choices: Iterable[str], kind: str = "option") -> str:
    """``unknown option 'qualty'; did you mean 'quality'?``, or the valid names when none is close."""
    return f"unknown {kind} {name!r}; {did_you_mean(name, choices, kind)}"


def check_keywords(
    given: Iterable[str], valid: Iterable[str], where: str, reasons: Mapping[str, str] | None = None
) -> None:
    """Raise :class:`UnknownOptionError` naming every keyword of ``given`` not in ``valid``, as
    Python would (``generate_image() got an unexpected keyword argument 'qualty'``), each with the
    closest valid name or its reason from ``reasons`` (a name that is refused on purpose)."""
    allowed = set(valid)
    unknown = [name for name in given if name not in allowed]
    if unknown:
        raise UnknownOptionError(
            "; ".join(
                f"{where} got an unexpected keyword argument {name!r}: "
                f"{(reasons or {}).get(name) or did_you_mean(name, allowed)}"
                for name in unknown
            )
        )


def with_suggestions(
    exc: ValidationError,
    names: Iterable[str],
    kind: str = "option",
    advice: Callable[[str, Any], str | None] | None = None,
) -> ValidationError:
    """``exc`` (a model's own validation errors) with a way out added to each message: an unknown
    key gets the closest valid name (``Extra inputs are not permitted; did you mean 'quality'?``),
    a value that is none of a ``Literal``'s the closest choice, and ``advice(field, value)`` may
    say more (e.g. the nearest valid sizes). Errors of nested models are left as they come (their
    own model adds theirs); fields, locations and types are kept."""
    valid = list(names)
    errors: list[InitErrorDetails] = []
    for error in exc.errors(include_url=False):
        message, loc, value = error["msg"], error["loc"], error["input"]
        hint: str | None = None
        if len(loc) == 1 and error["type"] == "extra_forbidden":
            hint = did_you_mean(str(loc[0]), valid, kind)
        elif len(loc) == 1 and error["type"] == "literal_error" and isinstance(value, str):
            choices = re.findall(r"'([^']*)'", str((error.get("ctx") or {}).get("expected", "")))
            matches = closest(value, choices)
            hint = f"did you mean {matches[0]!r}?" if matches else None
        if len(loc) == 1 and advice is not None:
            hint = advice(str(loc[0]), value) or hint
        errors.append(
            {
                "type": PydanticCustomError(error["type"], f"{message}; {hint}" if hint else message),
                "loc": loc,
                "input": value,
            }
        )
    return ValidationError.from_exception_data(exc.title, errors)


def nearest_sizes(
    width: int,
    height: int,
    valid: Callable[[int, int], bool],
    *,
    step: int = 16,
    max_side: int = 3840,
    count: int = 2,
) -> list[str]:
    """The ``count`` valid ``WxH`` sizes nearest to ``width`` x ``height`` (each side a multiple of
    ``step`` up to ``max_side``, ``valid(w, h)`` true): nearest by the relative change of each side
    and of the aspect ratio (so 1000x1000 gives 1008x1008 and 992x992, not 1008x992)."""
    if width <= 0 or height <= 0:
        width, height = max(width, 1), max(height, 1)
    scored: list[tuple[float, int, int]] = []
    sides = range(step, max_side + 1, step)
    for w in sides:
        change_w = math.log(w / width)
        for h in sides:
            if valid(w, h):
                change_h = math.log(h / height)
                scored.append((abs(change_w) + abs(change_h) + abs(change_w - change_h), w, h))
    scored.sort()
    return [f"{w}x{h}" for _, w, h in scored[:count]]
