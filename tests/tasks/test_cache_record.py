"""The cache record counts only when the images it names are stored (writes go at once), and
it carries their manifests, found from an image through its metadata."""

from __future__ import annotations

import hashlib
from pathlib import Path

from prefect_gpt_image.calls.cache import CACHE_KEY_METADATA, read_record, write_record
from prefect_gpt_image.storage import LocalImageStore
from prefect_gpt_image.tasks import ImageRef, read_manifest
from tests.support.images import png_bytes


def test_a_record_is_a_hit_only_with_its_images(tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path)
    data = png_bytes((32, 16))
    sha = hashlib.sha256(data).hexdigest()
    ref = ImageRef(
        uri="", sha256=sha, width=32, height=16, format="png", size_bytes=len(data), prompt="a kite"
    )
    manifest = {"sha256": sha, "prompt": "a kite", "cache_key": "k1"}
    write_record(store, "k1", [ref], {"prompt": "a kite"}, [manifest])
    assert read_record(store, "k1") is None  # the record landed first: the image is not stored yet
    assert read_manifest(store, sha, "png") is None
    store.put_image(sha, "png", data, {CACHE_KEY_METADATA: "k1"})
    hit = read_record(store, "k1")
    assert hit is not None and hit[0].sha256 == sha
    assert hit[0].uri == store.uri_for(store.image_key(sha, "png"))
    assert read_manifest(store, sha, "png") == manifest
    Path(hit[0].uri.removeprefix("file://")).unlink()
    assert read_record(store, "k1") is None  # an image gone from the store: a miss, not a broken hit
    assert read_manifest(store, sha, "png") is None


def test_a_manifest_needs_the_record_the_image_names(tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path)
    data = png_bytes((8, 8))
    sha = hashlib.sha256(data).hexdigest()
    store.put_image(sha, "png", data)  # stored without naming a record
    assert read_manifest(store, sha, "png") is None
    other = png_bytes((9, 9))
    other_sha = hashlib.sha256(other).hexdigest()
    store.put_image(other_sha, "png", other, {CACHE_KEY_METADATA: "k2"})
    write_record(store, "k2", [], {}, [{"sha256": sha}])  # the record describes another image
    assert read_manifest(store, other_sha, "png") is None
