"""Every contract rule (§2-§3), on both sides of its bound, refused before any HTTP request."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from prefect_gpt_image.api import EditRequest, GenerateRequest, ImagesClient, RequestValidationError
from tests.support.images import png_bytes
from tests.support.sandbox import sandbox_requests

OK_GENERATE: list[dict[str, Any]] = [
    {"n": 1},
    {"n": 10},
    {"size": "auto"},
    {"size": "1024x1024"},
    {"size": "1008x1024"},  # multiples of 16
    {"size": "3840x2160"},  # longest side and max pixels exactly
    {"size": "1024x640"},  # exactly the minimum pixel count (655,360)
    {"size": "2304x768"},  # ratio exactly 3
    {"size": "768x2304"},
    {"quality": "auto"},
    {"quality": "low"},
    {"quality": "medium"},
    {"quality": "high"},
    {"quality": "hd"},
    {"background": "auto"},
    {"background": "opaque"},
    {"output_format": "png"},
    {"output_format": "jpeg", "output_compression": 0},
    {"output_format": "webp", "output_compression": 100},
    {"moderation": "auto"},
    {"moderation": "low"},
    {"stream": True},
    {"stream": True, "partial_images": 0},
    {"stream": True, "partial_images": 3},
    {"user": "team-42"},
    {"prompt": "x" * 32_000},
]

BAD_GENERATE: list[tuple[dict[str, Any], str, str]] = [
    ({"n": 0}, "n", "greater than or equal to 1"),
    ({"n": 11}, "n", "less than or equal to 10"),
    ({"n": "two"}, "n", "valid integer"),
    ({"n": True}, "n", "not a boolean"),
    ({"size": "1000x1024"}, "size", "multiples of 16"),
    ({"size": "3856x1024"}, "size", "at most 3840"),
    ({"size": "3840x2176"}, "size", "between 655360 and 8294400"),
    ({"size": "1008x640"}, "size", "between 655360 and 8294400"),
    ({"size": "2320x768"}, "size", "at most 3"),
    ({"size": "768x2320"}, "size", "at most 3"),
    ({"size": "big"}, "size", "WIDTHxHEIGHT"),
    ({"size": "1024X1024"}, "size", "WIDTHxHEIGHT"),
    ({"size": "-1024x1024"}, "size", "WIDTHxHEIGHT"),
    ({"size": 1024}, "size", "valid string"),
    ({"quality": "standard"}, "quality", "rejected"),
    ({"quality": "ultra"}, "quality", "'auto', 'low', 'medium' or 'high'"),
    ({"background": "transparent"}, "background", "not supported"),
    ({"background": "white"}, "background", "'auto' or 'opaque'"),
    ({"output_format": "gif"}, "output_format", "'png', 'jpeg' or 'webp'"),
    ({"output_format": "jpeg", "output_compression": -1}, "output_compression", "greater than or equal"),
    ({"output_format": "jpeg", "output_compression": 101}, "output_compression", "less than or equal"),
    ({"output_format": "png", "output_compression": 50}, "output_compression", "jpeg or webp"),
    ({"output_compression": 50}, "output_compression", "jpeg or webp"),
    ({"moderation": "high"}, "moderation", "'auto' or 'low'"),
    ({"stream": True, "partial_images": 4}, "partial_images", "less than or equal to 3"),
    ({"stream": True, "partial_images": -1}, "partial_images", "greater than or equal to 0"),
    ({"partial_images": 1}, "partial_images", "only allowed with stream=true"),
    ({"stream": True, "n": 2}, "n", "use n=1"),
    ({"prompt": ""}, "prompt", "must not be empty"),
    ({"prompt": "   "}, "prompt", "must not be empty"),
    ({"prompt": "x" * 32_001}, "prompt", "at most 32000"),
    ({"prompt": None}, "prompt", "valid string"),
    ({"model": ""}, "model", "at least 1 character"),
    ({"response_format": "url"}, "response_format", "not a gpt-image-2 parameter"),
    ({"response_format": "b64_json"}, "response_format", "not a gpt-image-2 parameter"),
    ({"style": "vivid"}, "style", "not a gpt-image-2 parameter"),
    ({"input_fidelity": "high"}, "input_fidelity", "not a gpt-image-2 parameter"),
    ({"colour": "red"}, "colour", "unknown field"),
]


@pytest.mark.parametrize(
    "fields", OK_GENERATE, ids=lambda f: ",".join(f"{k}={str(v)[:12]}" for k, v in f.items())
)
def test_valid_generate_requests_pass(fields: dict[str, Any]) -> None:
    request = GenerateRequest.build(**{"prompt": "a cat", **fields})
    wire = request.wire_fields()
    assert wire["model"] == "gpt-image-2"
    if fields.get("quality") == "hd":
        assert wire["quality"] == "high"  # normalized, never sent as hd


@pytest.mark.parametrize(
    "fields,field,rule", BAD_GENERATE, ids=lambda v: str(v)[:30] if isinstance(v, dict) else ""
)
def test_invalid_generate_requests_name_field_value_and_rule(
    fields: dict[str, Any], field: str, rule: str
) -> None:
    with pytest.raises(RequestValidationError) as info:
        GenerateRequest.build(**{"prompt": "a cat", **fields})
    names = [f for f, _, _ in info.value.errors]
    assert field in names, info.value.errors
    message = str(info.value)
    assert field in message and rule in message, message


def test_moderation_is_not_an_edit_field() -> None:
    with pytest.raises(RequestValidationError, match="moderation"):
        EditRequest.build_with_files([png_bytes()], prompt="x", moderation="low")


def _mask(size: tuple[int, int], mode: str = "RGBA", fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (0, 0, 0, 0) if mode == "RGBA" else 0).save(buf, fmt)
    return buf.getvalue()


def test_edit_image_count_bounds() -> None:
    img = png_bytes((64, 64))
    assert len(EditRequest.build_with_files([img], prompt="x").images) == 1
    assert len(EditRequest.build_with_files([img] * 16, prompt="x").images) == 16
    with pytest.raises(RequestValidationError, match=r"images='0 images': must be 1..16"):
        EditRequest.build_with_files([], prompt="x")
    with pytest.raises(RequestValidationError, match=r"images='17 images': must be 1..16"):
        EditRequest.build_with_files([img] * 17, prompt="x")


@pytest.mark.parametrize(
    "mask,rule",
    [
        (lambda: _mask((32, 32)), "must have the first image's size 64x64, not 32x32"),
        (lambda: _mask((64, 64), mode="RGB"), "must have an alpha channel"),
        (lambda: _mask((64, 64), mode="RGB", fmt="JPEG"), "must be a PNG, not jpeg"),
        (lambda: b"not an image at all", "not a PNG, JPEG or WebP image"),
    ],
    ids=["wrong-size", "no-alpha", "jpeg", "not-image"],
)
def test_bad_masks_refused(mask: Any, rule: str) -> None:
    with pytest.raises(RequestValidationError) as info:
        EditRequest.build_with_files([png_bytes((64, 64))], mask=mask(), prompt="x")
    assert info.value.errors[0][0] == "mask"
    assert rule in str(info.value)


def test_mask_of_four_megabytes_refused() -> None:
    noise = Image.frombytes("RGBA", (1100, 1100), os.urandom(1100 * 1100 * 4))
    buf = io.BytesIO()
    noise.save(buf, "PNG", compress_level=0)
    assert len(buf.getvalue()) >= 4 * 1024 * 1024
    with pytest.raises(RequestValidationError, match="mask="):
        EditRequest.build_with_files([png_bytes((1100, 1100))], mask=buf.getvalue(), prompt="x")


def test_bad_input_files_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("hello")
    big = tmp_path / "huge.png"
    with big.open("wb") as fh:
        fh.truncate(50 * 1024 * 1024)  # sparse: 50 MB without writing it
    truncated = png_bytes((256, 256))[:200]
    with pytest.raises(RequestValidationError) as info:
        EditRequest.build_with_files(
            [tmp_path / "missing.png", text, big, truncated, "relative/nowhere.webp", 12345],  # type: ignore[list-item]
            prompt="x",
        )
    errors = {f: rule for f, _, rule in info.value.errors}
    assert "No such file" in errors["images[0]"]
    assert "not a PNG, JPEG or WebP" in errors["images[1]"]
    assert "must be under 52428800 bytes" in errors["images[2]"]
    assert "does not decode" in errors["images[3]"]
    assert "No such file" in errors["images[4]"]
    assert "expected a path, bytes or a binary file object" in errors["images[5]"]


def test_text_mode_file_object_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes())
    with path.open("r", encoding="latin-1") as fh, pytest.raises(RequestValidationError, match="binary mode"):
        EditRequest.build_with_files([fh], prompt="x")  # type: ignore[list-item]


def test_inputs_accept_paths_bytes_and_file_objects(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (80, 60), "red").save(path, "JPEG")
    with path.open("rb") as fh:
        request = EditRequest.build_with_files([path, str(path), path.read_bytes(), fh], prompt="x")
    names = [img.filename for img in request.images]
    assert names == ["photo.jpg", "photo.jpg", "image.jpeg", "photo.jpg"]
    assert {img.content_type for img in request.images} == {"image/jpeg"}
    assert {(img.width, img.height) for img in request.images} == {(80, 60)}
    assert len({img.sha256 for img in request.images}) == 1


def test_client_refuses_before_any_request(make_sandbox: Any) -> None:
    """The sandbox must never see an invalid request: the client stops it first."""
    sandbox = make_sandbox()
    with ImagesClient("sk-test", base_url=sandbox.base_url) as client:
        for fields, _, _ in BAD_GENERATE:
            with pytest.raises(RequestValidationError):
                client.generate(**{"prompt": "a cat", **fields})
        with pytest.raises(RequestValidationError):
            client.edit("x", [png_bytes((64, 64))] * 17)
        with pytest.raises(RequestValidationError):
            client.edit("x", [png_bytes((64, 64))], mask=_mask((32, 32)))
    assert sandbox_requests(sandbox) == []
