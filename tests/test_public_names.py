"""Every name the docs show still imports: a module move can never silently break the README.

The docs are README.md, bench/README.md, every page of the documentation site (docs/**/*.md) and
the deployment entrypoints of deployments/prefect.yaml.
A name is any ``prefect_gpt_image.x.y`` they write (in prose or code), and every name a Python code
block imports from ``prefect_gpt_image``; each must resolve, as a module or an attribute of one.
Every repository file a doc links to must exist.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [
    REPO / "README.md",
    REPO / "bench" / "README.md",
    *sorted((REPO / "docs").rglob("*.md")),
    REPO / "deployments" / "prefect.yaml",
]

# A dotted name, also when a line break splits it after a dot (`prefect_gpt_image.calls.x.
# Name` in a wrapped paragraph). A trailing ``*`` (a wildcard in prose) is not part of it.
_DOTTED = re.compile(r"\bprefect_gpt_image(?:\.\s*[A-Za-z_][A-Za-z0-9_]*)+")
_CODE_BLOCK = re.compile(r"^\s*```python\n(.*?)^\s*```", re.DOTALL | re.MULTILINE)
_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _dotted_names(text: str) -> set[str]:
    return {re.sub(r"\s+", "", m.group(0)) for m in _DOTTED.finditer(text)}


def _code_imports(text: str) -> set[str]:
    """``module.name`` for each name a Python block imports from the package (``module`` alone for
    ``import module``)."""
    names: set[str] = set()
    for match in _CODE_BLOCK.finditer(text):
        lines = match.group(1).splitlines()
        indent = min((len(line) - len(line.lstrip()) for line in lines if line.strip()), default=0)
        tree = ast.parse("\n".join(line[indent:] for line in lines))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("prefect_gpt_image"):
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names if a.name.startswith("prefect_gpt_image"))
    return names


def _shown_names() -> list[tuple[str, str]]:
    shown: set[tuple[str, str]] = set()
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        where = str(doc.relative_to(REPO))
        shown.update((where, name) for name in _dotted_names(text) | _code_imports(text))
    return sorted(shown)


def resolve(dotted: str) -> Any:
    """The module or attribute ``dotted`` names: the longest importable module prefix, then
    attributes; ImportError/AttributeError when it does not exist."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError as exc:
            if exc.name is None or not ".".join(parts[:cut]).startswith(exc.name):
                raise  # the module exists but imports something missing: a real failure
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


SHOWN = _shown_names()


def test_the_docs_show_names_of_every_layer() -> None:
    """The scan finds what the docs are known to show (a broken regex must not pass as 'no names')."""
    names = {name for _, name in SHOWN}
    for expected in (
        "prefect_gpt_image.tasks.generate_image",
        "prefect_gpt_image.flows.batch_generate",
        "prefect_gpt_image.calls.redis_locks.RedisImageLockManager",
        "prefect_gpt_image.calls.encoding.md_text",
        "prefect_gpt_image.api",
    ):
        assert expected in names, expected


@pytest.mark.parametrize(("doc", "name"), SHOWN, ids=[f"{d}:{n}" for d, n in SHOWN])
def test_every_name_the_docs_show_imports(doc: str, name: str) -> None:
    resolve(name)


def test_every_file_the_docs_link_to_exists() -> None:
    missing = []
    for doc in DOCS:
        for target in _LINK.findall(doc.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (doc.parent / target).exists():
                missing.append(f"{doc.relative_to(REPO)} -> {target}")
    assert not missing, missing


def test_the_old_module_paths_users_may_have_in_code_still_import() -> None:
    """Paths the README named before the call engine moved to ``prefect_gpt_image.calls``."""
    from prefect_gpt_image.calls.encoding import md_text
    from prefect_gpt_image.calls.redis_locks import RedisImageLockManager

    assert resolve("prefect_gpt_image.tasks.redis_locks.RedisImageLockManager") is RedisImageLockManager
    assert resolve("prefect_gpt_image.tasks.encoding.md_text") is md_text
    for name in importlib.import_module("prefect_gpt_image.tasks").__all__:
        resolve(f"prefect_gpt_image.tasks.{name}")
