"""Region masks and batch manifests: pure parsing and building, before anything is paid for."""

from __future__ import annotations

import pytest

from prefect_gpt_image.api import EditRequest
from prefect_gpt_image.flows.manifest import BatchRow, parse_manifest, read_manifest_text
from prefect_gpt_image.flows.masks import MaskRegion, build_mask
from tests.support.images import decode, png_bytes


def test_fractional_region_mask_is_transparent_inside_only() -> None:
    data = build_mask(1024, 512, MaskRegion(left=0.25, top=0.5, right=0.75, bottom=1.0))
    img = decode(data)
    assert img.format == "PNG" and img.mode == "RGBA" and img.size == (1024, 512)
    alpha = img.getchannel("A")
    assert alpha.getpixel((256, 256)) == 0 and alpha.getpixel((767, 511)) == 0
    assert alpha.getpixel((255, 256)) == 255 and alpha.getpixel((768, 256)) == 255
    assert alpha.getpixel((512, 255)) == 255
    # the API accepts it as a mask for an image of that size
    request = EditRequest.build_with_files([png_bytes((1024, 512))], mask=data, prompt="x")
    assert request.mask is not None and request.mask.has_alpha


def test_pixel_region_and_bounds() -> None:
    img = decode(build_mask(64, 64, MaskRegion(left=8, top=8, right=16, bottom=16)))
    assert img.getchannel("A").getbbox() is not None
    assert img.getchannel("A").getpixel((8, 8)) == 0 and img.getchannel("A").getpixel((16, 16)) == 255
    with pytest.raises(ValueError, match="outside the 64x64 image"):
        build_mask(64, 64, MaskRegion(left=10, top=10, right=100, bottom=20))
    with pytest.raises(ValueError, match="right must exceed left"):
        MaskRegion(left=0.5, top=0, right=0.5, bottom=1)


def test_csv_manifest_rows_and_bad_rows() -> None:
    text = "prompt,size,n,variant,id\na cat,1536x1024,2,,r1\n,1024x1024,,,r2\na dog,,x,1,r3\n"
    rows = parse_manifest(text, name="batch.csv")
    assert rows[0] == BatchRow(prompt="a cat", size="1536x1024", n=2, id="r1")
    assert rows[0].overrides() == {"size": "1536x1024", "n": 2}  # type: ignore[union-attr]
    assert isinstance(rows[1], tuple) and rows[1][0] == 3 and "prompt" in rows[1][1]
    assert isinstance(rows[2], tuple) and rows[2][0] == 4 and "n" in rows[2][1]


def test_jsonl_manifest() -> None:
    text = '{"prompt": "a fox", "quality": "low"}\n\nnot json\n["list"]\n{"prompt": "x", "bogus": 1}\n'
    rows = parse_manifest(text)
    assert rows[0] == BatchRow(prompt="a fox", quality="low")
    assert rows[1][0] == 3 and "not valid JSON" in rows[1][1]  # type: ignore[index]
    assert rows[2][0] == 4 and "object" in rows[2][1]  # type: ignore[index]
    assert rows[3][0] == 5 and "bogus" in rows[3][1]  # type: ignore[index]


def test_manifest_locations(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "m.csv"
    path.write_text("prompt\na\n")
    assert read_manifest_text(str(path)) == "prompt\na\n"
    assert read_manifest_text(path.as_uri()) == "prompt\na\n"
    assert read_manifest_text("s3://b/m.csv", read_s3=lambda uri: b"prompt\nz\n") == "prompt\nz\n"
    with pytest.raises(ValueError, match="cannot read manifest"):
        read_manifest_text(str(tmp_path / "missing.csv"))
    with pytest.raises(ValueError, match="local path or s3://"):
        read_manifest_text("gs://bucket/m.csv")
    with pytest.raises(ValueError, match="'prompt' column"):
        parse_manifest("size\n1024x1024\n", name="m.csv")
