"""Thumbnails: a small JPEG of each stored image, made once, kept beside it in the store.

Layout under a store's prefix: ``thumbs/{sha256}.jpeg``, keyed by the sha256 of the *image* it
shows (not its own), so it is found from an image's ref alone and a rerun finds it made. At most
:data:`THUMB_EDGE` pixels on the longer side, a few KB (JPEG quality :data:`THUMB_QUALITY`): small
enough to embed in a markdown artifact as a ``data:`` URI (a local store's ``file://`` links do
not load in the Prefect UI) and to load a hundred of on one page.

Where they are made, and why (see docs/contact-sheets.md): a new image's thumbnail is made from
the bytes in hand, in the store's writer pool while the image and its record are written
(:func:`thumbnail_write`, from :func:`~.delivery.store_result`; a batch row's in the background,
:func:`thumbnail_later`, so its next row need not wait), so the event loop never decodes and the
store is read no more; an image with none yet (stored before, an edit's input) gets one
on demand when a contact sheet first shows it (:func:`ensure_thumbnails`). Decoding dominates the
cost (a 1024x1024 PNG: about 4 ms when flat, 15 ms with a photo's grain; the reduction and the
JPEG encode under 1 ms): Pillow's ``reduce`` by a whole factor, not a resampling filter.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from pathlib import Path
from typing import Any

from PIL import Image

from prefect_gpt_image.storage import ImageStore

from .artifacts import claim_artifact_slot

__all__ = [
    "THUMBNAILS_PER_RUN",
    "THUMBS_FOLDER",
    "THUMB_CONTENT_TYPE",
    "THUMB_EDGE",
    "ensure_thumbnails",
    "make_thumbnail",
    "thumbnail_due",
    "thumbnail_key",
    "thumbnail_later",
    "thumbnail_write",
    "thumbnails_per_run",
    "wait_for_thumbnails",
]

THUMBS_FOLDER = "thumbs"
"""The folder of the thumbnails under a store's prefix."""
THUMB_EDGE = 256
"""Longest side of a thumbnail, in pixels (at most; at least half of it for a larger image)."""
THUMBNAILS_PER_RUN = 1000
"""Rows of a run whose thumbnails a contact sheet shows (its first 10 pages), and new images of a
run that get one as they are stored: a thumbnail costs 4-15 ms of CPU (the PNG's decode), which
at 64 rows a second on 2 cores is more than a 10,000-row batch can spare. Later rows are shown
by a link to their full image (and by it in the gallery), or by a thumbnail made before."""
THUMB_QUALITY = 60
THUMB_CONTENT_TYPE = "image/jpeg"
_BACKGROUND = (255, 255, 255)
_MAKERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="gpt-image-thumbs")
"""Makes the thumbnails a sheet asks for and those of batch rows (Pillow releases the GIL while
it decodes and encodes)."""
_MAX_PENDING = 32
"""Background thumbnails waiting at most."""
_MAX_PENDING_BYTES = 32 * 1024 * 1024
"""Bytes of images held for background thumbnails at most (a 4K PNG is about 12 MB)."""
_PENDING: dict[Future[None], int] = {}
"""Background thumbnails not done yet, with the bytes each holds."""
_PENDING_LOCK = threading.Lock()


def thumbnail_key(store: ImageStore, sha256: str) -> str:
    """The store key of the thumbnail of the image ``sha256``: ``{prefix}/thumbs/{sha256}.jpeg``."""
    return store.key(THUMBS_FOLDER, f"{sha256.lower()}.jpeg")


def make_thumbnail(data: bytes | Path) -> bytes:
    """A JPEG of the image ``data`` (bytes or a file) at most :data:`THUMB_EDGE` px on its longer
    side, transparency over white. Reduced by a whole factor (a box filter: a thumbnail needs no
    better, and it costs a fraction of a resampling filter). Raises what Pillow raises for data
    that is no image."""
    with Image.open(data if isinstance(data, Path) else io.BytesIO(data)) as opened:
        factor = max(opened.size) // THUMB_EDGE
        image = opened.reduce(factor) if factor > 1 else opened.copy()
    if max(image.size) > THUMB_EDGE:  # e.g. 500 px: a factor of 1 leaves it too large
        image.thumbnail((THUMB_EDGE, THUMB_EDGE), Image.Resampling.BILINEAR)
    if image.mode in ("RGBA", "LA", "P", "PA"):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, _BACKGROUND)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        image = flat
    elif image.mode != "RGB":
        image = image.convert("RGB")
    out = io.BytesIO()
    image.save(out, "JPEG", quality=THUMB_QUALITY, optimize=False)
    return out.getvalue()


def thumbnails_per_run() -> int:
    """How many of a run's first images get a thumbnail (:data:`THUMBNAILS_PER_RUN`, read now)."""
    return THUMBNAILS_PER_RUN


def thumbnail_due(run_key: str | None) -> bool:
    """Whether a new image of the run ``run_key`` (a flow or task run id; None outside a run)
    gets its thumbnail as it is stored: the run's first :data:`THUMBNAILS_PER_RUN` do."""
    return run_key is None or bool(claim_artifact_slot(f"thumbnails:{run_key}", THUMBNAILS_PER_RUN))


def thumbnail_write(store: ImageStore, sha256: str, data: bytes | Path, logger: Any) -> Callable[[], None]:
    """A store write (for ``run_concurrently``) making and writing the thumbnail of the image
    ``sha256`` from its bytes ``data``; best effort: a failure is a warning (the image is what
    was paid for; a sheet makes a missing thumbnail on demand)."""

    def write() -> None:
        try:
            store.put_bytes(thumbnail_key(store, sha256), make_thumbnail(data), THUMB_CONTENT_TYPE)
        except Exception as exc:
            logger.warning("No thumbnail for image %s: %s", sha256[:16], exc)

    return write


def thumbnail_later(store: ImageStore, sha256: str, data: bytes | Path, logger: Any) -> bool:
    """Make and write the thumbnail of the image ``sha256`` in the background (the makers' pool)
    unless :data:`_MAX_PENDING` are already waiting or they would hold more than
    :data:`_MAX_PENDING_BYTES` of images; whether it was handed on (else the caller makes it
    itself). A batch row's store step then does not wait for the decode (4-15 ms of CPU a
    thumbnail, more on a busy machine): its worker takes the next row. ``data`` a file is read
    now (a download file goes once its image is stored). Every sheet waits for the pending ones
    first (:func:`ensure_thumbnails`), so none is made twice."""
    size = data.stat().st_size if isinstance(data, Path) else len(data)
    with _PENDING_LOCK:
        held = sum(_PENDING.values())
        if len(_PENDING) >= _MAX_PENDING or held + size > _MAX_PENDING_BYTES:
            return False
        body = data.read_bytes() if isinstance(data, Path) else data
        future = _MAKERS.submit(thumbnail_write(store, sha256, body, logger))
        _PENDING[future] = size
    future.add_done_callback(_done)  # at once if it is done already: after the add
    return True


def _done(future: Future[None]) -> None:
    with _PENDING_LOCK:
        _PENDING.pop(future, None)


def wait_for_thumbnails() -> None:
    """Until every thumbnail handed to :func:`thumbnail_later` so far is written (or failed)."""
    with _PENDING_LOCK:
        pending = list(_PENDING)
    futures_wait(pending)


def ensure_thumbnails(
    store: ImageStore,
    wanted: Iterable[tuple[str, Callable[[], bytes | Path]]],
    logger: Any,
    known: Iterable[str] = (),
) -> set[str]:
    """The sha256s among ``wanted`` (sha256, reader of the image's bytes) and ``known`` whose
    thumbnail is in the store once this returns: the thumbnails folder is listed once (a request
    per 1,000 names on S3), and only the missing ones of ``wanted`` are made (each image read
    with its reader), several at once; ``known`` are only looked for. A rerun therefore writes
    none. An image that cannot be read or decoded is left out, with a warning. Thumbnails still
    being made in the background (:func:`thumbnail_later`) are waited for first."""
    wait_for_thumbnails()
    todo = dict(wanted)
    looked = set(todo) | set(known)
    if not looked:
        return set()
    listed = store.list_names(THUMBS_FOLDER, at_most=max(1000, 4 * len(looked)))
    if listed is None:  # a huge folder: ask for each
        present = {sha for sha in looked if store.exists(thumbnail_key(store, sha))}
    else:
        present = {sha for sha in looked if f"{sha}.jpeg" in listed}

    def make(sha256: str) -> str | None:
        try:
            thumb = make_thumbnail(todo[sha256]())
            store.put_bytes(thumbnail_key(store, sha256), thumb, THUMB_CONTENT_TYPE)
        except Exception as exc:
            logger.warning("No thumbnail for image %s: %s", sha256[:16], exc)
            return None
        return sha256

    made = _MAKERS.map(make, [sha for sha in todo if sha not in present])
    return present | {sha for sha in made if sha is not None}
