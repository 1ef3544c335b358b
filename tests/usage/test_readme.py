"""The README's examples are the usage scripts: every ```python block whose first line is
``# tests/usage/scripts/<name>.py`` is that file, so what the README shows is what the usage tests run."""

from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
_HEADER = re.compile(r"#\s*(tests/usage/scripts/[\w.-]+\.py)\s*$")


def _normalized(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()).rstrip()


def readme_examples() -> list[tuple[str, str]]:
    """(path, code) of every README python block that names a usage script on its first line."""
    examples = []
    for match in _BLOCK.finditer(README.read_text(encoding="utf-8")):
        first, _, rest = match.group(1).partition("\n")
        header = _HEADER.fullmatch(first.strip())
        if header is not None:
            examples.append((header.group(1), rest))
    return examples


def test_readme_examples_are_the_usage_scripts() -> None:
    examples = readme_examples()
    assert examples, "README.md has no ```python block starting with '# tests/usage/scripts/<name>.py'"
    for path, code in examples:
        script = REPO_ROOT / path
        assert script.is_file(), f"README.md shows {path}, which does not exist"
        assert _normalized(code) == _normalized(script.read_text(encoding="utf-8")), (
            f"README.md's block for {path} differs from the file"
        )
