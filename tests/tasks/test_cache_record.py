"""The cache record counts only when everything it names is stored (writes go at once)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from prefect_gpt_image.storage import LocalImageStore
from prefect_gpt_image.tasks import ImageRef
from prefect_gpt_image.tasks.cache import read_record, write_record
from tests.support.images import png_bytes


def test_a_record_is_a_hit_only_with_its_images_and_manifests(tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path)
    data = png_bytes((32, 16))
    sha = hashlib.sha256(data).hexdigest()
    ref = ImageRef(
        uri="", sha256=sha, width=32, height=16, format="png", size_bytes=len(data), prompt="a kite"
    )
    write_record(store, "k1", [ref], {"prompt": "a kite"})
    assert read_record(store, "k1") is None  # the record landed first: nothing stored yet
    store.put_image(sha, "png", data)
    assert read_record(store, "k1") is None  # the manifest's write failed or is still under way
    store.put_manifest(sha, {"prompt": "a kite"})
    hit = read_record(store, "k1")
    assert hit is not None and hit[0].sha256 == sha
    assert hit[0].uri == store.uri_for(store.image_key(sha, "png"))
    Path(hit[0].uri.removeprefix("file://")).unlink()
    assert read_record(store, "k1") is None  # an image gone from the store: a miss, not a broken hit
