"""A local-folder image store: atomic, never-overwriting writes on the local file system."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from .base import ImageStore, check_key

__all__ = [
    "DEFAULT_LOCAL_ROOT",
    "STORAGE_ENV",
    "LocalImageStore",
    "default_local_root",
    "path_from_file_uri",
    "write_atomically",
]

STORAGE_ENV = "GPT_IMAGE_STORAGE"
"""Environment variable naming the default store: a local path or an ``s3://bucket/prefix`` URI."""
DEFAULT_LOCAL_ROOT = "gpt-image-output"
"""The folder (relative to the working directory) used when nothing else is configured."""


def path_from_file_uri(uri: str) -> Path:
    """The local path of a ``file://`` URI (ValueError if it names another host)."""
    parsed = urlparse(uri)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        raise ValueError("expected a file:// URI of this machine")
    return Path(url2pathname(unquote(parsed.path)))


def default_local_root() -> Path:
    """``$GPT_IMAGE_STORAGE`` if it is a local path (or ``file://`` URI), else ./gpt-image-output."""
    configured = os.environ.get(STORAGE_ENV, "").strip()
    if configured.startswith("file://"):
        return path_from_file_uri(configured)
    if configured and "://" not in configured:
        return Path(configured)
    return Path(DEFAULT_LOCAL_ROOT)


def write_atomically(path: Path, data: bytes | Path, *, overwrite: bool, sha256: str | None = None) -> bool:
    """Write ``data`` (bytes, or a file to copy) at ``path`` all at once; whether it was written.

    The data goes to a temporary file in the same folder first, then is renamed over ``path``
    (``overwrite``) or hard-linked into place only if nothing is there (False otherwise, and what
    is there stays): readers never see a partial file and concurrent creators never overwrite
    each other. With ``sha256``, a copied file is checked against it (ValueError if it changed).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            if isinstance(data, Path):
                with data.open("rb") as src:
                    shutil.copyfileobj(src, out)
            else:
                out.write(data)
        if sha256 is not None and isinstance(data, Path):
            # The file may have changed since it was hashed: check what was copied.
            with tmp.open("rb") as f:
                if hashlib.file_digest(f, "sha256").hexdigest() != sha256:
                    raise ValueError(f"{data} changed while it was being stored")
        if overwrite:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


_METADATA_SUFFIX = ".meta.json"


def _metadata_key(key: str) -> str:
    """The key of the metadata file of the image at ``key``."""
    return f"{key}{_METADATA_SUFFIX}"


_WRITABLE: set[Path] = set()
"""The folders :meth:`LocalImageStore.ensure_ready` found writable in this process (a local store
is made per call: the check is remembered by folder, not by store)."""


class LocalImageStore(ImageStore):
    """Images in a local folder, under ``root/prefix``.

    Every write goes to a temporary file in the target's folder first, then is linked (images:
    ``os.link``, which fails if the name exists, so a concurrent writer never overwrites) or
    renamed (JSON records) into place: readers never see a partial file. An image's metadata is
    a JSON file beside it, ``{name}.meta.json``, written before the image appears.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, prefix: str = "") -> None:
        """A store under ``root`` (default: :func:`default_local_root`); created on first write."""
        super().__init__(prefix)
        self.root = Path(root if root is not None else default_local_root()).expanduser().resolve()

    def describe(self) -> str:
        """The folder this store writes to."""
        return f"local folder {self.root / self.prefix if self.prefix else self.root}"

    def _folder(self) -> Path:
        return self.root / self.prefix if self.prefix else self.root

    def _probe(self) -> None:
        """Create the folder and a temporary file in it (removed at once): it can be written."""
        folder = self._folder()
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".gpt-image-probe.", suffix=".tmp"):
            pass

    def _ready_token(self) -> object:
        return self._folder()

    def _is_ready(self) -> bool:
        return self._folder() in _WRITABLE

    def _mark_ready(self) -> None:
        _WRITABLE.add(self._folder())

    def path_for(self, key: str) -> Path:
        """The local path of ``key``."""
        return self.root / check_key(key)

    def _create(self, key: str, data: bytes | Path, content_type: str, metadata: dict[str, str]) -> bool:
        path = self.root / key
        if path.exists():
            return False
        self._write(_metadata_key(key), json.dumps(metadata, sort_keys=True).encode(), "application/json")
        return write_atomically(path, data, overwrite=False, sha256=metadata["sha256"])

    def _write(self, key: str, data: bytes, content_type: str) -> None:
        write_atomically(self.root / key, data, overwrite=True)

    def _read(self, key: str) -> bytes | None:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            return None

    def _head(self, key: str) -> dict[str, str] | None:
        if not (self.root / key).is_file():
            return None
        try:
            metadata: dict[str, str] = json.loads((self.root / _metadata_key(key)).read_bytes())
        except FileNotFoundError:
            return {}
        return metadata

    def _list(self, prefix: str, at_most: int) -> dict[str, float] | None:
        names: dict[str, float] = {}
        try:
            entries = os.scandir(self.root / prefix)
        except (FileNotFoundError, NotADirectoryError):
            return names
        with entries:
            for entry in entries:
                # temporary files of writes in progress start with "."; metadata files are not objects
                if entry.name.startswith(".") or entry.name.endswith(_METADATA_SUFFIX) or not entry.is_file():
                    continue
                names[entry.name] = entry.stat().st_mtime
                if len(names) > at_most:
                    return None
        return names

    def _uri(self, key: str) -> str:
        return str(self.root / key)

    def _link(self, key: str, ttl: int | None) -> str:
        return (self.root / key).as_uri()

    def _key_from(self, uri_or_key: str) -> str:
        if uri_or_key.startswith("file://"):
            path = path_from_file_uri(uri_or_key)
        elif os.path.isabs(uri_or_key):
            path = Path(uri_or_key)
        else:
            return uri_or_key
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            raise ValueError(f"{path} is not inside this store ({self.root})") from None
