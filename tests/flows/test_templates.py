"""Prompt templates: filled from a manifest row's columns, refused (row and column named) before
anything is paid for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from prefect_gpt_image.flows import BatchResult, ImageOptions, batch_generate
from prefect_gpt_image.flows.templates import TemplateError, fill_template, template_columns
from tests.support.sandbox import billed_images, sandbox_requests

from .conftest import run


def test_fill_template_names_row_and_column() -> None:
    assert fill_template(
        "{product} on a {surface}", {"product": "a mug", "surface": "desk"}, where="row 1"
    ) == ("a mug on a desk")
    assert template_columns("{a} {{literal}} {b} {a}") == ["a", "b"]
    with pytest.raises(TemplateError, match=r"row 4 has no column 'surface'.*columns: product"):
        fill_template("{product} on a {surface}", {"product": "a mug"}, where="row 4")
    with pytest.raises(TemplateError, match="row 2 has no value in column 'surface'"):
        fill_template("{product} on a {surface}", {"product": "x", "surface": "  "}, where="row 2")
    with pytest.raises(TemplateError, match="empty prompt"):
        fill_template("   ", {}, where="row 1")
    with pytest.raises(TemplateError, match="at most 32000"):
        fill_template("{text}!", {"text": "x" * 32_000}, where="row 1")
    for bad in ("{}", "{a.b}", "{a[0]}", "{a!r}", "{a:>10}", "{0}", "{a"):
        with pytest.raises(TemplateError):
            template_columns(bad)


def test_batch_template_fills_good_rows_and_refuses_bad_ones_before_paying(env: Any, tmp_path: Path) -> None:
    sandbox, _, storage = env
    rows = [
        {"id": "a", "product": "a teapot", "surface": "marble"},
        {"id": "b", "product": "a lamp"},  # no surface: refused
        {"id": "c", "product": "a vase", "surface": "oak", "size": "1536x1024"},  # overrides the size
        {"id": "d", "product": "x" * 32_000, "surface": "glass"},  # over-long prompt: refused
    ]
    manifest = tmp_path / "products.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    state = run(
        batch_generate(
            manifest=str(manifest),
            prompt_template="{product} on a {surface} table",
            options=ImageOptions(size="1024x1024", quality="low"),
            storage=storage,
            return_state=True,
        )
    )
    assert state.is_failed() and "2 of 4 rows failed" in (state.message or "")
    result: BatchResult = state.result(raise_on_failure=False)  # type: ignore[assignment]
    assert [r.status for r in result.rows] == ["stored", "invalid", "stored", "invalid"]
    assert result.rows[0].prompt == "a teapot on a marble table"
    assert "has no column 'surface'" in (result.rows[1].error or "")
    assert "at most 32000" in (result.rows[3].error or "")
    assert (result.rows[2].images[0].width, result.rows[2].images[0].height) == (1536, 1024)
    prompts = sorted(r["fields"]["prompt"] for r in sandbox_requests(sandbox))
    assert prompts == ["a teapot on a marble table", "a vase on a oak table"]
    assert billed_images(sandbox) == 2


def test_batch_template_needs_a_manifest_and_a_well_formed_template(env: Any, tmp_path: Path) -> None:
    sandbox, _, storage = env
    manifest = tmp_path / "m.csv"
    manifest.write_text("product\na kite\n")
    no_manifest = run(
        batch_generate(prompts=["x"], prompt_template="{x}", storage=storage, return_state=True)
    )
    assert no_manifest.is_failed() and "give a manifest" in str(no_manifest.result(raise_on_failure=False))
    malformed = run(
        batch_generate(
            manifest=str(manifest), prompt_template="{product.name}", storage=storage, return_state=True
        )
    )
    assert malformed.is_failed() and "not a column name" in str(malformed.result(raise_on_failure=False))
    assert sandbox_requests(sandbox) == []
