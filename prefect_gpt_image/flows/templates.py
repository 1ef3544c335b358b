"""Prompt templates filled from a manifest row's columns: ``"{product} on a {surface}"``.

A template names columns in braces (``{{`` and ``}}`` stand for literal braces). Every row's prompt
is filled and checked before anything is paid for: a column the row lacks (or leaves empty), an
empty result and a prompt over the API's 32,000 characters are refused with the row and the column.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

from prefect_gpt_image.api.errors import GptImageError
from prefect_gpt_image.api.models import MAX_PROMPT_CHARS

__all__ = ["TemplateError", "fill_template", "template_columns"]

_FORMATTER = string.Formatter()


class TemplateError(GptImageError, ValueError):
    """A template that cannot be filled for a row (or is malformed): nothing was sent."""


def template_columns(template: str) -> list[str]:
    """The columns ``template`` names, in order; TemplateError if it is malformed (unbalanced
    braces, ``{}`` without a name, attribute or index access, conversions)."""
    try:
        parts = list(_FORMATTER.parse(template))
    except ValueError as exc:
        raise TemplateError(f"template {template!r}: {exc}") from None
    names: list[str] = []
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if not name or name.isdigit() or any(ch in name for ch in ".[]"):
            raise TemplateError(
                f"template {template!r}: {{{name}}} is not a column name (write {{column}}; "
                "{{ and }} for literal braces)"
            )
        if spec or conversion:
            raise TemplateError(f"template {template!r}: {{{name}}} takes no format spec or conversion")
        if name not in names:
            names.append(name)
    return names


def fill_template(template: str, columns: Mapping[str, Any], *, where: str) -> str:
    """``template`` filled from ``columns``; ``where`` (e.g. ``row 3``) names the row in errors."""
    values: dict[str, str] = {}
    for name in template_columns(template):
        value = columns.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            have = ", ".join(sorted(k for k, v in columns.items() if v not in (None, ""))) or "none"
            what = "has no value in" if name in columns else "has no"
            raise TemplateError(
                f"{where} {what} column {name!r}, which the template {template!r} needs (columns: {have})"
            )
        values[name] = str(value)
    filled = template.format_map(values)
    if not filled.strip():
        raise TemplateError(f"{where}: the template {template!r} gives an empty prompt")
    if len(filled) > MAX_PROMPT_CHARS:
        raise TemplateError(
            f"{where}: the filled prompt has {len(filled)} characters; "
            f"the API takes at most {MAX_PROMPT_CHARS}"
        )
    return filled
