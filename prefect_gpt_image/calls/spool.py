"""The local spool: paid images that could not be stored wait here for the next run.

When the store fails after the API returned images, their bytes and everything needed to store
them (manifests, refs) go to ``$GPT_IMAGE_SPOOL`` (default ``./.gpt-image-spool``) under the
call's cache key. The next run of the same request finds the entry, stores the images without a
paid call, writes the cache record and removes the entry.

Layout: ``{spool}/{cache_key}/{i}.{ext}`` for each image and ``entry.json`` (written last,
atomically: a folder without it is an unfinished write and is ignored). Nothing secret is written.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_SPOOL_DIR",
    "SPOOL_ENV",
    "SpoolEntry",
    "SpooledImage",
    "clear",
    "load",
    "save",
    "spool_dir",
]

SPOOL_ENV = "GPT_IMAGE_SPOOL"
"""Environment variable naming the spool folder."""
DEFAULT_SPOOL_DIR = ".gpt-image-spool"
"""The spool folder, relative to the working directory, when ``GPT_IMAGE_SPOOL`` is unset."""
_ENTRY = "entry.json"


def spool_dir() -> Path:
    """``$GPT_IMAGE_SPOOL``, else ``./.gpt-image-spool``, made absolute."""
    return _resolved(os.environ.get(SPOOL_ENV, "").strip() or DEFAULT_SPOOL_DIR, os.getcwd())


@functools.lru_cache(maxsize=16)
def _resolved(configured: str, cwd: str) -> Path:
    """``configured`` made absolute from ``cwd``, once per pair: every image call looks in the
    spool, and resolving a path costs a system call per folder of it (on the event loop)."""
    return (Path(cwd) / Path(configured).expanduser()).resolve()


@dataclass(frozen=True)
class SpooledImage:
    """One spooled image: its file, the manifest to store with it and its ref (as a dict)."""

    path: Path
    sha256: str
    format: str
    manifest: dict[str, Any]
    ref: dict[str, Any]


@dataclass(frozen=True)
class SpoolEntry:
    """The spooled result of one call: its folder, images and the request it answered."""

    path: Path
    key: str
    images: list[SpooledImage]
    request: dict[str, Any]


def save(
    key: str,
    images: list[tuple[bytes | Path, str, str, dict[str, Any], dict[str, Any]]],
    request: dict[str, Any],
) -> Path:
    """Spool ``images`` (each ``(data, sha256, ext, manifest, ref)``) under ``key``; its folder."""
    root = spool_dir()
    final = root / key
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=root, prefix=f".{key[:16]}.", suffix=".tmp"))
    try:
        listed: list[dict[str, Any]] = []
        for i, (data, sha256, ext, manifest, ref) in enumerate(images):
            name = f"{i}.{ext}"
            if isinstance(data, Path):
                shutil.copyfile(data, work / name)
            else:
                (work / name).write_bytes(data)
            listed.append({"file": name, "sha256": sha256, "format": ext, "manifest": manifest, "ref": ref})
        (work / _ENTRY).write_text(json.dumps({"key": key, "request": request, "images": listed}, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return final


def load(key: str) -> SpoolEntry | None:
    """The spool entry of ``key``, or None."""
    folder = spool_dir() / key
    try:
        data = json.loads((folder / _ENTRY).read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None
    images = [
        SpooledImage(
            path=folder / item["file"],
            sha256=item["sha256"],
            format=item["format"],
            manifest=item["manifest"],
            ref=item["ref"],
        )
        for item in data["images"]
    ]
    return SpoolEntry(path=folder, key=key, images=images, request=data.get("request", {}))


def clear(key: str) -> None:
    """Remove the spool entry of ``key`` (no error if there is none)."""
    shutil.rmtree(spool_dir() / key, ignore_errors=True)
