"""The examples of README.md and of the documentation site (docs/**/*.md) are the usage scripts:
every ```python block whose first line is ``# tests/usage/scripts/<name>.py`` is that file, so what
the docs show is what the usage tests run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
DOCS_DIR = REPO_ROOT / "docs"
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
_HEADER = re.compile(r"#\s*(tests/usage/scripts/[\w.-]+\.py)\s*$")


def _normalized(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()).rstrip()


def doc_examples(doc: Path) -> list[tuple[str, str]]:
    """(path, code) of every python block of ``doc`` that names a usage script on its first line."""
    examples = []
    for match in _BLOCK.finditer(doc.read_text(encoding="utf-8")):
        first, _, rest = match.group(1).partition("\n")
        header = _HEADER.fullmatch(first.strip())
        if header is not None:
            examples.append((header.group(1), rest))
    return examples


def readme_examples() -> list[tuple[str, str]]:
    """(path, code) of every README python block that names a usage script on its first line."""
    return doc_examples(README)


def docs_pages() -> list[Path]:
    """README.md and every page of the documentation site."""
    return [README, *sorted(DOCS_DIR.rglob("*.md"))]


def assert_examples_are_scripts(doc: Path) -> None:
    """Each example of ``doc`` names a script that exists and is, line for line, that script."""
    where = doc.relative_to(REPO_ROOT)
    for path, code in doc_examples(doc):
        script = REPO_ROOT / path
        assert script.is_file(), f"{where} shows {path}, which does not exist"
        assert _normalized(code) == _normalized(script.read_text(encoding="utf-8")), (
            f"{where}'s block for {path} differs from the file"
        )


def test_readme_examples_are_the_usage_scripts() -> None:
    assert readme_examples(), (
        "README.md has no ```python block starting with '# tests/usage/scripts/<name>.py'"
    )
    assert_examples_are_scripts(README)


def test_the_docs_site_shows_usage_scripts() -> None:
    """The scan finds the site's examples (a moved docs folder or a broken pattern must not pass as
    'nothing to check')."""
    shown = {path for page in docs_pages()[1:] for path, _ in doc_examples(page)}
    for expected in ("readme_sync_flow.py", "readme_batch_pipeline.py", "failed_batch.py"):
        assert f"tests/usage/scripts/{expected}" in shown, expected


@pytest.mark.parametrize("doc", docs_pages()[1:], ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_docs_examples_are_the_usage_scripts(doc: Path) -> None:
    assert_examples_are_scripts(doc)
